"""Failures of the Gemini planner.

None of them fails a job: the plan step catches GeminiError, records `reason` as the note
of the beat-grid plan it makes instead, and logs `detail`.
"""

from __future__ import annotations


class GeminiError(Exception):
    """Base class: `reason` is short text for the job record, `detail` goes to the logs."""

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class GeminiKeyUnavailable(GeminiError):
    """The API key secret could not be read or contains no key."""


class GeminiUnavailable(GeminiError):
    """Gemini kept returning 408, 429 or 5xx, or the network failed, until no attempt was left."""


class GeminiRejected(GeminiError):
    """Gemini returned an error that retrying does not fix, such as 400 or 403."""


class GeminiTimedOut(GeminiError):
    """The planner's time budget ran out."""


class GeminiResponseInvalid(GeminiError):
    """The response was empty, not JSON, did not match the plan schema or had no usable shot."""
