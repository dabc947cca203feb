"""Look up an EIP-3009 authorization on the token contract over Ethereum JSON-RPC.

The guard needs this in one case only: an earlier settle of a payment ended with an unknown
outcome, and settling it again was rejected. The facilitator cannot tell whether the first
settle moved the funds, but the token contract can:

- an `AuthorizationUsed(authorizer, nonce)` event marks the transaction that used the
  nonce. The nonce is unique per payer, not per signed message, so a payer could sign a
  second authorization with the same nonce that pays another address. The payment counts only when
  the same transaction moved at least the price from the payer to the service: the
  `Transfer` event right after that `AuthorizationUsed` in the receipt, as FiatToken
  emits them;
- an `AuthorizationCanceled(authorizer, nonce)` event means no transfer can ever use it. A
  payer may cancel at any time, even after `validBefore`;
- `authorizationState(authorizer, nonce)` stays false while the nonce is unused. Read at a
  finalized block whose timestamp is past `validBefore`, false means it can never be used.

The chain id is checked first, and every state read names its block, so a node of another
network, or one that lags or sits on a short-lived fork, cannot make an unused state look
final.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import requests

from ecliptic.x402.eip712 import keccak256

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 5.0
# All reads for one authorization. The API function times out after 29 s. Before the reads
# a request may wait up to 8 s for a concurrent one and then settle for up to about 13 s.
BUDGET_SECONDS = 5.0
# Blocks per eth_getLogs request. RPC providers limit the block range of one request, so
# the search moves through the range this many blocks at a time.
LOG_QUERY_BLOCKS = 1000
# Slack around the times that bound the search and the expiry, for clock differences
# between the API, the payer and the chain, and for short reorganisations.
MARGIN_SECONDS = 120
# Blocks that the average block time is measured over.
BLOCK_TIME_SAMPLE = 1000

AUTHORIZATION_STATE_SELECTOR = keccak256(b"authorizationState(address,bytes32)")[:4]
AUTHORIZATION_USED_TOPIC = "0x" + keccak256(b"AuthorizationUsed(address,bytes32)").hex()
AUTHORIZATION_CANCELED_TOPIC = "0x" + keccak256(b"AuthorizationCanceled(address,bytes32)").hex()
TRANSFER_TOPIC = "0x" + keccak256(b"Transfer(address,address,uint256)").hex()

_TRANSACTION_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")

Outcome = Literal["paid", "unused", "expired", "cancelled", "undecided"]


class ChainReadFailed(Exception):
    """The RPC endpoint did not respond, or returned an error or a malformed result."""


@dataclass(frozen=True)
class PaymentTerms:
    """The payment a transfer must have made: token, chain, parties, price and nonce."""

    asset: str
    chain_id: int
    payer: str
    pay_to: str
    price: int
    nonce: str
    valid_after: int
    valid_before: int


@dataclass(frozen=True)
class AuthorizationOnChain:
    """The state of one authorization on the token contract.

    `outcome` is `paid` (with `transaction`), `expired` (unused, and the chain is past
    `validBefore`), `cancelled`, `unused` (it may still be used) or `undecided` (used,
    but not by a transfer that paid the service, or the event was not found).
    """

    outcome: Outcome
    transaction: str | None = None


class ChainReader:
    """A JSON-RPC client for the reads above.

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
        self._seconds_per_block: float | None = None
        self._session = session or requests.Session()
        self._ids = 0

    def authorization(self, terms: PaymentTerms, *, since: float) -> AuthorizationOnChain:
        """Find out what became of the authorization in `terms`.

        Parameters
        ----------
        since
            Unix time from which the transfer may have happened, about when the payment
            was claimed. Events are searched from then (less a margin) to `validBefore`
            (plus a margin), and cancellations up to the newest block.

        Raises
        ------
        ChainReadFailed
            When a read fails, the endpoint serves another chain, or the reads take
            longer than the budget; nothing can be concluded then.
        """
        self._deadline = time.monotonic() + self._budget
        self._seconds_per_block = None
        chain_id = _hex_int(self._call("eth_chainId", []), "chain id")
        if chain_id != terms.chain_id:
            raise ChainReadFailed(f"the endpoint serves chain {chain_id}, not {terms.chain_id}")

        latest = self._block("latest")
        if not self._authorization_state(terms, latest["number"]):
            # Only a final block can show that the authorization can no longer be used.
            final = self._block("finalized")
            expired = final["timestamp"] >= terms.valid_before + MARGIN_SECONDS
            if expired and not self._authorization_state(terms, final["number"]):
                return AuthorizationOnChain("expired")
            return AuthorizationOnChain("unused")

        window_end = self._block_after(latest, terms.valid_before + MARGIN_SECONDS)
        first = max(float(terms.valid_after), since - MARGIN_SECONDS)
        both = [AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC]
        event = self._find_event(terms, both, self._block_before(latest, first), window_end)
        if event is None:
            # After validBefore only a cancellation can use the nonce, at any later time.
            event = self._find_event(
                terms, [AUTHORIZATION_CANCELED_TOPIC], window_end + 1, latest["number"]
            )
        if event is None:
            return AuthorizationOnChain("undecided")
        if _log_topics(event)[0] == AUTHORIZATION_CANCELED_TOPIC:
            return AuthorizationOnChain("cancelled")
        transaction = event.get("transactionHash")
        if not isinstance(transaction, str) or not _TRANSACTION_HASH.match(transaction):
            raise ChainReadFailed("the event's transaction hash is malformed")
        if self._paid(terms, transaction.lower()):
            return AuthorizationOnChain("paid", transaction.lower())
        logger.error(
            "authorization %s of %s was used without paying the service",
            terms.nonce, terms.payer,
        )  # fmt: skip
        return AuthorizationOnChain("undecided", transaction.lower())

    # ----- reads --------------------------------------------------------------------------

    def _authorization_state(self, terms: PaymentTerms, block: int) -> bool:
        data = AUTHORIZATION_STATE_SELECTOR + _word(terms.payer) + _word(terms.nonce)
        call = {"to": terms.asset, "data": "0x" + data.hex()}
        word = _hex_bytes(self._call("eth_call", [call, hex(block)]), "eth_call")
        if len(word) != 32:
            raise ChainReadFailed(f"eth_call returned {len(word)} bytes, expected 32")
        return int.from_bytes(word, "big") != 0

    def _find_event(
        self, terms: PaymentTerms, kinds: list[str], start: int, end: int
    ) -> dict[str, Any] | None:
        """Return the first event of `kinds` for the nonce in blocks `start` to `end`."""
        topics = [kinds, _topic(terms.payer), _topic(terms.nonce)]
        while start <= end:
            stop = min(end, start + LOG_QUERY_BLOCKS - 1)
            query = {"address": terms.asset, "topics": topics}
            query |= {"fromBlock": hex(start), "toBlock": hex(stop)}
            logs = self._call("eth_getLogs", [query])
            if not isinstance(logs, list):
                raise ChainReadFailed("eth_getLogs returned no list")
            for entry in logs:
                entry_topics = _log_topics(entry)
                if entry_topics and entry_topics[0] in kinds:
                    return entry
            start = stop + 1
        return None

    def _paid(self, terms: PaymentTerms, transaction: str) -> bool:
        """Check that the transaction's Transfer after the nonce's AuthorizationUsed moved at
        least the price from the payer to the service."""
        receipt = self._call("eth_getTransactionReceipt", [transaction])
        if not isinstance(receipt, dict) or not isinstance(receipt.get("logs"), list):
            raise ChainReadFailed("eth_getTransactionReceipt returned no receipt")
        if _hex_int(receipt.get("status"), "receipt status") != 1:
            return False

        used = [AUTHORIZATION_USED_TOPIC, _topic(terms.payer), _topic(terms.nonce)]
        transfer = [TRANSFER_TOPIC, _topic(terms.payer), _topic(terms.pay_to)]
        logs = sorted(
            (entry for entry in receipt["logs"] if isinstance(entry, dict)),
            key=lambda entry: _hex_int(entry.get("logIndex"), "log index"),
        )
        for position, entry in enumerate(logs[:-1]):
            if not (_from_asset(entry, terms) and _log_topics(entry) == used):
                continue
            following = logs[position + 1]
            if not (_from_asset(following, terms) and _log_topics(following)[:3] == transfer):
                return False
            value = int.from_bytes(_hex_bytes(following.get("data"), "Transfer data"), "big")
            return value >= terms.price
        return False

    def _block(self, number: int | str) -> dict[str, int]:
        tag = number if isinstance(number, str) else hex(number)
        block = self._call("eth_getBlockByNumber", [tag, False])
        if not isinstance(block, dict):
            raise ChainReadFailed(f"eth_getBlockByNumber({tag}) returned no block")
        return {
            "number": _hex_int(block.get("number"), "block number"),
            "timestamp": _hex_int(block.get("timestamp"), "block timestamp"),
        }

    def _block_seconds(self, latest: dict[str, int]) -> float:
        """Return the average block time, read once per lookup."""
        if self._seconds_per_block is None:
            back = min(latest["number"], BLOCK_TIME_SAMPLE)
            seconds = 1.0
            if back:
                older = self._block(latest["number"] - back)
                seconds = max(0.001, (latest["timestamp"] - older["timestamp"]) / back)
            self._seconds_per_block = seconds
        return self._seconds_per_block

    def _block_before(self, latest: dict[str, int], moment: float) -> int:
        """Return a block number whose timestamp is at or before `moment`."""
        if moment >= latest["timestamp"]:
            return latest["number"]
        seconds = self._block_seconds(latest)
        guess = latest["number"] - math.ceil((latest["timestamp"] - moment) / seconds)
        while guess > 0:
            block = self._block(guess)
            if block["timestamp"] <= moment:
                return guess
            guess -= math.ceil((block["timestamp"] - moment) / seconds) + 1
        return 0

    def _block_after(self, latest: dict[str, int], moment: float) -> int:
        """Return a block number whose timestamp is at or after `moment` (or the latest)."""
        if moment >= latest["timestamp"]:
            return latest["number"]
        seconds = self._block_seconds(latest)
        guess = latest["number"] - math.floor((latest["timestamp"] - moment) / seconds)
        while guess < latest["number"]:
            block = self._block(guess)
            if block["timestamp"] >= moment:
                return guess
            guess += math.ceil((moment - block["timestamp"]) / seconds) + 1
        return latest["number"]

    def _call(self, method: str, params: list[Any]) -> Any:
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}
        started = time.monotonic()
        remaining = self._deadline - started
        if remaining <= 0:
            raise ChainReadFailed(f"{method}: the {self._budget:g} s budget for reads ran out")

        # Connecting and waiting for the response together stay within the time left.
        timeout = (
            min(CONNECT_TIMEOUT_SECONDS, remaining / 2),
            min(READ_TIMEOUT_SECONDS, remaining / 2),
        )
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
            code = error.get("code") if isinstance(error, dict) else None
            raise ChainReadFailed(f"{method}: JSON-RPC error {code}")
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


def _log_topics(entry: Any) -> list[str]:
    """Return a log entry's topics in lower case; an empty list for a malformed entry."""
    topics = entry.get("topics") if isinstance(entry, dict) else None
    if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
        return []
    return [topic.lower() for topic in topics]


def _from_asset(entry: dict[str, Any], terms: PaymentTerms) -> bool:
    return str(entry.get("address", "")).lower() == terms.asset.lower()


def _topic(value: str) -> str:
    """Return an indexed address or bytes32 event argument as its lower-case topic."""
    return "0x" + _word(value).hex()


def _hex_bytes(value: Any, source: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainReadFailed(f"{source} is {value!r:.80}, expected 0x hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ChainReadFailed(f"{source} is invalid hex") from exc


def _hex_int(value: Any, field: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainReadFailed(f"the {field} is {value!r:.80}, expected a 0x quantity")
    try:
        return int(value, 16)
    except ValueError as exc:
        raise ChainReadFailed(f"the {field} is not hex") from exc
