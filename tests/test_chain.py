"""ChainReader against a fake JSON-RPC endpoint on 127.0.0.1."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from conftest import FakeChain

from ecliptic.x402.chain import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_STATE_SELECTOR,
    AUTHORIZATION_USED_TOPIC,
    LOG_QUERY_BLOCKS,
    MARGIN_SECONDS,
    TRANSFER_TOPIC,
    ChainReader,
    ChainReadFailed,
    PaymentTerms,
)
from ecliptic.x402.eip712 import keccak256

ASSET = "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913"
PAYER = "0x" + "ab" * 20
PAY_TO = "0x" + "5e" * 20
PRICE = 20000
TRANSACTION = "0x" + "7a" * 32


@pytest.fixture
def chain() -> Iterator[FakeChain]:
    with FakeChain(ASSET) as fake:
        yield fake


def _terms(chain: FakeChain, *, claimed_ago: int = 10, window: int = 60) -> PaymentTerms:
    """Terms of a payment claimed `claimed_ago` seconds before the chain's newest block."""
    claimed = chain.now - claimed_ago
    return PaymentTerms(
        asset=ASSET,
        chain_id=8453,
        payer=PAYER,
        pay_to=PAY_TO,
        price=PRICE,
        nonce="0x" + secrets.token_hex(32),
        valid_after=0,
        valid_before=claimed + window,
    )


def _log_ranges(chain: FakeChain) -> list[tuple[int, int]]:
    """Return the (fromBlock, toBlock) of each eth_getLogs call, in call order."""
    return [
        (int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16))
        for method, params in chain.calls
        if method == "eth_getLogs"
    ]


def _read(chain: FakeChain, terms: PaymentTerms, claimed_ago: int = 10):
    return ChainReader(chain.url).authorization(terms, since=chain.now - claimed_ago)


def test_contract_identifiers() -> None:
    """The selector and the event topics are the EIP-3009 and ERC-20 ones."""
    assert AUTHORIZATION_STATE_SELECTOR.hex() == "e94a0102"
    assert TRANSFER_TOPIC == (
        "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    )
    for topic, event in (
        (AUTHORIZATION_USED_TOPIC, b"AuthorizationUsed(address,bytes32)"),
        (AUTHORIZATION_CANCELED_TOPIC, b"AuthorizationCanceled(address,bytes32)"),
    ):
        assert topic.removeprefix("0x") == keccak256(event).hex()


def test_unused_before_valid_before(chain: FakeChain) -> None:
    found = _read(chain, _terms(chain))

    assert found.outcome == "unused"
    assert found.transaction is None


def test_unused_after_valid_before_is_expired(chain: FakeChain) -> None:
    terms = _terms(chain, claimed_ago=600)

    assert _read(chain, terms, claimed_ago=600).outcome == "expired"


def test_expiry_judged_by_chain_clock(chain: FakeChain) -> None:
    """A node whose newest block is older than validBefore plus the margin is not final."""
    terms = _terms(chain, claimed_ago=600)
    chain.now = terms.valid_before + MARGIN_SECONDS - 1

    assert _read(chain, terms, claimed_ago=0).outcome == "unused"


def test_payment_transfer_found(chain: FakeChain) -> None:
    terms = _terms(chain)
    block = chain.block_at(chain.now - 4)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    found = _read(chain, terms)

    assert found.outcome == "paid"
    assert found.transaction == TRANSACTION


@pytest.mark.parametrize(
    ("to", "value"),
    [("0x" + "99" * 20, PRICE), (PAY_TO, PRICE - 1)],
    ids=["paid-someone-else", "paid-too-little"],
)
def test_transfer_that_did_not_pay_is_undecided(chain: FakeChain, to: str, value: int) -> None:
    """The nonce was used by another authorization of the payer: no payment, no release."""
    terms = _terms(chain)
    block = chain.block_at(chain.now - 4)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=to, value=value)

    found = _read(chain, terms)

    assert found.outcome == "undecided"


def test_cancelled_authorization(chain: FakeChain) -> None:
    terms = _terms(chain)
    chain.cancel(PAYER, terms.nonce, block=chain.block_at(chain.now - 4))

    assert _read(chain, terms).outcome == "cancelled"


def test_old_claim_searches_its_own_blocks(chain: FakeChain) -> None:
    """A transfer two days back is found with a few small queries around validBefore."""
    two_days = 2 * 86400
    terms = _terms(chain, claimed_ago=two_days)
    block = chain.block_at(chain.now - two_days + 5)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    found = _read(chain, terms, claimed_ago=two_days)

    assert found.outcome == "paid"
    ranges = _log_ranges(chain)
    assert len(ranges) == 1
    start, end = ranges[0]
    assert start <= block <= end
    assert end - start + 1 <= LOG_QUERY_BLOCKS


def test_wide_range_is_paged(chain: FakeChain) -> None:
    """A long validity window is searched in queries of at most LOG_QUERY_BLOCKS."""
    terms = _terms(chain, claimed_ago=3600, window=3000)
    block = chain.block_at(chain.now - 3600 + 2900)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    found = _read(chain, terms, claimed_ago=3600)

    assert found.outcome == "paid"
    ranges = _log_ranges(chain)
    assert len(ranges) >= 2
    assert all(end - start + 1 <= LOG_QUERY_BLOCKS for start, end in ranges)
    for earlier, later in zip(ranges, ranges[1:], strict=False):
        assert earlier[1] + 1 == later[0]


def test_transfer_above_price_pays(chain: FakeChain) -> None:
    terms = _terms(chain)
    block = chain.block_at(chain.now - 4)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=10**6)

    assert _read(chain, terms).outcome == "paid"


def test_transfer_of_other_token_does_not_pay(chain: FakeChain) -> None:
    """The Transfer after the event must come from the payment's token contract."""
    terms = _terms(chain)
    other_token = chain.transfer_log(PAYER, PAY_TO, PRICE, 4) | {"address": "0x" + "0d" * 20}
    logs = [chain.authorization_log(PAYER, terms.nonce, 3), other_token]
    block = chain.block_at(chain.now - 4)
    chain.use(
        PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE,
        logs=logs,
    )  # fmt: skip

    assert _read(chain, terms).outcome == "undecided"


def test_batch_counts_only_the_nonce_transfer(chain: FakeChain) -> None:
    """In a transaction with two authorizations, the one after this nonce's event counts."""
    terms = _terms(chain)
    other_nonce = "0x" + secrets.token_hex(32)
    logs = [
        chain.authorization_log(PAYER, terms.nonce, 0),
        chain.transfer_log(PAYER, "0x" + "99" * 20, PRICE, 1),
        chain.authorization_log(PAYER, other_nonce, 2),
        chain.transfer_log(PAYER, PAY_TO, PRICE, 3),
    ]
    block = chain.block_at(chain.now - 4)
    chain.use(
        PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE,
        logs=logs,
    )  # fmt: skip

    assert _read(chain, terms).outcome == "undecided"


def test_batch_finds_the_nonce_event_anywhere(chain: FakeChain) -> None:
    """The nonce's event need not be the first log of the transaction."""
    terms = _terms(chain)
    other_payer = "0x" + "cd" * 20
    logs = [
        chain.authorization_log(other_payer, "0x" + secrets.token_hex(32), 0),
        chain.transfer_log(other_payer, PAY_TO, PRICE, 1),
        chain.authorization_log(PAYER, terms.nonce, 2),
        chain.transfer_log(PAYER, PAY_TO, PRICE, 3),
    ]
    block = chain.block_at(chain.now - 4)
    chain.use(
        PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE,
        logs=logs,
    )  # fmt: skip

    assert _read(chain, terms).outcome == "paid"


def test_search_starts_a_margin_before_the_claim(chain: FakeChain) -> None:
    """A transfer shortly before the recorded claim time is still found."""
    terms = _terms(chain, claimed_ago=300)
    block = chain.block_at(chain.now - 300 - MARGIN_SECONDS // 2)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    assert _read(chain, terms, claimed_ago=300).outcome == "paid"


def test_search_ends_a_margin_after_valid_before(chain: FakeChain) -> None:
    """A use recorded long after validBefore is outside the window: nothing is concluded."""
    terms = _terms(chain, claimed_ago=3600)
    late = chain.block_at(terms.valid_before + 3 * MARGIN_SECONDS)
    chain.use(PAYER, terms.nonce, block=late, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    found = _read(chain, terms, claimed_ago=3600)

    assert found.outcome == "undecided"
    window_end = chain.block_at(terms.valid_before + MARGIN_SECONDS)
    used_queries = [
        params[0]
        for method, params in chain.calls
        if method == "eth_getLogs" and AUTHORIZATION_USED_TOPIC in params[0]["topics"][0]
    ]
    assert max(int(query["toBlock"], 16) for query in used_queries) <= window_end + 1


def test_cancelled_after_expiry(chain: FakeChain) -> None:
    """A cancellation after validBefore is found beyond the transfer window."""
    terms = _terms(chain, claimed_ago=3600)
    chain.cancel(PAYER, terms.nonce, block=chain.latest - 5)

    assert _read(chain, terms, claimed_ago=3600).outcome == "cancelled"


def test_expiry_needs_a_finalized_block(chain: FakeChain) -> None:
    """Unused at the newest block is not final while the finalized block is too early."""
    terms = _terms(chain, claimed_ago=600)
    chain.finality_blocks = (chain.now - terms.valid_before) // chain.block_seconds

    assert _read(chain, terms, claimed_ago=600).outcome == "unused"


def test_unrelated_log_keeps_the_filter(chain: FakeChain) -> None:
    """A log of another kind on one page does not change the next page's query."""
    terms = _terms(chain, claimed_ago=3600, window=3000)
    chain.extra_logs = [{"address": ASSET, "topics": [TRANSFER_TOPIC], "logIndex": "0x0"}]
    block = chain.block_at(chain.now - 3600 + 2900)
    chain.use(PAYER, terms.nonce, block=block, transaction=TRANSACTION, to=PAY_TO, value=PRICE)

    assert _read(chain, terms, claimed_ago=3600).outcome == "paid"


def test_other_chain_is_rejected(chain: FakeChain) -> None:
    """An endpoint of another network cannot declare a Base payment expired."""
    chain.chain_id = 84532
    terms = _terms(chain, claimed_ago=600)

    with pytest.raises(ChainReadFailed, match="chain 84532"):
        _read(chain, terms, claimed_ago=600)


@pytest.mark.parametrize("status", [200, 500, 429])
def test_failed_read_raises(chain: FakeChain, status: int) -> None:
    """An HTTP error or a JSON-RPC error is a failed read, never a result."""
    chain.fail = status

    with pytest.raises(ChainReadFailed, match="eth_chainId"):
        _read(chain, _terms(chain))


def test_failure_message_leaves_out_the_url(chain: FakeChain) -> None:
    """The endpoint URL may carry an API key, so a failure does not repeat it."""
    reader = ChainReader(chain.url.replace("/rpc", "/v2/secret-key-123"))
    chain.fail = 500

    with pytest.raises(ChainReadFailed) as caught:
        reader.authorization(_terms(chain), since=chain.now)

    assert "secret-key-123" not in str(caught.value)


def test_refused_connection_raises() -> None:
    with FakeChain(ASSET) as closed:
        url = closed.url
        terms = _terms(closed)
    with pytest.raises(ChainReadFailed, match="ConnectionError"):
        ChainReader(url).authorization(terms, since=0)


def test_reads_stop_at_their_budget(chain: FakeChain) -> None:
    """A slow endpoint fails the lookup once the budget is spent, not after every timeout."""
    chain.delay_seconds = 0.2
    reader = ChainReader(chain.url, budget_seconds=0.5)
    started = time.monotonic()

    with pytest.raises(ChainReadFailed):
        reader.authorization(_terms(chain), since=chain.now)

    assert time.monotonic() - started < 1.5
    assert len(chain.calls) <= 4
