"""ChainReader against a fake JSON-RPC endpoint on 127.0.0.1."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from conftest import FakeChain

from ecliptic.x402.chain import (
    AUTHORIZATION_STATE_SELECTOR,
    AUTHORIZATION_USED_TOPIC,
    LOG_QUERY_BLOCKS,
    MAX_LOG_BLOCKS,
    ChainReader,
    ChainReadFailed,
)
from ecliptic.x402.eip712 import keccak256

ASSET = "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913"
PAYER = "0x" + "ab" * 20


@pytest.fixture
def chain() -> Iterator[FakeChain]:
    with FakeChain(ASSET) as fake:
        yield fake


def _nonce() -> str:
    return "0x" + secrets.token_hex(32)


def test_contract_identifiers() -> None:
    """The selector and the event topic are the EIP-3009 ones."""
    assert AUTHORIZATION_STATE_SELECTOR.hex() == "e94a0102"
    event = keccak256(b"AuthorizationUsed(address,bytes32)")
    assert event.hex() == AUTHORIZATION_USED_TOPIC.removeprefix("0x")


def test_unused_authorization(chain: FakeChain) -> None:
    found = ChainReader(chain.url).authorization(ASSET, PAYER, _nonce(), since=chain.now - 60)

    assert found.used is False
    assert found.transaction is None
    assert [method for method, _ in chain.calls] == ["eth_call"]


def test_used_authorization_gives_transaction(chain: FakeChain) -> None:
    nonce = _nonce()
    transaction = "0x" + "5e" * 32
    chain.use(PAYER, nonce, blocks_ago=10, transaction=transaction)

    found = ChainReader(chain.url).authorization(ASSET, PAYER, nonce, since=chain.now - 60)

    assert found.used is True
    assert found.transaction == transaction


def test_log_search_pages_back_to_claim(chain: FakeChain) -> None:
    """A transfer 2,500 blocks back is found with queries of at most LOG_QUERY_BLOCKS."""
    nonce = _nonce()
    chain.use(PAYER, nonce, blocks_ago=2500, transaction="0x" + "77" * 32)
    since = chain.block_time(chain.latest - 2600)

    found = ChainReader(chain.url).authorization(ASSET, PAYER, nonce, since=since)

    assert found.transaction == "0x" + "77" * 32
    ranges = [
        (int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16))
        for method, params in chain.calls
        if method == "eth_getLogs"
    ]
    assert len(ranges) == 3
    assert all(end - start + 1 <= LOG_QUERY_BLOCKS for start, end in ranges)
    assert ranges[0][1] == chain.latest
    for newer, older in zip(ranges, ranges[1:], strict=False):
        assert older[1] + 1 == newer[0]


def test_cancelled_authorization_has_no_transaction(chain: FakeChain) -> None:
    nonce = _nonce()
    chain.use(PAYER, nonce, blocks_ago=5, transaction=None)

    found = ChainReader(chain.url).authorization(ASSET, PAYER, nonce, since=chain.now - 60)

    assert found.used is True
    assert found.transaction is None


def test_log_search_stops_at_its_limit(chain: FakeChain) -> None:
    """An event older than MAX_LOG_BLOCKS is not searched for, however old the claim."""
    nonce = _nonce()
    chain.use(PAYER, nonce, blocks_ago=MAX_LOG_BLOCKS + 10, transaction="0x" + "11" * 32)

    found = ChainReader(chain.url).authorization(ASSET, PAYER, nonce, since=0)

    assert found.used is True
    assert found.transaction is None
    searched = sum(
        int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
        for method, params in chain.calls
        if method == "eth_getLogs"
    )
    assert searched == MAX_LOG_BLOCKS


@pytest.mark.parametrize("status", [200, 500, 429])
def test_failed_read_raises(chain: FakeChain, status: int) -> None:
    """An HTTP error or a JSON-RPC error is a failed read, never a result."""
    chain.fail = status

    with pytest.raises(ChainReadFailed) as caught:
        ChainReader(chain.url).authorization(ASSET, PAYER, _nonce(), since=chain.now)

    assert "eth_call" in str(caught.value)


def test_failure_message_leaves_out_the_url(chain: FakeChain) -> None:
    """The endpoint URL may carry an API key, so a failure does not repeat it."""
    reader = ChainReader(chain.url.replace("/rpc", "/v2/secret-key-123"))
    chain.fail = 500

    with pytest.raises(ChainReadFailed) as caught:
        reader.authorization(ASSET, PAYER, _nonce(), since=chain.now)

    assert "secret-key-123" not in str(caught.value)


def test_refused_connection_raises() -> None:
    with FakeChain(ASSET) as closed:
        url = closed.url
    with pytest.raises(ChainReadFailed, match="ConnectionError"):
        ChainReader(url).authorization(ASSET, PAYER, _nonce(), since=0)


def test_reads_stop_at_their_budget(chain: FakeChain) -> None:
    """A slow endpoint fails the lookup once the budget is spent, not after every timeout."""
    nonce = _nonce()
    chain.use(PAYER, nonce, blocks_ago=MAX_LOG_BLOCKS - 10, transaction="0x" + "22" * 32)
    chain.delay_seconds = 0.2
    reader = ChainReader(chain.url, budget_seconds=0.5)
    started = time.monotonic()

    with pytest.raises(ChainReadFailed):
        reader.authorization(ASSET, PAYER, nonce, since=0)

    assert time.monotonic() - started < 1.5
    assert len(chain.calls) <= 4
