"""Coinbase Developer Platform (CDP) authentication for facilitator requests.

The CDP facilitator (`https://api.cdp.coinbase.com/platform/v2/x402`) takes
`Authorization: Bearer <JWT>`, where the JWT is signed with a CDP secret API key and is
valid for one method and URL for 120 seconds. The header is
`{alg, kid: <key id>, typ: "JWT", nonce}` and the claims are
`{sub: <key id>, iss: "cdp", iat, nbf, exp: nbf + 120, uris: ["POST <host><path>"]}`,
as in Coinbase's `cdp-sdk` (`python/cdp/auth/utils/jwt.py`). Two key types exist:

- Ed25519 (`alg: EdDSA`): the secret is base64 of 64 bytes, the 32-byte seed followed by
  the 32-byte public key.
- ECDSA P-256 (`alg: ES256`): the secret is a PEM `EC PRIVATE KEY`. The JWT signature is
  r || s (64 bytes), not DER.

The key is read from Secrets Manager or SSM Parameter Store as JSON
`{"keyId": ..., "keySecret": ...}`. The names of CDP's downloaded key file
(`{"id" or "name", "privateKey"}`) are accepted too. Neither value is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError

logger = logging.getLogger(__name__)

JWT_LIFETIME_SECONDS = 120
ISSUER = "cdp"
_ED25519_SECRET_BYTES = 64
_P256_COORDINATE_BYTES = 32


class CdpCredentialsError(ValueError):
    """Facilitator credentials that are missing fields or hold an unusable key."""


class CdpCredentials(BaseModel):
    """A CDP secret API key: its id and its private key (secret)."""

    model_config = ConfigDict(extra="ignore")

    key_id: str = Field(min_length=1, validation_alias=AliasChoices("keyId", "id", "name"))
    key_secret: SecretStr = Field(validation_alias=AliasChoices("keySecret", "privateKey"))


class CdpAuth:
    """Mints a CDP JWT for each facilitator request (an `AuthHeaderProvider`).

    Parameters
    ----------
    credentials
        The API key. Its private key is parsed here, so a bad key fails at construction
        and never halfway through a settlement.

    Raises
    ------
    CdpCredentialsError
        When the secret is neither an Ed25519 nor a P-256 key in CDP's formats.
    """

    def __init__(self, credentials: CdpCredentials) -> None:
        self.key_id = credentials.key_id
        self._private_key, self.algorithm = load_private_key(
            credentials.key_secret.get_secret_value()
        )

    def __call__(self, method: str, url: str) -> dict[str, str]:
        """Return the `Authorization` header for one request."""
        token = mint_jwt(self.key_id, self._private_key, method, url)
        return {"Authorization": f"Bearer {token}"}


def load_private_key(secret: str) -> tuple[Any, str]:
    """Parse a CDP key secret and return the private key with its JWT `alg`.

    Raises
    ------
    CdpCredentialsError
        When the secret is not a PEM P-256 key or base64 of a 64-byte Ed25519 key pair.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    # Secrets pasted into JSON or environment variables often carry escaped newlines.
    text = secret.replace("\\n", "\n").strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise CdpCredentialsError("the PEM key secret could not be parsed") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CdpCredentialsError("a PEM key secret must be an EC P-256 (ES256) key")
        return key, "ES256"

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CdpCredentialsError(
            "the key secret is neither a PEM EC key nor base64 of an Ed25519 key"
        ) from exc
    if len(raw) != _ED25519_SECRET_BYTES:
        raise CdpCredentialsError(
            f"an Ed25519 key secret must decode to {_ED25519_SECRET_BYTES} bytes, "
            f"got {len(raw)}"
        )
    key = ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    if public != raw[32:]:
        raise CdpCredentialsError("the Ed25519 key secret's public half does not match its seed")
    return key, "EdDSA"


def mint_jwt(
    key_id: str, private_key: Any, method: str, url: str, *, now: int | None = None
) -> str:
    """Return a CDP JWT for one request: `method` on `url`, valid for 120 seconds.

    `private_key` is an `Ed25519PrivateKey` or a P-256 `EllipticCurvePrivateKey`. The
    `uris` claim is `"<METHOD> <host><path>"`, without scheme or query string.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    now = int(time.time()) if now is None else now
    parts = urlsplit(url)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        algorithm = "ES256"
    else:
        raise CdpCredentialsError(f"unsupported key type {type(private_key).__name__}")

    header = {"alg": algorithm, "kid": key_id, "typ": "JWT", "nonce": secrets.token_hex(16)}
    claims = {
        "sub": key_id,
        "iss": ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + JWT_LIFETIME_SECONDS,
        "uris": [f"{method.upper()} {parts.netloc}{parts.path}"],
    }
    signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}".encode("ascii")

    if algorithm == "EdDSA":
        signature = private_key.sign(signing_input)
    else:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_P256_COORDINATE_BYTES, "big") + s.to_bytes(
            _P256_COORDINATE_BYTES, "big"
        )
    return f"{signing_input.decode('ascii')}.{_b64url(signature)}"


def auth_from_source(source: str) -> CdpAuth:
    """Read CDP credentials from Secrets Manager or SSM and return their `CdpAuth`.

    `source` is a Secrets Manager secret id or ARN, or an SSM parameter name (starting
    with `/`) or ARN (`arn:aws:ssm:…`). Powertools caches the value for 5 minutes.

    Raises
    ------
    CdpCredentialsError
        When the value is not JSON with a key id and a usable key secret.
    """
    from aws_lambda_powertools.utilities import parameters

    if source.startswith(("/", "arn:aws:ssm:")):
        value = parameters.get_parameter(source, decrypt=True, transform="json")
    else:
        value = parameters.get_secret(source, transform="json")
    return CdpAuth(credentials_from_json(value))


def credentials_from_json(value: Any) -> CdpCredentials:
    """Validate decoded secret JSON as `CdpCredentials`, naming fields but never values.

    Raises
    ------
    CdpCredentialsError
        When `value` is not an object with a key id and a key secret.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CdpCredentialsError("the facilitator credentials are not JSON") from exc
    if not isinstance(value, Mapping):
        raise CdpCredentialsError("the facilitator credentials must be a JSON object")
    try:
        return CdpCredentials.model_validate(dict(value))
    except ValidationError as exc:
        missing = ", ".join(
            str(error["loc"][0]) for error in exc.errors(include_input=False, include_url=False)
        )
        raise CdpCredentialsError(
            f'the facilitator credentials need "keyId" and "keySecret" (problem: {missing})'
        ) from exc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_json(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))
