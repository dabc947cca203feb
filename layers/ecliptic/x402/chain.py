"""Look up an EIP-3009 authorization on the token contract over Ethereum JSON-RPC.

The guard needs this in one case only: an earlier settle of a payment ended with an unknown
outcome, and settling it again was rejected. The facilitator cannot tell whether the first
settle moved the funds, but the token contract can:

- `authorizationState(authorizer, nonce)` is true once the authorization was used or
  cancelled, and stays false while it can still be used;
- an `AuthorizationUsed(authorizer, nonce)` event marks the transfer that used it, and its
  transaction hash is the settlement's.

The signed authorization fixes the recipient and the amount, and the guard checked both
before settling, so a transfer that used it paid this service the price.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import requests

from ecliptic.x402.eip712 import keccak256

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 5.0
# All reads for one authorization. The API function times out after 29 s, and a settle
# call before the reads takes at most about 13 s.
BUDGET_SECONDS = 8.0
# Blocks per eth_getLogs request. RPC providers limit the block range of one request, so
# the search moves back this many blocks at a time.
LOG_QUERY_BLOCKS = 1000
# Blocks searched at most, newest first: 20,000 blocks of 2 s on Base are about 11 hours.
MAX_LOG_BLOCKS = 20_000
# The search starts this long before the payment was claimed, for clock differences.
CLOCK_MARGIN_SECONDS = 120

AUTHORIZATION_STATE_SELECTOR = keccak256(b"authorizationState(address,bytes32)")[:4]
AUTHORIZATION_USED_TOPIC = "0x" + keccak256(b"AuthorizationUsed(address,bytes32)").hex()


class ChainReadFailed(Exception):
    """The RPC endpoint did not answer, or answered with an error or a malformed result."""


@dataclass(frozen=True)
class AuthorizationOnChain:
    """What the token contract says about one authorization."""

    used: bool
    # The transaction that used it, when an AuthorizationUsed event was found.
    transaction: str | None = None


class ChainReader:
    """A JSON-RPC client for the two reads above.

    The endpoint URL often carries an API key, so it is never logged.
    """

    def __init__(
        self,
        url: str,
        *,
        budget_seconds: float = BUDGET_SECONDS,
        session: requests.Session | None = None,
    ) -> None:
        self._url = url
        self._budget = budget_seconds
        self._deadline = 0.0
        self._session = session or requests.Session()
        self._ids = 0

    def authorization(
        self, asset: str, authorizer: str, nonce: str, *, since: float
    ) -> AuthorizationOnChain:
        """Return whether `nonce` of `authorizer` was used, and by which transaction.

        Parameters
        ----------
        asset, authorizer, nonce
            The token contract, the payer and the authorization nonce, as 0x hex.
        since
            Unix time before which no transfer can have happened (when the payment was
            claimed). Events are searched from about then, newest blocks first.

        Raises
        ------
        ChainReadFailed
            When a read fails or the reads take longer than the budget; nothing can be
            concluded then.
        """
        self._deadline = time.monotonic() + self._budget
        if not self._authorization_state(asset, authorizer, nonce):
            return AuthorizationOnChain(used=False)
        return AuthorizationOnChain(
            used=True, transaction=self._find_use(asset, authorizer, nonce, since)
        )

    # ----- reads --------------------------------------------------------------------------

    def _authorization_state(self, asset: str, authorizer: str, nonce: str) -> bool:
        data = AUTHORIZATION_STATE_SELECTOR + _word(authorizer) + _word(nonce)
        result = self._call("eth_call", [{"to": asset, "data": "0x" + data.hex()}, "latest"])
        word = _hex_bytes(result, "eth_call")
        if len(word) != 32:
            raise ChainReadFailed(f"eth_call returned {len(word)} bytes, expected 32")
        return int.from_bytes(word, "big") != 0

    def _find_use(self, asset: str, authorizer: str, nonce: str, since: float) -> str | None:
        """Search AuthorizationUsed events from the newest block back to about `since`."""
        latest = self._block(None)
        since_block = self._estimate_block(latest, since - CLOCK_MARGIN_SECONDS)
        topics = [AUTHORIZATION_USED_TOPIC, "0x" + _word(authorizer).hex(), _topic(nonce)]
        end = latest["number"]
        searched = 0
        while end >= since_block and searched < MAX_LOG_BLOCKS:
            start = max(since_block, end - LOG_QUERY_BLOCKS + 1)
            query = {"address": asset, "topics": topics}
            query |= {"fromBlock": hex(start), "toBlock": hex(end)}
            logs = self._call("eth_getLogs", [query])
            if not isinstance(logs, list):
                raise ChainReadFailed("eth_getLogs returned no list")
            for entry in logs:
                transaction = entry.get("transactionHash") if isinstance(entry, dict) else None
                if isinstance(transaction, str) and transaction.startswith("0x"):
                    return transaction.lower()
            searched += end - start + 1
            end = start - 1
        return None

    def _block(self, number: int | None) -> dict[str, int]:
        tag = "latest" if number is None else hex(number)
        block = self._call("eth_getBlockByNumber", [tag, False])
        if not isinstance(block, dict):
            raise ChainReadFailed(f"eth_getBlockByNumber({tag}) returned no block")
        return {
            "number": _hex_int(block.get("number"), "block number"),
            "timestamp": _hex_int(block.get("timestamp"), "block timestamp"),
        }

    def _estimate_block(self, latest: dict[str, int], moment: float) -> int:
        """Return a block number at or before `moment`, from the average block time."""
        if moment >= latest["timestamp"]:
            return latest["number"]
        back = min(latest["number"], MAX_LOG_BLOCKS)
        older = self._block(latest["number"] - back) if back else latest
        seconds = latest["timestamp"] - older["timestamp"]
        if back == 0 or seconds <= 0:
            return max(0, latest["number"] - MAX_LOG_BLOCKS)
        block_seconds = seconds / back
        blocks = int((latest["timestamp"] - moment) / block_seconds) + 1
        return max(0, latest["number"] - blocks)

    def _call(self, method: str, params: list[Any]) -> Any:
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}
        started = time.monotonic()
        remaining = self._deadline - started
        if remaining <= 0:
            raise ChainReadFailed(f"{method}: the {self._budget:g} s budget for reads ran out")
        timeout = (min(CONNECT_TIMEOUT_SECONDS, remaining), min(READ_TIMEOUT_SECONDS, remaining))
        try:
            response = self._session.post(
                self._url, json=body, timeout=timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise ChainReadFailed(f"{method}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise ChainReadFailed(f"{method}: HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ChainReadFailed(f"{method}: the response is not JSON") from exc
        if not isinstance(answer, dict):
            raise ChainReadFailed(f"{method}: the response is not a JSON-RPC object")
        if answer.get("error") is not None:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ChainReadFailed(f"{method}: {str(message)[:200]}")
        if "result" not in answer:
            raise ChainReadFailed(f"{method}: the response has no result")
        logger.debug("%s returned in %.3f s", method, time.monotonic() - started)
        return answer["result"]


def _word(value: str) -> bytes:
    """ABI-encode a 0x address or bytes32 as one 32-byte word."""
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) > 32:
        raise ValueError(f"{value} is longer than 32 bytes")
    return raw.rjust(32, b"\0")


def _topic(nonce: str) -> str:
    return "0x" + _word(nonce).hex()


def _hex_bytes(value: Any, source: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainReadFailed(f"{source} returned {value!r:.80}, expected 0x hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ChainReadFailed(f"{source} returned invalid hex") from exc


def _hex_int(value: Any, field: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainReadFailed(f"the {field} is {value!r:.80}, expected a 0x quantity")
    try:
        return int(value, 16)
    except ValueError as exc:
        raise ChainReadFailed(f"the {field} is not hex") from exc
