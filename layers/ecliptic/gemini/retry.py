"""Retries with exponential backoff inside one time budget for every Gemini request."""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.genai import errors

from ecliptic.gemini.errors import GeminiRejected, GeminiTimedOut, GeminiUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The status codes google-genai's own HttpRetryOptions retries by default.
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
# 429 responses carry a google.rpc.RetryInfo detail such as {"retryDelay": "37s"}.
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _transport_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Return (timeout, other transport) exception classes of the installed HTTP clients.

    google-genai 3.x sends requests with httpx2 or httpx, whichever is installed.
    """
    timeouts: list[type[Exception]] = []
    transports: list[type[Exception]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transports.append(module.TransportError)
    return tuple(timeouts), tuple(transports)


_TIMEOUT_ERRORS, _TRANSPORT_ERRORS = _transport_errors()


class Deadline:
    """A point in time, on the monotonic clock, by which the planner must be done."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def sub(self, share: float) -> Deadline:
        """Return a deadline `share` of the way from now to this one."""
        return Deadline(self.remaining() * share)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: `initial_delay * multiplier**n`, at most `max_delay`."""

    max_attempts: int
    initial_delay: float
    multiplier: float = 2.0
    max_delay: float = 30.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))


def call_with_retries(
    action: Callable[[float], T],
    *,
    what: str,
    policy: RetryPolicy,
    deadline: Deadline,
    job_id: str,
) -> T:
    """Call `action(timeout_seconds)` until it succeeds, retrying transient failures.

    `action` gets the seconds left in the budget to use as its request timeout. Status
    codes in RETRYABLE_STATUS_CODES, timeouts and network errors are retried after
    `policy.delay(n)`, or after the delay the server requests in a RetryInfo detail when that
    is longer. A retry whose wait would outlast the deadline is not made.

    Raises
    ------
    GeminiRejected
        Gemini returned an error status that is not retryable.
    GeminiUnavailable
        Every attempt failed with a retryable error.
    GeminiTimedOut
        The deadline passed before a try could start or finish.
    """
    last_error = "no attempt made"
    for attempt in range(1, policy.max_attempts + 1):
        remaining = deadline.remaining()
        if remaining <= 0:
            raise GeminiTimedOut(
                f"the Gemini {what} request ran out of the {deadline.seconds:.0f} s budget "
                f"after {attempt - 1} attempts ({last_error})"
            )
        wait = 0.0
        try:
            return action(remaining)
        except errors.APIError as error:
            status = f"{error.code} {error.status or ''}".strip()
            if error.code not in RETRYABLE_STATUS_CODES:
                raise GeminiRejected(
                    f"Gemini rejected the {what} request: {status}", detail=str(error.message)
                ) from error
            last_error = status
            wait = _server_delay(error.details)
        except _TIMEOUT_ERRORS as error:
            last_error = f"timed out ({type(error).__name__})"
        except _TRANSPORT_ERRORS as error:
            last_error = f"network error ({type(error).__name__})"

        if attempt == policy.max_attempts:
            break
        wait = max(wait, policy.delay(attempt))
        if wait >= deadline.remaining():
            raise GeminiTimedOut(
                f"the Gemini {what} request failed ({last_error}) and the {deadline.seconds:.0f} s "
                f"budget leaves no time to retry after attempt {attempt}"
            )
        logger.warning(
            "Gemini %s request failed (%s); retry %d of %d in %.2f s",
            what, last_error, attempt, policy.max_attempts - 1, wait,
            extra={"job_id": job_id},
        )  # fmt: skip
        time.sleep(wait)

    raise GeminiUnavailable(
        f"the Gemini {what} request failed after {policy.max_attempts} attempts: {last_error}"
    )


def _server_delay(body: Any) -> float:
    """Return the retry delay from a google.rpc.RetryInfo detail of an error body, or 0."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return 0.0
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO_TYPE:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return 0.0
