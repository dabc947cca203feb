"""Exceptions with a stable, machine-readable code.

Every failure a client or a job can see has its own class. `code` is the snake_case value
that API responses and job records carry; `status` is the HTTP status the API maps it to.
The class name doubles as the Step Functions error name that the state machine's Retry and
Catch rules match, so keep class names stable too.
"""

from __future__ import annotations

import re
from typing import Any


class EclipticError(Exception):
    """Base class: a message safe to show users, plus private detail for the logs."""

    code = "internal_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        detail: Any = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """Return the `{"error": {...}}` body every API error response uses."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


# Request errors (API).


class InvalidRequest(EclipticError):
    """The request body or a parameter is malformed or out of range."""

    code = "invalid_request"
    status = 400


class PayloadTooLarge(EclipticError):
    """The request body exceeds what API Gateway and Lambda can carry."""

    code = "payload_too_large"
    status = 413


class NotFound(EclipticError):
    """A job or asset id that does not exist."""

    code = "not_found"
    status = 404


class AssetNotUsable(EclipticError):
    """An asset id that exists but is of the wrong kind or not staged."""

    code = "asset_not_usable"
    status = 400


class PaymentRequired(EclipticError):
    """No payment, or a payment the guard rejected; `code` carries the x402 reason."""

    code = "payment_required"
    status = 402


class PaymentConflict(EclipticError):
    """The payment was already used for a different request body."""

    code = "payment_reused"
    status = 409


class PaymentPending(EclipticError):
    """The facilitator has not confirmed settlement yet; retrying the same request is safe."""

    code = "settlement_pending"
    status = 503


class ServiceUnavailable(EclipticError):
    """A dependency (facilitator, DynamoDB, Step Functions) failed; retrying is safe."""

    code = "service_unavailable"
    status = 503


# Job step errors (raised inside Lambda tasks; the class name is the Step Functions error).


class MediaFetchFailed(EclipticError):
    """A media URL could not be downloaded (HTTP error, timeout, forbidden address)."""

    code = "media_fetch_failed"
    status = 400


class MediaRejected(EclipticError):
    """A staged file is not decodable media of the expected kind, or breaks a size cap."""

    code = "media_rejected"
    status = 400


class PlanFailed(EclipticError):
    """No renderable plan could be made from the media."""

    code = "plan_failed"
    status = 500


class RenderFailed(EclipticError):
    """ffmpeg could not render the montage."""

    code = "render_failed"
    status = 500


class TransientStepError(EclipticError):
    """A dependency failed in a way that is worth retrying (throttling, 5xx, timeouts)."""

    code = "transient_error"
    status = 503


# Step Functions reports a Lambda error as its Python class name. The state machine catches
# these names and records `code_for_error_name(name)` with the message on the job.
USER_FACING_STEP_ERRORS: tuple[type[EclipticError], ...] = (
    MediaFetchFailed,
    MediaRejected,
    NotFound,
    AssetNotUsable,
    PlanFailed,
    RenderFailed,
)


def code_for_error_name(name: str) -> str:
    """Convert a Step Functions error name such as `MediaFetchFailed` to `media_fetch_failed`."""
    for error_class in USER_FACING_STEP_ERRORS:
        if error_class.__name__ == name:
            return error_class.code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.replace(".", "_")).lower()
