"""Local verification of an x402 `exact` EVM payment, before any network call.

`verify_payment` checks everything that needs no chain state: header, encoding, version,
scheme, network, asset, recipient, amount, validity window and the EIP-712 signature. What
it cannot check (balance, whether the nonce was already used on chain, smart-contract
wallet signatures) is left to the facilitator.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ecliptic.errors import PaymentRequired
from ecliptic.x402.eip712 import (
    SignatureError,
    TokenDomain,
    recover_signer,
    transfer_authorization_digest,
)
from ecliptic.x402.encoding import MAX_HEADER_CHARS, HeaderDecodeError, decode_json_header
from ecliptic.x402.messages import ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2
from ecliptic.x402.requirements import (
    SCHEME,
    network_by_name,
    payment_requirements_v1,
    payment_requirements_v2,
)

if TYPE_CHECKING:
    from ecliptic.config import Settings

V1_HEADER = "X-PAYMENT"
V2_HEADER = "PAYMENT-SIGNATURE"

# Allowance for clocks that disagree with ours, in seconds. It applies to validAfter (a
# client whose clock runs ahead) and to the upper bound of validBefore.
CLOCK_SKEW_SECONDS = 30

_DECIMAL = re.compile(r"[0-9]+")
_UINT256_LIMIT = 2**256

_Model = TypeVar("_Model", bound=BaseModel)


class VerifiedPayment(BaseModel):
    """A payment that passed every local check, ready for a facilitator's settle call.

    Addresses and the nonce are lower-case hex. `payload` is the decoded payment header
    and `requirements` the requirement of the same protocol version, both as sent to the
    facilitator.
    """

    version: Literal[1, 2]
    payer: str
    nonce: str
    value: str
    network: str
    valid_after: int
    valid_before: int
    payload: dict[str, Any]
    requirements: dict[str, Any]


def verify_payment(
    headers: Mapping[str, str],
    settings: Settings,
    *,
    now: int | None = None,
    resource_url: str | None = None,
    check_window: bool = True,
) -> VerifiedPayment:
    """Check the payment header of a request against the settings' payment terms.

    Parameters
    ----------
    headers
        Request headers, with names matched case-insensitively.
    settings
        The payment terms (price, recipient, network, token and its EIP-712 domain).
    now
        Current Unix time in seconds, by default the system clock.
    resource_url
        URL of the paid resource, copied into the version 1 requirement that the
        facilitator receives. NOTE: facilitators validate it as a URL, so the API handler
        should pass the request URL. Without it the field is an empty string.
    check_window
        Check validAfter and validBefore against `now` (see `check_payment_window`). The
        API turns this off to recognise a retry of a payment it already claimed, which
        still gets its job after the authorization expired.

    Raises
    ------
    PaymentRequired
        With `code` set to the x402 reason: `payment_required`, `invalid_payment_header`,
        `unsupported_version`, `unsupported_scheme`, `wrong_network`, `wrong_asset`,
        `wrong_recipient`, `amount_mismatch`, `invalid_amount`, `not_yet_valid`,
        `expired`, `validity_too_long`, `invalid_signature`, `high_s_signature` or
        `signer_mismatch`.
    ValueError
        When `settings.payment_network` is not a supported network.
    """
    now = int(time.time()) if now is None else now
    network = network_by_name(settings.payment_network)

    header_name, version, data = _decode_payment_header(headers)

    if version == 1:
        payment_v1 = _validate(PaymentPayloadV1, data, header_name)
        _check_scheme(payment_v1.scheme)
        if payment_v1.network != network.v1_name:
            raise _reject(
                "wrong_network",
                f"The payment is for network {payment_v1.network!r}. Pay on {network.v1_name!r}.",
            )
        requirements = payment_requirements_v1(settings, resource_url or "")
        scheme_payload = payment_v1.payload
        payment_network = network.v1_name
    else:
        payment_v2 = _validate(PaymentPayloadV2, data, header_name)
        requirements = payment_requirements_v2(settings)
        _check_accepted(payment_v2.accepted.model_dump(), requirements)
        scheme_payload = payment_v2.payload
        payment_network = network.caip2

    exact = _validate(ExactEvmPayload, scheme_payload, header_name, prefix="payload")
    authorization = exact.authorization

    if authorization.to.lower() != settings.pay_to.lower():
        raise _reject(
            "wrong_recipient",
            f"The authorization pays {authorization.to}, but it must pay {settings.pay_to}.",
        )
    value = _check_amount(authorization.value, settings.price_atomic, field="value")
    valid_after, valid_before = _parse_validity(
        authorization.validAfter, authorization.validBefore
    )
    if check_window:
        _check_window(valid_after, valid_before, now=now, window=settings.payment_window_seconds)

    domain = TokenDomain(
        name=settings.payment_asset_name,
        version=settings.payment_asset_version,
        chain_id=network.chain_id,
        verifying_contract=settings.payment_asset,
    )
    payer = _check_signature(exact, domain)

    return VerifiedPayment(
        version=version,
        payer=payer,
        nonce=authorization.nonce.lower(),
        value=str(value),
        network=payment_network,
        valid_after=valid_after,
        valid_before=valid_before,
        payload=data,
        requirements=requirements,
    )


def _decode_payment_header(headers: Mapping[str, str]) -> tuple[str, Literal[1, 2], dict]:
    # Return the header name, its x402 version and the decoded JSON object.
    present = {name.lower(): value for name, value in headers.items() if value is not None}
    v1_value = present.get(V1_HEADER.lower())
    v2_value = present.get(V2_HEADER.lower())
    if v1_value is None and v2_value is None:
        raise _reject(
            "payment_required",
            f"This request needs a payment: send a {V2_HEADER} (x402 version 2) or "
            f"{V1_HEADER} (x402 version 1) header.",
        )
    if v1_value is not None and v2_value is not None:
        raise _reject(
            "invalid_payment_header",
            f"Send either {V2_HEADER} or {V1_HEADER}, not both.",
        )
    header_name, header_version, text = (
        (V1_HEADER, 1, v1_value) if v1_value is not None else (V2_HEADER, 2, v2_value)
    )
    assert text is not None

    try:
        data = decode_json_header(text.strip(" \t"), max_chars=MAX_HEADER_CHARS)
    except HeaderDecodeError as exc:
        raise _reject(
            "invalid_payment_header",
            f"The {header_name} header is not valid: {exc}. It must be base64-encoded "
            f"JSON of at most {MAX_HEADER_CHARS} characters.",
        ) from exc

    version = data.get("x402Version")
    if type(version) is not int:  # rejects bool, an int subclass, too
        raise _reject(
            "invalid_payment_header",
            f"The {header_name} header must contain an integer x402Version.",
        )
    if version not in (1, 2):
        raise _reject(
            "unsupported_version",
            f"x402Version {version} is not supported. Use 2 ({V2_HEADER}) or 1 ({V1_HEADER}).",
        )
    if version != header_version:
        expected_header = V1_HEADER if version == 1 else V2_HEADER
        raise _reject(
            "unsupported_version",
            f"The {header_name} header carries x402Version {header_version} payments. Send "
            f"this x402Version {version} payment in the {expected_header} header.",
        )
    return header_name, header_version, data


def _validate(model: type[_Model], data: Any, header_name: str, *, prefix: str = "") -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Name the fields, never their values: the input contains the signature.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in (prefix, *error['loc']) if part != '')}: "
            f"{error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise _reject(
            "invalid_payment_header",
            f"The {header_name} payment is malformed ({problems}).",
        ) from exc


def _check_scheme(scheme: str) -> None:
    if scheme != SCHEME:
        raise _reject(
            "unsupported_scheme",
            f"Payment scheme {scheme!r} is not supported. Use {SCHEME!r}.",
        )


def _check_accepted(accepted: dict[str, Any], expected: dict[str, Any]) -> None:
    # A version 2 payment names the requirement it fulfils, which must be ours.
    _check_scheme(accepted["scheme"])
    if accepted["network"] != expected["network"]:
        raise _reject(
            "wrong_network",
            f"accepted.network is {accepted['network']!r}. Pay on {expected['network']!r}.",
        )
    if accepted["asset"].lower() != expected["asset"].lower():
        raise _reject(
            "wrong_asset",
            f"accepted.asset is {accepted['asset']}. Pay with {expected['asset']}.",
        )
    if accepted["payTo"].lower() != expected["payTo"].lower():
        raise _reject(
            "wrong_recipient",
            f"accepted.payTo is {accepted['payTo']}, but it must be {expected['payTo']}.",
        )
    _check_amount(accepted["amount"], int(expected["amount"]), field="accepted.amount")


def _check_amount(text: str, price: int, *, field: str) -> int:
    # A decimal string only: hex, signs, spaces, empty strings and values beyond uint256
    # are rejected rather than parsed by a lenient int().
    if not _DECIMAL.fullmatch(text) or int(text) >= _UINT256_LIMIT:
        raise _reject(
            "invalid_amount",
            f"{field} must be a decimal integer string in the token's smallest unit, "
            f"e.g. {str(price)!r}.",
        )
    value = int(text)
    if value != price:
        raise _reject(
            "amount_mismatch",
            f"{field} is {value}, but the price is {price} in the token's smallest unit.",
        )
    return value


def check_payment_window(
    payment: VerifiedPayment, settings: Settings, *, now: int | None = None
) -> None:
    """Check the validity window of a payment verified with `check_window=False`.

    Raises
    ------
    PaymentRequired
        With `code` `not_yet_valid`, `expired` or `validity_too_long`.
    """
    _check_window(
        payment.valid_after,
        payment.valid_before,
        now=int(time.time()) if now is None else now,
        window=settings.payment_window_seconds,
    )


def _parse_validity(valid_after_text: str, valid_before_text: str) -> tuple[int, int]:
    valid_after = int(valid_after_text)
    valid_before = int(valid_before_text)
    if valid_after >= _UINT256_LIMIT or valid_before >= _UINT256_LIMIT:
        raise _reject(
            "invalid_payment_header",
            "authorization.validAfter and validBefore must fit in uint256.",
        )
    return valid_after, valid_before


def _check_window(valid_after: int, valid_before: int, *, now: int, window: int) -> None:
    # validAfter = 0 (Python reference client) and now - 600 (TypeScript client) both pass.
    if valid_after > now + CLOCK_SKEW_SECONDS:
        raise _reject(
            "not_yet_valid",
            f"authorization.validAfter is {valid_after - now} s in the future. "
            "Set it to 0 or a past time.",
        )
    if valid_before <= now:
        raise _reject(
            "expired",
            "authorization.validBefore has passed. Sign a new payment.",
        )
    if valid_before > now + window + CLOCK_SKEW_SECONDS:
        raise _reject(
            "validity_too_long",
            f"authorization.validBefore is {valid_before - now} s away, but it must be at "
            f"most {window} s (maxTimeoutSeconds) from now.",
        )
    if valid_after >= valid_before:
        raise _reject(
            "not_yet_valid",
            "authorization.validAfter must be earlier than validBefore.",
        )


def _check_signature(exact: ExactEvmPayload, domain: TokenDomain) -> str:
    authorization = exact.authorization.model_dump(by_alias=True)
    try:
        digest = transfer_authorization_digest(domain, authorization)
    except ValueError as exc:
        raise _reject(
            "invalid_payment_header",
            "The authorization does not fit the TransferWithAuthorization types.",
        ) from exc

    try:
        signer = recover_signer(digest, bytes.fromhex(exact.signature[2:]))
    except SignatureError as exc:
        raise _reject(exc.reason, f"payload.signature is not usable: {exc}.") from exc

    if signer != exact.authorization.from_.lower():
        raise _reject(
            "signer_mismatch",
            "payload.signature was not made by authorization.from over the EIP-712 "
            f"domain {{name: {domain.name!r}, version: {domain.version!r}, chainId: "
            f"{domain.chain_id}, verifyingContract: {domain.verifying_contract}}}. "
            "Sign the TransferWithAuthorization with that domain and key.",
        )
    return signer


def _reject(code: str, message: str) -> PaymentRequired:
    return PaymentRequired(message, code=code)
