"""EIP-712 digest, signer recovery and signing for EIP-3009 `TransferWithAuthorization`.

The digest is keccak256(0x19 0x01 || domainSeparator || hashStruct(message)), where each
hash is keccak256 of the ABI encoding of a type hash followed by the fields (EIP-712).
Recovery accepts what Circle's FiatToken contract accepts on chain: a 65-byte signature
r || s || v with s <= n/2 and v in {27, 28}. A recovery id of 0 or 1 in place of v is
accepted too, because some signers emit it and the facilitator normalises it before
submitting.

The Ethereum libraries (eth-abi, eth-hash, coincurve) are imported inside the functions,
so that modules importing this one stay cheap until a signature is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Order n of the secp256k1 group.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2

EIP712_DOMAIN_TYPE = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
TRANSFER_WITH_AUTHORIZATION_TYPE = (
    "TransferWithAuthorization(address from,address to,uint256 value,"
    "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)


@dataclass(frozen=True)
class TokenDomain:
    """The EIP-712 domain of an EIP-3009 token contract."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str


class SignatureError(ValueError):
    """A signature that cannot be recovered. `reason` is the x402 reason code."""

    def __init__(self, message: str, reason: str = "invalid_signature") -> None:
        super().__init__(message)
        self.reason = reason


def keccak256(data: bytes) -> bytes:
    """Return the Keccak-256 hash of `data` (the pre-standard SHA-3 Ethereum uses)."""
    from eth_hash.auto import keccak

    return keccak(data)


@lru_cache(maxsize=16)
def domain_separator(domain: TokenDomain) -> bytes:
    """Return the 32-byte EIP-712 domain separator (hashStruct of the domain)."""
    from eth_abi import encode

    encoded = encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [
            keccak256(EIP712_DOMAIN_TYPE.encode()),
            keccak256(domain.name.encode("utf-8")),
            keccak256(domain.version.encode("utf-8")),
            domain.chain_id,
            _address_bytes(domain.verifying_contract),
        ],
    )
    return keccak256(encoded)


def transfer_authorization_digest(domain: TokenDomain, authorization: Mapping[str, Any]) -> bytes:
    """Return the 32-byte EIP-712 digest that the payer signs.

    Parameters
    ----------
    domain
        The token's EIP-712 domain.
    authorization
        `from`, `to` (hex addresses), `value`, `validAfter`, `validBefore` (decimal strings
        or ints) and `nonce` (0x + 64 hex digits), as in the x402 `authorization` object.

    Raises
    ------
    ValueError
        When a field is missing or out of range for its ABI type.
    """
    from eth_abi import encode
    from eth_abi.exceptions import EncodingError

    try:
        encoded = encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
            [
                _transfer_type_hash(),
                _address_bytes(authorization["from"]),
                _address_bytes(authorization["to"]),
                int(authorization["value"]),
                int(authorization["validAfter"]),
                int(authorization["validBefore"]),
                bytes.fromhex(_strip_0x(authorization["nonce"])),
            ],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"authorization is incomplete or mistyped: {exc}") from exc
    except EncodingError as exc:
        raise ValueError(f"authorization does not ABI-encode: {exc}") from exc
    return keccak256(b"\x19\x01" + domain_separator(domain) + keccak256(encoded))


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Recover the lower-case hex address that produced `signature` over `digest`.

    Raises
    ------
    SignatureError
        With reason `high_s_signature` when s > n/2, and `invalid_signature` when the
        signature is not 65 bytes, v is not 27, 28, 0 or 1, r or s is out of range, or no
        public key recovers.
    """
    from coincurve import PublicKey

    if len(signature) != 65:
        raise SignatureError(
            f"signature must be 65 bytes (r, s, v), got {len(signature)}. "
            "Smart-contract wallet signatures are not supported"
        )
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v in (27, 28):
        recovery_id = v - 27
    elif v in (0, 1):
        recovery_id = v
    else:
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    if not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        raise SignatureError("signature r or s is out of range")
    if s > SECP256K1_HALF_N:
        # FiatToken's ECRecover rejects high-s signatures (EIP-2), so settlement would fail.
        raise SignatureError(
            "signature s is in the upper half of the curve order. Sign again with a "
            "library that produces low-s signatures",
            reason="high_s_signature",
        )

    try:
        public_key = PublicKey.from_signature_and_message(
            signature[:64] + bytes([recovery_id]), digest, hasher=None
        )
    except ValueError as exc:  # coincurve 21 raises ValueError when no key recovers
        raise SignatureError("no public key recovers from the signature") from exc
    return public_key_to_address(public_key.format(compressed=False))


def public_key_to_address(uncompressed_public_key: bytes) -> str:
    """Return the lower-case hex address of a 65-byte uncompressed secp256k1 public key."""
    return "0x" + keccak256(uncompressed_public_key[1:])[-20:].hex()


def sign_transfer_authorization(
    private_key: bytes, domain: TokenDomain, authorization: Mapping[str, Any]
) -> str:
    """Sign a transfer authorization and return the 0x-prefixed 65-byte signature (v = 27/28).

    libsecp256k1 always produces low-s signatures, so the result passes `recover_signer`.
    """
    from coincurve import PrivateKey

    digest = transfer_authorization_digest(domain, authorization)
    recoverable = PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return "0x" + (recoverable[:64] + bytes([recoverable[64] + 27])).hex()


@lru_cache(maxsize=1)
def _transfer_type_hash() -> bytes:
    return keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.encode())


def _strip_0x(value: str) -> str:
    return value[2:] if value[:2] in ("0x", "0X") else value


def _address_bytes(address: str) -> bytes:
    # Bytes make the digest independent of the address's letter case. eth-abi would reject
    # a mixed-case address string whose EIP-55 checksum is wrong.
    raw = bytes.fromhex(_strip_0x(address))
    if len(raw) != 20:
        raise ValueError(f"address must be 20 bytes, got {len(raw)}")
    return raw
