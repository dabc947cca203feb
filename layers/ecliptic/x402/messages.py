"""Pydantic models of the x402 messages (protocol versions 1 and 2, scheme `exact` on EVM).

Field names are the wire names (camelCase). Inbound models ignore unknown fields, so a
payment that carries a field from a later protocol revision still validates. The payment
guard forwards the decoded dict, not these models, to the facilitator, so no field is lost.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
BYTES32_PATTERN = r"^0x[0-9a-fA-F]{64}$"
HEX_BYTES_PATTERN = r"^0x(?:[0-9a-fA-F]{2})*$"
# A uint256 is at most 78 decimal digits.
UINT256_DECIMAL_PATTERN = r"^[0-9]{1,78}$"


class _WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ----- Requirements -----------------------------------------------------------------------


class PaymentRequirementsV1(_WireModel):
    """One entry of `accepts` in a version 1 challenge."""

    scheme: str
    network: str
    maxAmountRequired: str  # noqa: N815 (wire name)
    resource: str
    description: str = ""
    mimeType: str = ""  # noqa: N815
    outputSchema: dict[str, Any] | None = None  # noqa: N815
    payTo: str  # noqa: N815
    maxTimeoutSeconds: int  # noqa: N815
    asset: str
    extra: dict[str, Any] | None = None


class PaymentRequirementsV2(_WireModel):
    """One entry of `accepts` in a version 2 challenge, and `accepted` in a v2 payment."""

    scheme: str
    network: str = Field(description="CAIP-2 chain id, e.g. eip155:8453")
    amount: str
    asset: str
    payTo: str  # noqa: N815
    maxTimeoutSeconds: int  # noqa: N815
    extra: dict[str, Any] = Field(default_factory=dict)


class ResourceInfo(_WireModel):
    """The paid resource as described in a version 2 challenge or payment."""

    url: str
    description: str | None = None
    mimeType: str | None = None  # noqa: N815


class PaymentRequiredV1(_WireModel):
    """The 402 JSON body of version 1."""

    x402Version: Literal[1] = 1  # noqa: N815
    error: str
    accepts: list[PaymentRequirementsV1]


class PaymentRequiredV2(_WireModel):
    """The JSON object in the `PAYMENT-REQUIRED` header (version 2)."""

    x402Version: Literal[2] = 2  # noqa: N815
    error: str | None = None
    resource: ResourceInfo
    accepts: list[PaymentRequirementsV2]
    extensions: dict[str, Any] | None = None


# ----- Payments ---------------------------------------------------------------------------


class TransferAuthorization(_WireModel):
    """The EIP-3009 `TransferWithAuthorization` message, numbers as decimal strings.

    `value` accepts any string so that the guard can reject a malformed amount with
    `invalid_amount` instead of a generic shape error.
    """

    from_: str = Field(alias="from", pattern=ADDRESS_PATTERN)
    to: str = Field(pattern=ADDRESS_PATTERN)
    value: str
    validAfter: str = Field(pattern=UINT256_DECIMAL_PATTERN)  # noqa: N815
    validBefore: str = Field(pattern=UINT256_DECIMAL_PATTERN)  # noqa: N815
    nonce: str = Field(pattern=BYTES32_PATTERN)


class ExactEvmPayload(_WireModel):
    """The `payload` of an `exact` EVM payment.

    The signature length is not fixed here: smart-contract wallets send longer signatures
    (EIP-1271, ERC-6492), which the guard rejects with `invalid_signature`.
    """

    signature: str = Field(pattern=HEX_BYTES_PATTERN, max_length=2 + 2 * 2048)
    authorization: TransferAuthorization


class PaymentPayloadV1(_WireModel):
    """The JSON object in the `X-PAYMENT` header (version 1)."""

    x402Version: Literal[1]  # noqa: N815
    scheme: str
    network: str
    payload: dict[str, Any]


class PaymentPayloadV2(_WireModel):
    """The JSON object in the `PAYMENT-SIGNATURE` header (version 2)."""

    x402Version: Literal[2]  # noqa: N815
    resource: ResourceInfo | None = None
    accepted: PaymentRequirementsV2
    payload: dict[str, Any]
    extensions: dict[str, Any] | None = None


# ----- Results ----------------------------------------------------------------------------


class SettlementResponse(BaseModel):
    """The JSON object in `X-PAYMENT-RESPONSE` (v1) and `PAYMENT-RESPONSE` (v2)."""

    success: bool
    errorReason: str | None = None  # noqa: N815
    transaction: str
    network: str
    payer: str


class FacilitatorVerifyResponse(_WireModel):
    """The body of a facilitator's `POST /verify` response."""

    isValid: bool  # noqa: N815
    invalidReason: str | None = None  # noqa: N815
    invalidMessage: str | None = None  # noqa: N815
    payer: str | None = None


class FacilitatorSettleResponse(_WireModel):
    """The body of a facilitator's `POST /settle` response."""

    success: bool
    errorReason: str | None = None  # noqa: N815
    errorMessage: str | None = None  # noqa: N815
    payer: str | None = None
    transaction: str = ""
    network: str = ""
    amount: str | None = None
