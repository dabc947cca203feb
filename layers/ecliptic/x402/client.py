"""A payer with a local private key, for the local demo (`ecliptic montage`) and tests.

It signs real EIP-3009 authorizations, but nothing here touches a chain: a payment made
with a throwaway key only settles through the offline facilitator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ecliptic.x402.eip712 import TokenDomain, public_key_to_address, sign_transfer_authorization
from ecliptic.x402.encoding import encode_json_header
from ecliptic.x402.requirements import (
    SCHEME,
    network_by_name,
    payment_requirements_v2,
)
from ecliptic.x402.verify import V1_HEADER, V2_HEADER

if TYPE_CHECKING:
    from ecliptic.config import Settings

# The TypeScript reference client backdates validAfter by this much, in seconds.
BACKDATE_SECONDS = 600


class LocalPayer:
    """An EOA that signs x402 `exact` payments with a private key held in memory.

    Parameters
    ----------
    private_key
        32-byte secp256k1 private key, or None for a random throwaway key.
    """

    def __init__(self, private_key: bytes | None = None) -> None:
        from coincurve import PrivateKey

        self._private_key = PrivateKey(private_key) if private_key is not None else PrivateKey()
        public_key = self._private_key.public_key.format(compressed=False)
        self.address: str = public_key_to_address(public_key)

    def sign(self, domain: TokenDomain, authorization: Mapping[str, Any]) -> dict[str, Any]:
        """Sign `authorization` and return the exact-EVM payload `{signature, authorization}`."""
        signature = sign_transfer_authorization(self._private_key.secret, domain, authorization)
        return {"signature": signature, "authorization": dict(authorization)}

    def payment_payload(
        self,
        terms: Settings | Mapping[str, Any],
        *,
        version: Literal[1, 2],
        now: int | None = None,
        backdated: bool = False,
        resource_url: str | None = None,
    ) -> dict[str, Any]:
        """Build a complete, signed x402 payment payload (before base64 encoding).

        Parameters
        ----------
        terms
            The settings, one requirement (v1 or v2 shape), or a whole challenge with
            `accepts` (the 402 body or the decoded `PAYMENT-REQUIRED`), whose first
            `exact` entry is used.
        version
            x402 protocol version of the payload.
        now
            Unix time in seconds, by default the system clock.
        backdated
            Set validAfter to now - 600 s as the TypeScript client does, instead of 0 as
            the Python client does.
        resource_url
            Copied into the v2 `resource`. When omitted, the challenge's resource is used.

        Raises
        ------
        ValueError
            When `terms` has no `exact` requirement or names an unsupported network.
        """
        now = int(time.time()) if now is None else now
        requirement_v1, requirement_v2, challenge_resource = _requirements(terms)
        network = network_by_name(requirement_v2["network"])
        domain = TokenDomain(
            name=requirement_v2["extra"]["name"],
            version=requirement_v2["extra"]["version"],
            chain_id=network.chain_id,
            verifying_contract=requirement_v2["asset"],
        )
        authorization = {
            "from": self.address,
            "to": requirement_v2["payTo"],
            "value": requirement_v2["amount"],
            "validAfter": str(now - BACKDATE_SECONDS if backdated else 0),
            "validBefore": str(now + int(requirement_v2["maxTimeoutSeconds"])),
            "nonce": "0x" + secrets.token_bytes(32).hex(),
        }
        exact_payload = self.sign(domain, authorization)

        if version == 1:
            return {
                "x402Version": 1,
                "scheme": SCHEME,
                "network": network.v1_name,
                "payload": exact_payload,
            }
        payment: dict[str, Any] = {"x402Version": 2}
        resource = {"url": resource_url} if resource_url else challenge_resource
        if resource is None and requirement_v1 is not None:
            resource = {"url": requirement_v1["resource"]}
        if resource is not None:
            payment["resource"] = resource
        payment["accepted"] = requirement_v2
        payment["payload"] = exact_payload
        return payment

    def payment_header(
        self,
        terms: Settings | Mapping[str, Any],
        *,
        version: Literal[1, 2],
        now: int | None = None,
        backdated: bool = False,
        resource_url: str | None = None,
    ) -> tuple[str, str]:
        """Return the header name and value of a fresh payment (see `payment_payload`).

        Version 1 uses `X-PAYMENT`, version 2 `PAYMENT-SIGNATURE`.
        """
        payload = self.payment_payload(
            terms, version=version, now=now, backdated=backdated, resource_url=resource_url
        )
        name = V1_HEADER if version == 1 else V2_HEADER
        return name, encode_json_header(payload)


def _requirements(
    terms: Settings | Mapping[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]:
    # Return the v1 requirement (when known), the v2 requirement and the challenge's
    # resource (when given).
    if not isinstance(terms, Mapping):
        return None, payment_requirements_v2(terms), None

    resource: dict[str, Any] | None = None
    requirement: Mapping[str, Any] | None = terms
    if "accepts" in terms:
        resource = terms.get("resource")
        requirement = next(
            (entry for entry in terms["accepts"] if entry.get("scheme") == SCHEME), None
        )
        if requirement is None:
            raise ValueError(f"the challenge offers no {SCHEME!r} payment requirement")

    if "maxAmountRequired" in requirement:
        requirement_v1 = dict(requirement)
        requirement_v2 = {
            "scheme": requirement_v1["scheme"],
            "network": network_by_name(requirement_v1["network"]).caip2,
            "amount": requirement_v1["maxAmountRequired"],
            "asset": requirement_v1["asset"],
            "payTo": requirement_v1["payTo"],
            "maxTimeoutSeconds": requirement_v1["maxTimeoutSeconds"],
            "extra": dict(requirement_v1.get("extra") or {}),
        }
        return requirement_v1, requirement_v2, resource
    return None, dict(requirement), resource
