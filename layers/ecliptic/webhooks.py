"""Signed webhooks: POST the final job to the `callbackUrl` a client gave.

Each delivery is one JSON body with these headers:

- `Ecliptic-Event`: `job.succeeded` or `job.failed`, the same value as the body's `event`.
- `Ecliptic-Timestamp`: Unix time in seconds when this attempt was signed.
- `Ecliptic-Signature`: `t=<timestamp>,v1=<hex>`, where `<hex>` is the HMAC-SHA256 of
  `"<timestamp>." + body` (the exact body bytes) under the deployment's webhook secret.
  Receivers recompute it, compare in constant time and reject old timestamps, which
  stops replays. `verify_signature` is the reference check.

Every attempt is signed again with a fresh timestamp. A 2xx response ends the delivery.
Status 408, 429 and 5xx, connection errors and timeouts are retried with exponential
backoff. Any other status ends it, redirects included, which are never followed.

The URL passes the same checks as media URLs (`ecliptic.fetch.check_url`): https only,
no user info, and every address the host resolves to must be public. The host is resolved
once per delivery and every attempt connects to that checked address, so a DNS change
between the check and the connection cannot redirect the request to an internal address.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ecliptic.errors import InvalidRequest, MediaFetchFailed
from ecliptic.fetch import FetchLimits, check_url, display_url

if TYPE_CHECKING:
    from ecliptic.config import Settings
    from ecliptic.fetch import _Target

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Ecliptic-Signature"
TIMESTAMP_HEADER = "Ecliptic-Timestamp"
EVENT_HEADER = "Ecliptic-Event"
USER_AGENT = "ecliptic-webhook/1"
# Receivers should reject signatures older than this, as `verify_signature` does.
DEFAULT_TOLERANCE_SECONDS = 300
_SIGNATURE_VERSION = "v1"
_RETRY_STATUSES = frozenset({408, 429})
_SIGNATURE_PART = re.compile(r"^\s*(\w+)=([^,\s]*)\s*$")


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one delivery: `delivered`, `failed` (retries exhausted) or `rejected`.

    `rejected` means a status that is not retried, or a URL that fails the checks.
    """

    outcome: str
    attempts: int
    status: int | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


# ----- signatures -----------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of `"<timestamp>." + body` under `secret`."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the `Ecliptic-Signature` value: `t=<timestamp>,v1=<hex>`."""
    return f"t={timestamp},{_SIGNATURE_VERSION}={sign(secret, timestamp, body)}"


def verify_signature(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Return True when `header` signs `body` under `secret` within `tolerance_seconds`.

    Accepts any `v1` entry of the header, so a receiver keeps working while a sender
    adds a signature under a second key.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        match = _SIGNATURE_PART.match(part)
        if match is None:
            return False
        name, value = match.groups()
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == _SIGNATURE_VERSION:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def load_secret(settings: Settings) -> bytes | None:
    """Return the signing key: `webhook_secret`, else the secret `webhook_secret_arn` names.

    A Secrets Manager secret is used as it is stored (SecretString as UTF-8, or
    SecretBinary). Returns None, and logs why, when no key is configured or readable.
    """
    if settings.webhook_secret:
        return settings.webhook_secret.encode("utf-8")
    if not settings.webhook_secret_arn:
        logger.error("no webhook secret configured: set ECLIPTIC_WEBHOOK_SECRET_ARN")
        return None

    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        value = parameters.get_secret(settings.webhook_secret_arn, max_age=300)
    except GetParameterError as error:
        logger.error("webhook secret could not be read", extra={"error": str(error)})
        return None
    key = value if isinstance(value, bytes) else str(value or "").strip().encode("utf-8")
    if not key:
        logger.error("webhook secret is empty")
        return None
    return key


# ----- URL checks -----------------------------------------------------------------------


def webhook_limits(settings: Settings) -> FetchLimits:
    """Return the URL rules and timeouts for webhooks (no redirects, per-attempt timeout)."""
    return FetchLimits(
        max_bytes=1,  # unused: only the response status is read
        timeout_seconds=settings.webhook_timeout_seconds,
        read_timeout_seconds=settings.webhook_timeout_seconds,
        max_redirects=0,
        allow_loopback=settings.allow_loopback_urls,
        ca_bundle=settings.fetch_ca_bundle,
    )


def check_callback_url(url: str | None, settings: Settings) -> None:
    """Reject a `callbackUrl` that breaks the media URL rules, before the job is paid for.

    The host is resolved now, and again when the webhook is sent.

    Raises
    ------
    InvalidRequest
        No webhook secret is configured, or the URL is malformed, not https, carries user
        info, or its host is invalid, does not resolve or resolves to a private, loopback,
        link-local or reserved address.
    """
    if url is None:
        return
    if not (settings.webhook_secret or settings.webhook_secret_arn):
        raise InvalidRequest(
            "This deployment has no webhook signing secret, so it cannot send callbacks; "
            "remove `callbackUrl` and poll GET /jobs/{jobId} instead.",
            field="callbackUrl",
        )
    try:
        target = check_url(url, webhook_limits(settings))
    except MediaFetchFailed as error:
        raise InvalidRequest(
            f"Field `callbackUrl` failed the checks that media URLs pass: {error.message}",
            field="callbackUrl",
        ) from error
    if not _sendable_path(target.path):
        raise InvalidRequest(
            "Field `callbackUrl` must have a percent-encoded ASCII path and query, without "
            "spaces or control characters.",
            field="callbackUrl",
        )


def _sendable_path(path: str) -> bool:
    # http.client rejects other request targets (UnicodeEncodeError or InvalidURL).
    return path.isascii() and all(" " < character < "\x7f" for character in path)


# ----- delivery -------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to an address that `check_url` checked (local runtime only)."""

    def __init__(self, target: _Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = (str(target.address), target.port)

    def connect(self) -> None:
        self.sock = socket.create_connection(self._address, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with SNI and the certificate check against the host name."""

    def __init__(self, target: _Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = (str(target.address), target.port)

    def connect(self) -> None:
        sock = socket.create_connection(self._address, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Serialize a webhook payload to the exact bytes that are signed and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: bytes,
    *,
    limits: FetchLimits,
    attempts: int,
    backoff_seconds: float,
    deadline: float | None = None,
) -> DeliveryResult:
    """POST `payload` as signed JSON to `url`, retrying transient failures with backoff.

    Waits `backoff_seconds`, then twice as long before each later retry. No retry starts
    when it could not finish before `deadline` (a `time.monotonic()` value), so the
    caller can stay inside its own time limit. Delivery failures (a rejected URL, connection
    errors, timeouts, HTTP errors) are logged and returned rather than raised, so the job's
    outcome does not depend on its webhook.
    """
    body = encode_payload(payload)
    event = str(payload.get("event", ""))
    shown_url = display_url(url)
    try:
        target = check_url(url, limits)
    except MediaFetchFailed as error:
        logger.error("webhook URL rejected", extra={"url": shown_url, "reason": error.message})
        return DeliveryResult(outcome="rejected", attempts=0)
    if not _sendable_path(target.path):
        logger.error("webhook URL rejected", extra={"url": shown_url, "reason": "invalid path"})
        return DeliveryResult(outcome="rejected", attempts=0)

    status: int | None = None
    attempts_made = 0
    for attempt in range(1, attempts + 1):
        attempts_made = attempt
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: event,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(secret, timestamp, body),
        }
        ids = {"url": shown_url, "webhook_event": event, "attempt": attempt}
        try:
            status = _post(target, body, headers, limits)
        except (OSError, http.client.HTTPException) as error:
            status = None
            logger.warning("webhook attempt failed", extra={**ids, "error": repr(error)})
        else:
            if 200 <= status < 300:
                logger.info("webhook delivered", extra={**ids, "status": status})
                return DeliveryResult(outcome="delivered", attempts=attempt, status=status)
            if status not in _RETRY_STATUSES and status < 500:
                logger.error("webhook rejected", extra={**ids, "status": status})
                return DeliveryResult(outcome="rejected", attempts=attempt, status=status)
            logger.warning("webhook attempt to retry", extra={**ids, "status": status})

        if attempt == attempts:
            break
        delay = backoff_seconds * 2 ** (attempt - 1)
        if deadline is not None and time.monotonic() + delay + limits.timeout_seconds > deadline:
            logger.warning("no time left for another webhook attempt", extra=ids)
            break
        time.sleep(delay)

    summary = {"url": shown_url, "webhook_event": event, "attempts": attempts_made}
    logger.error("webhook not delivered", extra={**summary, "status": status})
    return DeliveryResult(outcome="failed", attempts=attempts_made, status=status)


def _post(target: _Target, body: bytes, headers: dict[str, str], limits: FetchLimits) -> int:
    """Send one POST and return the response status.

    Socket timeouts bound each wait. A timer bounds the whole attempt, because a receiver
    that sends one byte just before every timeout would never trip them.

    Raises
    ------
    TimeoutError
        The attempt took longer than `limits.timeout_seconds`.
    OSError, http.client.HTTPException
        The connection or the HTTP exchange failed.
    """
    timeout = limits.timeout_seconds
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl.create_default_context(cafile=limits.ca_bundle)
        connection = _PinnedHTTPSConnection(target, timeout, context)
    else:
        connection = _PinnedHTTPConnection(target, timeout)
    expired = threading.Event()
    timer = threading.Timer(timeout, _shutdown, args=(connection, expired))
    timer.daemon = True
    timer.start()
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        status = connection.getresponse().status
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        # The shutdown may end a half-read response that http.client still parses.
        raise TimeoutError(f"the webhook attempt took more than {timeout} s")
    return status


def _shutdown(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    # The plain socket method: `SSLSocket.shutdown` would also drop the TLS object under
    # the thread that is blocked reading from it.
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
