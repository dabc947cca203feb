"""Tests of the x402 payment guard: decoding, EIP-712, local verification and settlement.

Signatures are real secp256k1 signatures made with coincurve. The HTTP facilitator is
tested against a fake facilitator served from this process on 127.0.0.1.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ecliptic.config import Settings
from ecliptic.errors import PaymentPending, PaymentRequired, ServiceUnavailable
from ecliptic.x402.client import LocalPayer
from ecliptic.x402.eip712 import (
    SECP256K1_N,
    TokenDomain,
    domain_separator,
    keccak256,
    transfer_authorization_digest,
)
from ecliptic.x402.encoding import (
    MAX_HEADER_CHARS,
    HeaderDecodeError,
    decode_base64,
    decode_json_header,
    encode_json_header,
)
from ecliptic.x402.facilitator import (
    HttpFacilitator,
    OfflineFacilitator,
    Settlement,
    facilitator_from_settings,
)
from ecliptic.x402.messages import PaymentRequiredV1, PaymentRequiredV2
from ecliptic.x402.requirements import (
    challenge,
    payment_requirements_v1,
    payment_requirements_v2,
)
from ecliptic.x402.response import CORS_EXPOSE_HEADERS, payment_response_header
from ecliptic.x402.verify import CLOCK_SKEW_SECONDS, VerifiedPayment, verify_payment

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
RESOURCE_URL = "https://api.ecliptic.test/montages"
SETTINGS = Settings()
PRICE = str(SETTINGS.price_atomic)
WINDOW = SETTINGS.payment_window_seconds

PAYER = LocalPayer(hashlib.sha256(b"ecliptic test payer").digest())
OTHER_KEY = LocalPayer(hashlib.sha256(b"ecliptic other key").digest())
NONCE = "0x" + hashlib.sha256(b"ecliptic test nonce").hexdigest()

BASE_USDC_DOMAIN = TokenDomain(
    name=SETTINGS.payment_asset_name,
    version=SETTINGS.payment_asset_version,
    chain_id=8453,
    verifying_contract=SETTINGS.payment_asset,
)
SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OTHER_RECIPIENT = "0x1111111111111111111111111111111111111111"


# ----- Helpers ----------------------------------------------------------------------------


def build_payment(
    version: int,
    *,
    domain: dict[str, Any] | None = None,
    signed: dict[str, Any] | None = None,
    unsigned: dict[str, Any] | None = None,
    accepted: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    signer: LocalPayer = PAYER,
    signature: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Build a payment payload that is valid unless an override breaks it.

    `signed` overrides authorization fields before signing, `unsigned` after signing,
    `domain` overrides TokenDomain fields, `accepted` the v2 requirement, `top` top-level
    fields, and `signature` rewrites the signature hex.
    """
    authorization = {
        "from": PAYER.address,
        "to": SETTINGS.pay_to,
        "value": PRICE,
        "validAfter": "0",
        "validBefore": str(NOW + WINDOW),
        "nonce": NONCE,
        **(signed or {}),
    }
    token_domain = dataclasses.replace(BASE_USDC_DOMAIN, **(domain or {}))
    exact = signer.sign(token_domain, authorization)
    exact["authorization"].update(unsigned or {})
    if signature is not None:
        exact["signature"] = signature(exact["signature"])

    payment: dict[str, Any]
    if version == 1:
        payment = {"x402Version": 1, "scheme": "exact", "network": "base", "payload": exact}
    else:
        payment = {
            "x402Version": 2,
            "resource": {"url": RESOURCE_URL},
            "accepted": {**payment_requirements_v2(SETTINGS), **(accepted or {})},
            "payload": exact,
        }
    payment.update(top or {})
    return payment


def encode(payment: Any, *, url_safe: bool = False, padded: bool = True) -> str:
    text = json.dumps(payment)
    if not padded:
        # Pad the JSON with spaces until its base64 form ends in "=", so that there is
        # padding to strip.
        while len(text.encode()) % 3 == 0:
            text += " "
    value = base64.b64encode(text.encode()).decode()
    if url_safe:
        value = value.replace("+", "-").replace("/", "_")
    if not padded:
        value = value.rstrip("=")
    return value


def header_name(version: int) -> str:
    return "X-PAYMENT" if version == 1 else "PAYMENT-SIGNATURE"


def flip_s(signature: str) -> str:
    """Return the other valid signature (r, n - s, v ^ 1) of the same digest."""
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64], "big")
    v = 28 if raw[64] == 27 else 27
    return "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([v])).hex()


def set_v(v: int) -> Callable[[str], str]:
    return lambda signature: signature[:-2] + f"{v:02x}"


def recovery_id_as_v(signature: str) -> str:
    return signature[:-2] + f"{int(signature[-2:], 16) - 27:02x}"


def verify(headers: dict[str, str], *, now: int = NOW) -> VerifiedPayment:
    return verify_payment(headers, SETTINGS, now=now, resource_url=RESOURCE_URL)


# ----- Encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("aGk=", b"hi", id="standard-padded"),
        pytest.param("aGk", b"hi", id="unpadded"),
        pytest.param("-_8=", b"\xfb\xff", id="url-safe"),
        pytest.param("-_8", b"\xfb\xff", id="url-safe-unpadded"),
        pytest.param("+/8=", b"\xfb\xff", id="standard-alphabet"),
    ],
)
def test_decode_base64_accepts(text: str, expected: bytes) -> None:
    """Both alphabets decode, with or without padding."""
    assert decode_base64(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("aGk=\n", id="trailing-newline"),
        pytest.param("aG k=", id="inner-space"),
        pytest.param("+_8=", id="mixed-alphabets"),
        pytest.param("aGk==", id="too-much-padding"),
        pytest.param("aG=k", id="padding-inside"),
        pytest.param("aGk=aGk=", id="two-padded-blocks"),
        pytest.param("aGkxa", id="length-mod-4-is-1"),
        pytest.param("aGl=", id="non-canonical-bits"),
        pytest.param("aGk!", id="foreign-character"),
        pytest.param("A" * (MAX_HEADER_CHARS + 4), id="oversized"),
    ],
)
def test_decode_base64_rejects(text: str) -> None:
    """Anything but canonical base64 in one alphabet, under the size cap, is rejected."""
    with pytest.raises(HeaderDecodeError):
        decode_base64(text)


@pytest.mark.parametrize(
    "json_text",
    [
        pytest.param("[1, 2]", id="array"),
        pytest.param('{"a": 1, "a": 2}', id="duplicate-key"),
        pytest.param('{"a": NaN}', id="nan"),
        pytest.param("{", id="truncated"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_decode_json_header_rejects(json_text: str | bytes) -> None:
    """Only a JSON object with unique keys and no NaN/Infinity is accepted."""
    raw = json_text if isinstance(json_text, bytes) else json_text.encode()
    with pytest.raises(HeaderDecodeError):
        decode_json_header(base64.b64encode(raw).decode())


def test_encode_json_header_round_trip() -> None:
    """encode_json_header writes standard padded base64 that decodes to the same object."""
    value = {"success": True, "note": "é?>"}
    encoded = encode_json_header(value)
    assert (
        encoded
        == base64.b64encode(
            json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        ).decode()
    )
    assert decode_json_header(encoded) == value


# ----- EIP-712 ----------------------------------------------------------------------------


def test_domain_separator_base_usdc() -> None:
    """The Base mainnet USDC domain separator matches the value the contract reports."""
    assert domain_separator(BASE_USDC_DOMAIN).hex() == (
        "02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f"
    )


def test_domain_separator_ethereum_usdc() -> None:
    """Ethereum mainnet USDC (chain 1) gives its published domain separator."""
    domain = TokenDomain("USD Coin", "2", 1, "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")
    assert domain_separator(domain).hex() == (
        "06c37168a7db5138defc7866392bb87a741f9b3d104deb5094588ce041cae335"
    )


def test_transfer_type_hash() -> None:
    """The type string hashes to FiatToken's TRANSFER_WITH_AUTHORIZATION_TYPEHASH."""
    from ecliptic.x402.eip712 import TRANSFER_WITH_AUTHORIZATION_TYPE

    assert keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.encode()).hex() == (
        "7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267"
    )


def test_address_of_known_key() -> None:
    """The first Hardhat/Anvil development key derives its well-known address."""
    key = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    assert LocalPayer(key).address == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"


def test_digest_ignores_address_case() -> None:
    """Checksummed and lower-case addresses give the same digest."""
    authorization = build_payment(1)["payload"]["authorization"]
    lower = {**authorization, "to": authorization["to"].lower()}
    assert authorization["to"] != lower["to"]
    assert transfer_authorization_digest(BASE_USDC_DOMAIN, authorization) == (
        transfer_authorization_digest(BASE_USDC_DOMAIN, lower)
    )


# ----- Local verification: accepted payments ----------------------------------------------


ACCEPTED_CASES = [
    pytest.param(1, {}, {}, id="v1"),
    pytest.param(2, {}, {}, id="v2"),
    pytest.param(1, {}, {"url_safe": True}, id="v1-url-safe"),
    pytest.param(2, {}, {"url_safe": True}, id="v2-url-safe"),
    pytest.param(1, {}, {"padded": False}, id="v1-unpadded"),
    pytest.param(2, {}, {"url_safe": True, "padded": False}, id="v2-url-safe-unpadded"),
    pytest.param(2, {"signed": {"validAfter": str(NOW - 600)}}, {}, id="typescript-valid-after"),
    pytest.param(
        1, {"signed": {"validAfter": str(NOW + CLOCK_SKEW_SECONDS)}}, {}, id="valid-after-skew"
    ),
    pytest.param(
        1,
        {"signed": {"validBefore": str(NOW + WINDOW + CLOCK_SKEW_SECONDS)}},
        {},
        id="valid-before-skew",
    ),
    pytest.param(1, {"signed": {"validBefore": str(NOW + 1)}}, {}, id="valid-before-next-second"),
    pytest.param(1, {"signed": {"to": SETTINGS.pay_to.lower()}}, {}, id="pay-to-lower-case"),
    pytest.param(
        2,
        {"accepted": {"payTo": SETTINGS.pay_to.upper().replace("0X", "0x")}},
        {},
        id="accepted-pay-to-upper-case",
    ),
    pytest.param(1, {"signature": recovery_id_as_v}, {}, id="v-as-recovery-id"),
    pytest.param(2, {"top": {"extensions": {"bazaar": {}}}}, {}, id="unknown-extension"),
]


@pytest.mark.parametrize(("version", "build", "encoding"), ACCEPTED_CASES)
def test_verify_accepts(version: int, build: dict[str, Any], encoding: dict[str, Any]) -> None:
    """Valid payments pass, in every accepted encoding and validity window."""
    if encoding.get("url_safe"):
        # Runs of "?" and ">" encode to "/" and "+" in standard base64, so the URL-safe
        # form differs from the standard one. Unknown top-level fields are ignored.
        build = {**build, "top": {**build.get("top", {}), "memo": "??????>>>>>>"}}
    payment = build_payment(version, **build)
    value = encode(payment, **encoding)
    if encoding.get("url_safe"):
        assert "-" in value, "the case needs URL-safe characters"
        assert "_" in value, "the case needs URL-safe characters"
    if encoding.get("padded") is False:
        assert len(value) % 4 != 0, "the case needs stripped padding"

    verified = verify({header_name(version).lower(): value})

    assert verified.version == version
    assert verified.payer == PAYER.address
    assert verified.nonce == NONCE
    assert verified.value == PRICE
    assert verified.payload == payment


def test_verify_result_fields() -> None:
    """VerifiedPayment carries lower-case ids and the requirements for the facilitator."""
    upper_nonce = "0x" + NONCE[2:].upper()
    checksummed_from = "0x" + PAYER.address[2:].upper()
    payment = build_payment(2, signed={"nonce": upper_nonce, "from": checksummed_from})

    verified = verify({"Payment-Signature": encode(payment)})

    assert verified.payer == PAYER.address
    assert verified.nonce == NONCE
    assert verified.network == "eip155:8453"
    assert verified.valid_after == 0
    assert verified.valid_before == NOW + WINDOW
    assert verified.requirements == payment_requirements_v2(SETTINGS)
    v1 = verify({"X-Payment": encode(build_payment(1))})
    assert v1.network == "base"
    assert v1.requirements == payment_requirements_v1(SETTINGS, RESOURCE_URL)


def test_verify_base_sepolia() -> None:
    """A Base Sepolia configuration verifies against the Sepolia USDC domain."""
    settings = Settings(
        payment_network="base-sepolia", payment_asset=SEPOLIA_USDC, payment_asset_name="USDC"
    )
    for version in (1, 2):
        name, value = PAYER.payment_header(settings, version=version, now=NOW)
        verified = verify_payment({name: value}, settings, now=NOW)
        assert verified.network == ("base-sepolia" if version == 1 else "eip155:84532")


# ----- Local verification: rejected payments ----------------------------------------------


def _headers(version: int, **build: Any) -> dict[str, str]:
    return {header_name(version): encode(build_payment(version, **build))}


def _oversized() -> dict[str, str]:
    payment = build_payment(2, top={"extensions": {"padding": "x" * MAX_HEADER_CHARS}})
    return {"PAYMENT-SIGNATURE": encode(payment)}


def _truncated() -> dict[str, str]:
    value = encode(build_payment(1))
    return {"X-PAYMENT": value[: len(value) // 2]}


REJECTED_CASES = [
    # Header and encoding.
    pytest.param(lambda: {}, "payment_required", id="no-header"),
    pytest.param(lambda: {"Authorization": "Bearer x"}, "payment_required", id="other-header"),
    pytest.param(
        lambda: {**_headers(1), **_headers(2)}, "invalid_payment_header", id="both-headers"
    ),
    pytest.param(_truncated, "invalid_payment_header", id="truncated-header"),
    pytest.param(lambda: {"X-PAYMENT": "not base64!"}, "invalid_payment_header", id="non-base64"),
    pytest.param(lambda: {"X-PAYMENT": ""}, "invalid_payment_header", id="empty-header"),
    pytest.param(_oversized, "invalid_payment_header", id="oversized-header"),
    pytest.param(
        lambda: {"X-PAYMENT": encode([1])}, "invalid_payment_header", id="json-not-object"
    ),
    # Version.
    pytest.param(
        lambda: {"PAYMENT-SIGNATURE": encode(build_payment(1))},
        "unsupported_version",
        id="v1-payload-in-v2-header",
    ),
    pytest.param(
        lambda: {"X-PAYMENT": encode(build_payment(2))},
        "unsupported_version",
        id="v2-payload-in-v1-header",
    ),
    pytest.param(
        lambda: _headers(2, top={"x402Version": 3}), "unsupported_version", id="version-3"
    ),
    pytest.param(
        lambda: _headers(1, top={"x402Version": "1"}),
        "invalid_payment_header",
        id="version-as-string",
    ),
    pytest.param(
        lambda: _headers(1, top={"x402Version": True}),
        "invalid_payment_header",
        id="version-as-bool",
    ),
    # Shape.
    pytest.param(
        lambda: {"X-PAYMENT": encode({"x402Version": 1, "scheme": "exact", "network": "base"})},
        "invalid_payment_header",
        id="v1-without-payload",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"nonce": "0x1234"}),
        "invalid_payment_header",
        id="short-nonce",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"from": "0x1234"}),
        "invalid_payment_header",
        id="short-from",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"validBefore": "0x10"}),
        "invalid_payment_header",
        id="hex-valid-before",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"value": 20000}),
        "invalid_payment_header",
        id="amount-as-json-number",
    ),
    pytest.param(
        lambda: _headers(1, signature=lambda sig: sig[:-1]),
        "invalid_payment_header",
        id="odd-length-signature",
    ),
    # Scheme and network.
    pytest.param(lambda: _headers(1, top={"scheme": "upto"}), "unsupported_scheme", id="v1-scheme"),
    pytest.param(
        lambda: _headers(2, accepted={"scheme": "upto"}), "unsupported_scheme", id="v2-scheme"
    ),
    pytest.param(
        lambda: _headers(1, top={"network": "base-sepolia"}), "wrong_network", id="v1-network"
    ),
    pytest.param(
        lambda: _headers(1, top={"network": "eip155:8453"}),
        "wrong_network",
        id="v1-network-as-caip2",
    ),
    pytest.param(
        lambda: _headers(2, accepted={"network": "eip155:84532"}),
        "wrong_network",
        id="v2-network",
    ),
    # Asset and recipient.
    pytest.param(
        lambda: _headers(2, accepted={"asset": SEPOLIA_USDC}), "wrong_asset", id="v2-asset"
    ),
    pytest.param(
        lambda: _headers(1, signed={"to": OTHER_RECIPIENT}), "wrong_recipient", id="v1-pay-to"
    ),
    pytest.param(
        lambda: _headers(2, signed={"to": OTHER_RECIPIENT}), "wrong_recipient", id="v2-pay-to"
    ),
    pytest.param(
        lambda: _headers(2, accepted={"payTo": OTHER_RECIPIENT}),
        "wrong_recipient",
        id="v2-accepted-pay-to",
    ),
    # Amount.
    pytest.param(
        lambda: _headers(1, signed={"value": str(int(PRICE) + 1)}),
        "amount_mismatch",
        id="amount-plus-one",
    ),
    pytest.param(
        lambda: _headers(2, signed={"value": str(int(PRICE) - 1)}),
        "amount_mismatch",
        id="amount-minus-one",
    ),
    pytest.param(
        lambda: _headers(2, accepted={"amount": str(int(PRICE) - 1)}),
        "amount_mismatch",
        id="accepted-amount-minus-one",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"value": hex(int(PRICE))}),
        "invalid_amount",
        id="hex-amount",
    ),
    pytest.param(lambda: _headers(1, unsigned={"value": ""}), "invalid_amount", id="empty-amount"),
    pytest.param(
        lambda: _headers(1, unsigned={"value": "-" + PRICE}),
        "invalid_amount",
        id="negative-amount",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"value": " " + PRICE}),
        "invalid_amount",
        id="amount-with-space",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"value": str(2**256)}),
        "invalid_amount",
        id="amount-beyond-uint256",
    ),
    pytest.param(
        lambda: _headers(2, accepted={"amount": "0.02"}),
        "invalid_amount",
        id="accepted-amount-decimal-point",
    ),
    # Validity window.
    pytest.param(
        lambda: _headers(1, signed={"validBefore": str(NOW)}), "expired", id="expired-now"
    ),
    pytest.param(
        lambda: _headers(2, signed={"validBefore": str(NOW - 3600)}), "expired", id="expired-hour"
    ),
    pytest.param(
        lambda: _headers(1, signed={"validAfter": str(NOW + CLOCK_SKEW_SECONDS + 1)}),
        "not_yet_valid",
        id="not-yet-valid",
    ),
    pytest.param(
        lambda: _headers(1, signed={"validAfter": str(NOW + 20), "validBefore": str(NOW + 10)}),
        "not_yet_valid",
        id="valid-after-past-valid-before",
    ),
    pytest.param(
        lambda: _headers(1, signed={"validBefore": str(NOW + WINDOW + CLOCK_SKEW_SECONDS + 1)}),
        "validity_too_long",
        id="validity-too-long",
    ),
    pytest.param(
        lambda: _headers(2, signed={"validBefore": str(NOW + 86_400)}),
        "validity_too_long",
        id="validity-one-day",
    ),
    pytest.param(
        lambda: _headers(1, unsigned={"validBefore": str(2**256)}),
        "invalid_payment_header",
        id="valid-before-beyond-uint256",
    ),
    # Signature.
    pytest.param(
        lambda: _headers(1, domain={"name": "USDC"}), "signer_mismatch", id="domain-name-usdc"
    ),
    pytest.param(
        lambda: _headers(2, domain={"version": "1"}), "signer_mismatch", id="domain-version"
    ),
    pytest.param(
        lambda: _headers(1, domain={"chain_id": 84532}), "signer_mismatch", id="wrong-chain-id"
    ),
    pytest.param(
        lambda: _headers(1, domain={"verifying_contract": SEPOLIA_USDC}),
        "signer_mismatch",
        id="v1-wrong-asset-domain",
    ),
    pytest.param(lambda: _headers(2, signer=OTHER_KEY), "signer_mismatch", id="other-key"),
    pytest.param(
        lambda: _headers(1, signed={"nonce": "0x" + "00" * 32}, unsigned={"nonce": NONCE}),
        "signer_mismatch",
        id="nonce-changed-after-signing",
    ),
    pytest.param(lambda: _headers(1, signature=flip_s), "high_s_signature", id="high-s-v1"),
    pytest.param(lambda: _headers(2, signature=flip_s), "high_s_signature", id="high-s-v2"),
    pytest.param(lambda: _headers(1, signature=set_v(29)), "invalid_signature", id="v-29"),
    pytest.param(
        lambda: _headers(1, signature=lambda sig: sig[:-2]),
        "invalid_signature",
        id="64-byte-signature",
    ),
    pytest.param(
        lambda: _headers(1, signature=lambda sig: sig + "00" * 32),
        "invalid_signature",
        id="contract-wallet-length",
    ),
    pytest.param(
        lambda: _headers(1, signature=lambda sig: "0x" + "00" * 64 + sig[-2:]),
        "invalid_signature",
        id="zero-r-s",
    ),
    pytest.param(
        # No curve point has x = 5, so no public key recovers.
        lambda: _headers(1, signature=lambda sig: "0x" + f"{5:064x}" + f"{1:064x}" + "1b"),
        "invalid_signature",
        id="r-not-on-curve",
    ),
]


@pytest.mark.parametrize(("make_headers", "expected_code"), REJECTED_CASES)
def test_verify_rejects(make_headers: Callable[[], dict[str, str]], expected_code: str) -> None:
    """Each broken payment is rejected with its x402 reason code."""
    headers = make_headers()

    with pytest.raises(PaymentRequired) as info:
        verify(headers)

    error = info.value
    assert error.code == expected_code
    assert error.status == 402
    assert error.message
    for value in headers.values():
        decoded = _try_decode(value)
        signature = ((decoded or {}).get("payload") or {}).get("signature")
        if isinstance(signature, str) and len(signature) > 10:
            assert signature[2:].lower() not in error.message.lower()


def _try_decode(value: str) -> dict[str, Any] | None:
    try:
        return decode_json_header(value, max_chars=10 * MAX_HEADER_CHARS)
    except HeaderDecodeError:
        return None


def test_verify_header_at_size_cap() -> None:
    """A header of exactly MAX_HEADER_CHARS characters is accepted, one more is not."""
    base = build_payment(2, top={"extensions": {"padding": ""}})
    base_chars = len(encode(base))
    # Each 3 bytes of JSON make 4 characters of base64.
    padding = "x" * ((MAX_HEADER_CHARS - base_chars) // 4 * 3)
    at_cap = build_payment(2, top={"extensions": {"padding": padding}})
    assert len(encode(at_cap)) == MAX_HEADER_CHARS

    assert verify({"PAYMENT-SIGNATURE": encode(at_cap)}).payer == PAYER.address

    over_cap = build_payment(2, top={"extensions": {"padding": padding + "xxx"}})
    with pytest.raises(PaymentRequired) as info:
        verify({"PAYMENT-SIGNATURE": encode(over_cap)})
    assert info.value.code == "invalid_payment_header"


def test_verify_uses_system_clock() -> None:
    """Without `now`, a payment signed for the current time passes and an old one expires."""
    name, value = PAYER.payment_header(SETTINGS, version=2)
    assert verify_payment({name: value}, SETTINGS).payer == PAYER.address

    with pytest.raises(PaymentRequired) as info:
        verify_payment(_headers(1), SETTINGS)
    assert info.value.code == "expired"


# ----- Challenge, client and response header ----------------------------------------------


def test_challenge_body_and_headers() -> None:
    """The 402 carries the v1 body, the v2 PAYMENT-REQUIRED header and WWW-Authenticate."""
    body, headers = challenge(SETTINGS, RESOURCE_URL, "payment required")

    parsed_v1 = PaymentRequiredV1.model_validate(body)
    assert parsed_v1.error == "payment required"
    assert body["accepts"] == [payment_requirements_v1(SETTINGS, RESOURCE_URL)]
    assert body["accepts"][0]["network"] == "base"
    assert body["accepts"][0]["maxAmountRequired"] == "20000"
    assert body["accepts"][0]["extra"] == {"name": "USD Coin", "version": "2"}

    payment_required = decode_json_header(headers["PAYMENT-REQUIRED"])
    parsed_v2 = PaymentRequiredV2.model_validate(payment_required)
    assert parsed_v2.resource.url == RESOURCE_URL
    assert payment_required["accepts"] == [payment_requirements_v2(SETTINGS)]
    assert payment_required["accepts"][0]["network"] == "eip155:8453"
    assert payment_required["accepts"][0]["amount"] == "20000"

    assert headers["WWW-Authenticate"] == (
        f'x402 realm="{RESOURCE_URL}", scheme="exact", network="eip155:8453", '
        f'asset="{SETTINGS.payment_asset}", payTo="{SETTINGS.pay_to}", amount="20000"'
    )


def test_challenge_quotes_www_authenticate() -> None:
    """Quotes, backslashes and line breaks in the realm cannot break the header."""
    _, headers = challenge(SETTINGS, 'https://x.test/a"b\\c\r\nSet-Cookie: x', "error")
    value = headers["WWW-Authenticate"]
    assert "\r" not in value
    assert "\n" not in value
    assert value.startswith('x402 realm="https://x.test/a\\"b\\\\c%0D%0ASet-Cookie: x", ')


def test_unsupported_network_rejected() -> None:
    """A payment network outside the table is a configuration error."""
    with pytest.raises(ValueError, match="unsupported payment network"):
        payment_requirements_v2(Settings(payment_network="polygon"))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("source", ["body", "payment-required"])
def test_payer_pays_challenge(version: int, source: str) -> None:
    """LocalPayer pays either form of our challenge with a payment that verifies."""
    body, headers = challenge(SETTINGS, RESOURCE_URL, "payment required")
    terms = body if source == "body" else decode_json_header(headers["PAYMENT-REQUIRED"])

    name, value = PAYER.payment_header(terms, version=version, now=NOW, backdated=True)

    assert name == header_name(version)
    verified = verify({name: value})
    assert verified.valid_after == NOW - 600
    if version == 2:
        # The v1 body only has the URL. The v2 challenge's resource is copied whole.
        expected_resource = {"url": RESOURCE_URL}
        if source == "payment-required":
            expected_resource = decode_json_header(headers["PAYMENT-REQUIRED"])["resource"]
        assert verified.payload["resource"] == expected_resource


def test_payer_uses_fresh_nonces() -> None:
    """Two payments from one payer never share a nonce."""
    first = PAYER.payment_payload(SETTINGS, version=1, now=NOW)
    second = PAYER.payment_payload(SETTINGS, version=1, now=NOW)
    nonces = {p["payload"]["authorization"]["nonce"] for p in (first, second)}
    assert len(nonces) == 2


def test_random_payer_key() -> None:
    """Without a key, LocalPayer makes a throwaway key that still produces valid payments."""
    payer = LocalPayer()
    assert payer.address != LocalPayer().address
    name, value = payer.payment_header(SETTINGS, version=2, now=NOW)
    assert verify({name: value}).payer == payer.address


@pytest.mark.parametrize(
    ("version", "expected_name"), [(1, "X-PAYMENT-RESPONSE"), (2, "PAYMENT-RESPONSE")]
)
def test_payment_response_header(version: int, expected_name: str) -> None:
    """The result header has the version's name and carries the settlement fields."""
    settlement = Settlement(
        success=True,
        transaction="0x" + "ab" * 32,
        network="base",
        payer=PAYER.address,
        amount=PRICE,
    )
    name, value = payment_response_header(version, settlement)  # type: ignore[arg-type]
    assert name == expected_name
    assert decode_json_header(value) == {
        "success": True,
        "transaction": "0x" + "ab" * 32,
        "network": "base",
        "payer": PAYER.address,
    }
    assert name in CORS_EXPOSE_HEADERS
    assert "PAYMENT-REQUIRED" in CORS_EXPOSE_HEADERS
    assert "WWW-Authenticate" in CORS_EXPOSE_HEADERS


def test_requirements_import_is_light() -> None:
    """The 402 path imports no Ethereum, secp256k1 or HTTP client library."""
    code = (
        "import sys, ecliptic.x402.requirements, ecliptic.x402.encoding\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('eth_abi', 'eth_hash', 'eth_utils', 'coincurve', 'requests', 'Crypto')]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


# ----- Facilitators -----------------------------------------------------------------------


@pytest.fixture
def verified_payment() -> VerifiedPayment:
    return verify(_headers(2))


def test_offline_facilitator_settles(
    verified_payment: VerifiedPayment, caplog: pytest.LogCaptureFixture
) -> None:
    """The offline facilitator returns a marked, deterministic settlement and warns."""
    with caplog.at_level(logging.WARNING, logger="ecliptic.x402.facilitator"):
        settlement = OfflineFacilitator().settle(verified_payment)

    expected_hash = keccak256(bytes.fromhex(PAYER.address[2:]) + bytes.fromhex(NONCE[2:]))
    assert settlement.success is True
    assert settlement.transaction == "0x" + expected_hash.hex()
    assert settlement.network == "offline:eip155:8453"
    assert settlement.payer == PAYER.address
    assert settlement.amount == PRICE
    assert "not broadcast" in caplog.text


def test_facilitator_from_settings() -> None:
    """Only facilitator_mode=offline selects the offline facilitator."""
    assert isinstance(
        facilitator_from_settings(Settings(facilitator_mode="offline")), OfflineFacilitator
    )
    http = facilitator_from_settings(Settings(facilitator_url="https://facilitator.test/x402/"))
    assert isinstance(http, HttpFacilitator)
    assert http.url == "https://facilitator.test/x402"
    assert isinstance(facilitator_from_settings(Settings()), HttpFacilitator)


class FakeFacilitator:
    """Routes of a fake facilitator: per endpoint, (status, body, delay in seconds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.routes: dict[str, tuple[int, Any, float]] = {}
        self.requests: list[tuple[str, dict[str, str], Any]] = []


@pytest.fixture
def fake_facilitator() -> Iterator[FakeFacilitator]:
    state: FakeFacilitator

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            endpoint = self.path.rsplit("/", 1)[-1]
            state.requests.append((self.path, dict(self.headers), body))
            status, response, delay = state.routes.get(endpoint, (404, {"error": "nf"}, 0.0))
            if delay:
                time.sleep(delay)
            raw = response if isinstance(response, bytes) else json.dumps(response).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the client gave up after its timeout

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FakeFacilitator(f"http://127.0.0.1:{server.server_address[1]}/platform/v2/x402")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


VERIFY_OK = (200, {"isValid": True, "payer": PAYER.address}, 0.0)
TRANSACTION = "0x" + "cd" * 32
SETTLE_OK = (
    200,
    {
        "success": True,
        "transaction": TRANSACTION,
        "network": "eip155:8453",
        "payer": PAYER.address,
        "amount": PRICE,
    },
    0.0,
)


def test_http_facilitator_settles(
    fake_facilitator: FakeFacilitator, verified_payment: VerifiedPayment
) -> None:
    """Verify then settle succeed; both requests carry the payment and the auth header."""
    fake_facilitator.routes = {"verify": VERIFY_OK, "settle": SETTLE_OK}
    auth_calls: list[tuple[str, str]] = []

    def auth(method: str, url: str) -> dict[str, str]:
        auth_calls.append((method, url))
        return {"Authorization": f"Bearer token-for-{url.rsplit('/', 1)[-1]}"}

    facilitator = HttpFacilitator(fake_facilitator.url, auth, timeout=2.0)
    settlement = facilitator.settle(verified_payment)

    assert settlement == Settlement(
        success=True,
        transaction=TRANSACTION,
        network="eip155:8453",
        payer=PAYER.address,
        amount=PRICE,
    )
    paths = [path for path, _, _ in fake_facilitator.requests]
    assert paths == ["/platform/v2/x402/verify", "/platform/v2/x402/settle"]
    assert auth_calls == [
        ("POST", fake_facilitator.url + "/verify"),
        ("POST", fake_facilitator.url + "/settle"),
    ]
    for path, headers, body in fake_facilitator.requests:
        endpoint = path.rsplit("/", 1)[-1]
        assert headers["Authorization"] == f"Bearer token-for-{endpoint}"
        assert body == {
            "x402Version": 2,
            "paymentPayload": verified_payment.payload,
            "paymentRequirements": verified_payment.requirements,
        }


def settle_failure(status: int, reason: str, transaction: str = "") -> tuple[int, Any, float]:
    """Return a fake /settle route that responds `success: false` with `reason`."""
    body = {
        "success": False,
        "errorReason": reason,
        "transaction": transaction,
        "network": "eip155:8453",
    }
    return status, body, 0.0


FACILITATOR_FAILURES = [
    # Routes, expected error class and code, number of requests the facilitator receives.
    pytest.param(
        {"verify": (200, {"isValid": False, "invalidReason": "insufficient_funds"}, 0.0)},
        PaymentRequired, "insufficient_funds", 1,
        id="verify-invalid",
    ),
    pytest.param(
        {"verify": (400, {"isValid": False, "invalidReason": "invalid_exact_evm_payload_signature",
                          "invalidMessage": "bad"}, 0.0)},
        PaymentRequired, "invalid_exact_evm_payload_signature", 1,
        id="verify-invalid-http-400",
    ),
    pytest.param(
        {"verify": (200, {"isValid": False, "invalidReason": "Bad <b>reason</b>"}, 0.0)},
        PaymentRequired, "payment_rejected", 1,
        id="verify-invalid-unsafe-reason",
    ),
    pytest.param(
        {"verify": (500, b"<html>oops</html>", 0.0)},
        ServiceUnavailable, "service_unavailable", 1,
        id="verify-500",
    ),
    pytest.param(
        {"verify": (401, {"message": "unauthorized"}, 0.0)},
        ServiceUnavailable, "service_unavailable", 1,
        id="verify-401",
    ),
    pytest.param(
        {"verify": (200, {"isValid": True}, 1.0)},
        ServiceUnavailable, "service_unavailable", 1,
        id="verify-timeout",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": settle_failure(200, "invalid_transaction_state")},
        PaymentRequired, "invalid_transaction_state", 2,
        id="settle-success-false",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": settle_failure(502, "unexpected_settle_error")},
        PaymentRequired, "unexpected_settle_error", 2,
        id="settle-502-with-reason",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": settle_failure(200, "settlement_pending", TRANSACTION)},
        PaymentPending, "settlement_pending", 2,
        id="settle-pending",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": (500, b"Internal Server Error", 0.0)},
        PaymentPending, "settlement_pending", 2,
        id="settle-500",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": (403, {"message": "forbidden"}, 0.0)},
        ServiceUnavailable, "service_unavailable", 2,
        id="settle-403",
    ),
    pytest.param(
        {"verify": VERIFY_OK,
         "settle": (200, {"success": True, "transaction": "", "network": "eip155:8453"}, 0.0)},
        PaymentPending, "settlement_pending", 2,
        id="settle-success-without-transaction",
    ),
    pytest.param(
        {"verify": VERIFY_OK, "settle": (*SETTLE_OK[:2], 1.0)},
        PaymentPending, "settlement_pending", 2,
        id="settle-timeout",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("routes", "error_class", "expected_code", "request_count"), FACILITATOR_FAILURES
)
def test_http_facilitator_failures(
    fake_facilitator: FakeFacilitator,
    verified_payment: VerifiedPayment,
    routes: dict[str, tuple[int, Any, float]],
    error_class: type[Exception],
    expected_code: str,
    request_count: int,
) -> None:
    """Each facilitator failure maps to a rejection, a pending state or an outage."""
    fake_facilitator.routes = routes
    facilitator = HttpFacilitator(fake_facilitator.url, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(error_class) as info:
        facilitator.settle(verified_payment)
    elapsed = time.monotonic() - started

    assert type(info.value) is error_class
    assert info.value.code == expected_code  # type: ignore[attr-defined]
    assert len(fake_facilitator.requests) == request_count
    assert elapsed < 0.95, "the client must give up at its timeout"


def test_settle_pending_keeps_transaction(
    fake_facilitator: FakeFacilitator, verified_payment: VerifiedPayment
) -> None:
    """A pending settlement keeps the facilitator's transaction hash for the retry."""
    fake_facilitator.routes = {
        "verify": VERIFY_OK,
        "settle": settle_failure(200, "settlement_pending", TRANSACTION),
    }
    with pytest.raises(PaymentPending) as info:
        HttpFacilitator(fake_facilitator.url, timeout=2.0).settle(verified_payment)
    assert info.value.detail["transaction"] == TRANSACTION


def test_http_facilitator_unreachable(verified_payment: VerifiedPayment) -> None:
    """A facilitator that refuses connections makes verify fail as ServiceUnavailable."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on the port any more

    with pytest.raises(ServiceUnavailable):
        HttpFacilitator(f"http://127.0.0.1:{port}", timeout=0.5).settle(verified_payment)
