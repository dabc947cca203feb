"""The settlement result header of a paid response, and the headers CORS must expose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ecliptic.x402.encoding import encode_json_header
from ecliptic.x402.requirements import PAYMENT_REQUIRED_HEADER, WWW_AUTHENTICATE_HEADER

if TYPE_CHECKING:
    from ecliptic.x402.facilitator import Settlement

X_PAYMENT_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"
PAYMENT_RESPONSE_HEADER = "PAYMENT-RESPONSE"

RETRY_AFTER_HEADER = "Retry-After"

# Browsers hide response headers from scripts unless `Access-Control-Expose-Headers`
# names them, and x402 clients in the browser need the challenge, the result and when to
# retry a payment that is still being settled.
CORS_EXPOSE_HEADERS: list[str] = [
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    WWW_AUTHENTICATE_HEADER,
    RETRY_AFTER_HEADER,
]


def payment_response_header(version: Literal[1, 2], settlement: Settlement) -> tuple[str, str]:
    """Return the header name and base64 value that report a settlement to the client.

    Version 1 uses `X-PAYMENT-RESPONSE`, version 2 `PAYMENT-RESPONSE`. The value is
    base64 JSON `{success, transaction, network, payer}`, plus `errorReason` when set.
    """
    body: dict[str, object] = {
        "success": settlement.success,
        "transaction": settlement.transaction,
        "network": settlement.network,
        "payer": settlement.payer,
    }
    if settlement.errorReason is not None:
        body["errorReason"] = settlement.errorReason
    name = X_PAYMENT_RESPONSE_HEADER if version == 1 else PAYMENT_RESPONSE_HEADER
    return name, encode_json_header(body)
