"""Payment requirements and the 402 challenge, built from the settings.

This module runs on every unpaid request, so it imports no Ethereum libraries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ecliptic.x402.encoding import encode_json_header

if TYPE_CHECKING:
    from ecliptic.config import Settings

SCHEME = "exact"
DEFAULT_DESCRIPTION = "One beat-synced video montage"
DEFAULT_MIME_TYPE = "application/json"

PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"
WWW_AUTHENTICATE_HEADER = "WWW-Authenticate"


@dataclass(frozen=True)
class Network:
    """An EVM network under its two x402 names: v1 name and CAIP-2 id."""

    v1_name: str
    caip2: str
    chain_id: int


NETWORKS: tuple[Network, ...] = (
    Network("base", "eip155:8453", 8453),
    Network("base-sepolia", "eip155:84532", 84532),
)


def network_by_name(name: str) -> Network:
    """Look up a network by its v1 name (`base`) or CAIP-2 id (`eip155:8453`).

    Raises
    ------
    ValueError
        When the network is not one of `NETWORKS`.
    """
    for network in NETWORKS:
        if name in (network.v1_name, network.caip2):
            return network
    known = ", ".join(f"{n.v1_name} ({n.caip2})" for n in NETWORKS)
    raise ValueError(f"unsupported payment network {name!r}, expected one of: {known}")


def payment_requirements_v1(
    settings: Settings,
    resource_url: str,
    *,
    description: str = DEFAULT_DESCRIPTION,
    mime_type: str = DEFAULT_MIME_TYPE,
) -> dict[str, Any]:
    """Return the version 1 requirement (one entry of `accepts`) for `resource_url`."""
    network = network_by_name(settings.payment_network)
    return {
        "scheme": SCHEME,
        "network": network.v1_name,
        "maxAmountRequired": str(settings.price_atomic),
        "resource": resource_url,
        "description": description,
        "mimeType": mime_type,
        "payTo": settings.pay_to,
        "maxTimeoutSeconds": settings.payment_window_seconds,
        "asset": settings.payment_asset,
        "extra": _extra(settings),
    }


def payment_requirements_v2(settings: Settings) -> dict[str, Any]:
    """Return the version 2 requirement (one entry of `accepts`, and the expected `accepted`).

    Version 2 moves the resource out of the requirement into the challenge's `resource`.
    """
    network = network_by_name(settings.payment_network)
    return {
        "scheme": SCHEME,
        "network": network.caip2,
        "amount": str(settings.price_atomic),
        "asset": settings.payment_asset,
        "payTo": settings.pay_to,
        "maxTimeoutSeconds": settings.payment_window_seconds,
        "extra": _extra(settings),
    }


def challenge(
    settings: Settings,
    resource_url: str,
    error: str,
    *,
    description: str = DEFAULT_DESCRIPTION,
    mime_type: str = DEFAULT_MIME_TYPE,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Build the 402 response body and headers that ask for a payment.

    The body is the version 1 challenge `{x402Version: 1, error, accepts: [...]}`. The
    headers carry the same terms twice more:

    - `PAYMENT-REQUIRED`: base64 of the version 2 challenge
      `{x402Version: 2, error, resource: {url, description, mimeType}, accepts: [...]}`.
    - `WWW-Authenticate`: an RFC 9110 challenge with auth scheme `x402` and these
      parameters, each a quoted string::

          x402 realm="<resource_url>", scheme="exact", network="eip155:8453",
               asset="0x<token>", payTo="0x<recipient>", amount="20000"

      `network` is the CAIP-2 id and `amount` is in the token's smallest unit. The value
      is one line, wrapped here only for reading. Core x402 clients ignore this header.

    CORS must expose these headers to browsers (see `response.CORS_EXPOSE_HEADERS`).
    """
    requirement_v1 = payment_requirements_v1(
        settings, resource_url, description=description, mime_type=mime_type
    )
    requirement_v2 = payment_requirements_v2(settings)

    body = {"x402Version": 1, "error": error, "accepts": [requirement_v1]}
    payment_required_v2 = {
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource_url, "description": description, "mimeType": mime_type},
        "accepts": [requirement_v2],
    }
    parameters = {
        "realm": resource_url,
        "scheme": SCHEME,
        "network": requirement_v2["network"],
        "asset": requirement_v2["asset"],
        "payTo": requirement_v2["payTo"],
        "amount": requirement_v2["amount"],
    }
    www_authenticate = "x402 " + ", ".join(
        f"{name}={_quoted_string(value)}" for name, value in parameters.items()
    )

    headers = {
        PAYMENT_REQUIRED_HEADER: encode_json_header(payment_required_v2),
        WWW_AUTHENTICATE_HEADER: www_authenticate,
    }
    return body, headers


def _extra(settings: Settings) -> dict[str, str]:
    # The EIP-712 domain name and version of the token. Clients cannot sign without them.
    return {"name": settings.payment_asset_name, "version": settings.payment_asset_version}


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _quoted_string(value: str) -> str:
    # An HTTP quoted-string (RFC 9110, section 5.6.4). Characters outside printable ASCII
    # are percent-encoded, so a header value can never contain a line break.
    printable = _NOT_PRINTABLE_ASCII.sub(
        lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8")), value
    )
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
