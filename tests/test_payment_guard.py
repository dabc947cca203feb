"""The payment guard end to end: local server, real handler, moto, a fake facilitator.

The API runs in facilitator mode `http` against a fake facilitator on 127.0.0.1 that
counts `/verify` and `/settle` calls and remembers which nonces it broadcast, the way the
x402 reference facilitator reconciles a second settle of the same payload. Payments come
from the official x402 Python SDK (`x402[evm]`, a test-only dependency) and from
`LocalPayer` for deliberately broken ones. After every failure the DynamoDB items are
checked: no job without a settlement, claims released or kept, nothing settled twice.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from conftest import FakeChain
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eth_account import Account
from x402 import x402ClientSync
from x402.http import x402HTTPClientSync
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.v1 import ExactEvmSchemeV1

import ecliptic.x402.facilitator as facilitator_module
from ecliptic.config import Settings, get_settings
from ecliptic.errors import PaymentConflict, ServiceUnavailable
from ecliptic.jobs import JobStore
from ecliptic.local.cli import LocalStack
from ecliptic.submission import submit_montage
from ecliptic.x402.cdp_auth import (
    CdpAuth,
    CdpCredentialsError,
    auth_from_source,
    credentials_from_json,
    load_private_key,
)
from ecliptic.x402.chain import MARGIN_SECONDS
from ecliptic.x402.client import LocalPayer
from ecliptic.x402.eip712 import SECP256K1_N, TokenDomain
from ecliptic.x402.encoding import decode_json_header, encode_json_header
from ecliptic.x402.facilitator import OfflineFacilitator, facilitator_from_settings
from ecliptic.x402.requirements import payment_requirements_v2

# One worker runs this module, so its tests share one local stack.
pytestmark = pytest.mark.xdist_group("payment_guard")

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings()
SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OTHER_RECIPIENT = "0x1111111111111111111111111111111111111111"
FACILITATOR_PATH = "/platform/v2/x402"


# ----- fake facilitator -------------------------------------------------------------------


class FakeFacilitator:
    """A facilitator on 127.0.0.1 whose verify and settle outcomes each test chooses.

    Verify modes: `ok`, `invalid` (isValid false), `error` (HTTP 500), `timeout`.
    Settle modes: `ok`, `fail` (success false), `pending` (settlement_pending with a
    transaction), `timeout` (broadcasts, then responds after the client gave up), `error`
    (broadcasts, then HTTP 500), `nonce_used` (success false, nonce already used).
    A settle of a nonce that was already broadcast returns that transaction again
    instead of broadcasting twice, as the reference facilitator's reconciliation does.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verify_mode = "ok"
        self.settle_modes: list[str] = []
        self.calls: Counter[str] = Counter()
        self.broadcasts: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        # Longer than the facilitator client's timeout in the tests that use it (0.5 s).
        self.delay_seconds = 1.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + FACILITATOR_PATH

    def reset(self, *, verify: str = "ok", settle: list[str] | None = None) -> None:
        with self.lock:
            self.verify_mode = verify
            self.settle_modes = list(settle or [])
            self.calls.clear()
            self.requests.clear()

    def media_url(self, name: str) -> str:
        # GET returns 404, so a started job fails at staging within milliseconds.
        return f"{self.base}/media/{name}"

    def _respond(self, endpoint: str, body: dict[str, Any]) -> tuple[int, Any, float]:
        authorization = body["paymentPayload"]["payload"]["authorization"]
        nonce = authorization["nonce"].lower()
        transaction = transaction_for(nonce)
        success = {
            "success": True,
            "transaction": transaction,
            "network": body["paymentRequirements"]["network"],
            "payer": authorization["from"],
        }
        with self.lock:
            self.calls[endpoint] += 1
            if endpoint == "verify":
                mode = self.verify_mode
                if mode == "invalid":
                    return 200, {"isValid": False, "invalidReason": "insufficient_funds"}, 0
                if mode == "error":
                    return 500, b"Internal Server Error", 0
                delay = self.delay_seconds if mode == "timeout" else 0
                return 200, {"isValid": True, "payer": authorization["from"]}, delay

            mode = self.settle_modes.pop(0) if self.settle_modes else "ok"
            if mode == "fail":
                return 200, {"success": False, "errorReason": "insufficient_funds"}, 0
            if mode == "nonce_used":
                failure = {"success": False, "errorReason": "invalid_exact_evm_nonce_already_used"}
                return 200, failure, 0
            if self.broadcasts[nonce] == 0:
                self.broadcasts[nonce] += 1
            if mode == "pending":
                pending = {**success, "success": False, "errorReason": "settlement_pending"}
                return 200, pending, 0
            if mode == "error":
                return 500, b"Internal Server Error", 0
            return 200, success, self.delay_seconds if mode == "timeout" else 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                endpoint = self.path.rsplit("/", 1)[-1]
                with fake.lock:
                    fake.requests.append((endpoint, dict(self.headers), body))
                status, response, delay = fake._respond(endpoint, body)
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

            def do_GET(self) -> None:  # noqa: N802
                self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


def transaction_for(nonce: str) -> str:
    """Return the transaction hash the fake facilitator reports for a nonce."""
    return "0x" + nonce[2:][::-1]


@pytest.fixture(scope="module")
def facilitator() -> Iterator[FakeFacilitator]:
    fake = FakeFacilitator()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture(scope="module")
def stack(facilitator: FakeFacilitator) -> Iterator[LocalStack]:
    """The local stack, settling through the fake facilitator."""
    env = {"ECLIPTIC_FACILITATOR_MODE": "http", "ECLIPTIC_FACILITATOR_URL": facilitator.url}
    with LocalStack(extra_env=env) as running:
        yield running


@pytest.fixture
def fake(facilitator: FakeFacilitator) -> FakeFacilitator:
    facilitator.reset()
    return facilitator


@contextmanager
def settings_env(**values: str) -> Iterator[None]:
    """Set `ECLIPTIC_*` variables for the API handler, then restore them."""
    import os

    names = {f"ECLIPTIC_{name.upper()}": value for name, value in values.items()}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


# ----- helpers ----------------------------------------------------------------------------


def montage_body(fake: FakeFacilitator, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "audio": {"url": fake.media_url("song.mp3")},
        "videos": [{"url": fake.media_url("clip.mp4")}],
    }
    body.update(extra)
    return body


def post(stack: LocalStack, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{stack.url}/montages", json=body, headers=headers or {}, timeout=60)


def sdk_client(account: Any) -> x402HTTPClientSync:
    signer = EthAccountSigner(account)
    client = x402ClientSync()
    client.register("eip155:8453", ExactEvmScheme(signer))
    client.register_v1("base", ExactEvmSchemeV1(signer))
    return x402HTTPClientSync(client)


def sdk_payment(stack: LocalStack, body: dict[str, Any], version: int) -> dict[str, str]:
    """Return the payment headers the x402 SDK makes from the API's 402 challenge."""
    challenge = post(stack, body)
    assert challenge.status_code == 402
    headers = dict(challenge.headers)
    if version == 1:
        # Without PAYMENT-REQUIRED the SDK reads the version 1 challenge in the body.
        headers.pop("PAYMENT-REQUIRED")
    payment_headers, _ = sdk_client(Account.create()).handle_402_response(
        headers, challenge.content, f"{stack.url}/montages"
    )
    return payment_headers


def payment_of(headers: dict[str, str]) -> tuple[str, str]:
    """Return (payer, nonce) of a payment header, lower-case as the claim stores them."""
    authorization = decode_json_header(next(iter(headers.values())))["payload"]["authorization"]
    return authorization["from"].lower(), authorization["nonce"].lower()


def jobs_paid_by(payer: str) -> list[dict[str, Any]]:
    """Return the job items whose payment came from `payer`, read straight from the table."""
    from ecliptic.jobs import from_item

    client = boto3.client("dynamodb")
    items = client.scan(
        TableName=get_settings().table_name,
        FilterExpression="begins_with(pk, :job) AND payment.payer = :payer",
        ExpressionAttributeValues={":job": {"S": "JOB#"}, ":payer": {"S": payer}},
    )["Items"]
    return [from_item(item) for item in items]


def executions_of(stack: LocalStack, job_id: str) -> int:
    executions = boto3.client("stepfunctions").list_executions(
        stateMachineArn=stack.runtime.state_machine_arn
    )["executions"]
    return sum(1 for execution in executions if execution["name"] == job_id)


def claim_of(headers: dict[str, str]) -> dict[str, Any] | None:
    return JobStore().get_claim(*payment_of(headers))


# ----- the x402 SDK as a client -----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "request_header", "response_header", "requirement_field"),
    [
        (1, "X-PAYMENT", "X-PAYMENT-RESPONSE", "maxAmountRequired"),
        (2, "PAYMENT-SIGNATURE", "PAYMENT-RESPONSE", "amount"),
    ],
)
def test_sdk_payment_accepted(
    stack, fake, version, request_header, response_header, requirement_field
):
    """Headers the official SDK makes are accepted; the facilitator gets them unchanged."""
    body = montage_body(fake, username=f"sdk-v{version}")
    headers = sdk_payment(stack, body, version)

    response = post(stack, body, headers)

    assert list(headers) == [request_header]
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    settlement = decode_json_header(response.headers[response_header])
    assert settlement["success"] is True
    assert settlement["payer"] == payment_of(headers)[0]
    assert fake.calls == Counter({"verify": 1, "settle": 1})
    for endpoint, _, sent in fake.requests:
        assert sent["x402Version"] == version, endpoint
        assert sent["paymentPayload"] == decode_json_header(headers[request_header])
        assert sent["paymentRequirements"][requirement_field] == "20000"
    job = JobStore().get_job(job_id)
    assert job is not None
    assert job.payment is not None
    assert job.payment.transaction == settlement["transaction"]
    assert claim_of(headers)["claimState"] == "job_written"


def test_challenge_exposes_payment_headers(stack, fake):
    """A browser may read the challenge headers: CORS exposes them."""
    response = requests.post(
        f"{stack.url}/montages",
        json=montage_body(fake),
        headers={"Origin": "https://app.example.com"},
        timeout=30,
    )

    assert response.status_code == 402
    exposed = response.headers["Access-Control-Expose-Headers"]
    for name in ("PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE", "WWW-Authenticate"):
        assert name in exposed
    assert response.headers["WWW-Authenticate"].startswith('x402 realm="')


def test_bad_body_rejected_before_payment(stack, fake):
    """A malformed body with a valid payment gets 400; nothing is claimed or settled."""
    body = montage_body(fake)
    headers = sdk_payment(stack, body, 2)
    body["durationSeconds"] = 1  # below the minimum of 3

    response = post(stack, body, headers)

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "durationSeconds"
    assert fake.calls == Counter()
    assert claim_of(headers) is None


# ----- rejections through the server --------------------------------------------------------


PAYER = LocalPayer()
OTHER_KEY = LocalPayer()


def broken_header(
    version: int,
    *,
    domain: dict[str, Any] | None = None,
    signed: dict[str, Any] | None = None,
    unsigned: dict[str, Any] | None = None,
    accepted: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    signer: LocalPayer = PAYER,
    signature: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """Return a payment header that is valid now unless an override breaks it.

    `signed` overrides authorization fields before signing and `unsigned` after it.
    """
    now = int(time.time())
    authorization = {
        "from": PAYER.address,
        "to": SETTINGS.pay_to,
        "value": str(SETTINGS.price_atomic),
        "validAfter": "0",
        "validBefore": str(now + 50),
        "nonce": "0x" + secrets.token_hex(32),
        **(signed or {}),
    }
    token_domain = TokenDomain(
        name=SETTINGS.payment_asset_name,
        version=SETTINGS.payment_asset_version,
        chain_id=8453,
        verifying_contract=SETTINGS.payment_asset,
    )
    exact = signer.sign(dataclasses.replace(token_domain, **(domain or {})), authorization)
    exact["authorization"].update(unsigned or {})
    if signature is not None:
        exact["signature"] = signature(exact["signature"])
    if version == 1:
        payment: dict[str, Any] = {
            "x402Version": 1, "scheme": "exact", "network": "base", "payload": exact,
        }  # fmt: skip
    else:
        payment = {
            "x402Version": 2,
            "accepted": {**payment_requirements_v2(SETTINGS), **(accepted or {})},
            "payload": exact,
        }
    payment.update(top or {})
    return {"X-PAYMENT" if version == 1 else "PAYMENT-SIGNATURE": encode_json_header(payment)}


def flip_s(signature: str) -> str:
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64], "big")
    v = 28 if raw[64] == 27 else 27
    return "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([v])).hex()


def in_other_header(headers: dict[str, str]) -> dict[str, str]:
    ((name, value),) = headers.items()
    return {"PAYMENT-SIGNATURE" if name == "X-PAYMENT" else "X-PAYMENT": value}


def now_plus(seconds: int) -> str:
    return str(int(time.time()) + seconds)


REJECTIONS = [
    pytest.param(lambda: broken_header(2, domain={"name": "USDC"}), "signer_mismatch",
                 id="wrong-domain-name"),
    pytest.param(lambda: broken_header(1, domain={"chain_id": 84532}), "signer_mismatch",
                 id="wrong-chain-id-in-domain"),
    pytest.param(lambda: broken_header(2, accepted={"network": "eip155:84532"}), "wrong_network",
                 id="wrong-chain"),
    pytest.param(lambda: broken_header(1, top={"network": "base-sepolia"}), "wrong_network",
                 id="wrong-chain-v1"),
    pytest.param(lambda: broken_header(2, accepted={"asset": SEPOLIA_USDC}), "wrong_asset",
                 id="wrong-asset"),
    pytest.param(lambda: broken_header(2, signed={"to": OTHER_RECIPIENT}), "wrong_recipient",
                 id="wrong-pay-to"),
    pytest.param(lambda: broken_header(1, signed={"value": "20001"}), "amount_mismatch",
                 id="amount-plus-one"),
    pytest.param(lambda: broken_header(2, signed={"value": "19999"}), "amount_mismatch",
                 id="amount-minus-one"),
    pytest.param(lambda: broken_header(2, unsigned={"value": "0x4e20"}), "invalid_amount",
                 id="hex-amount"),
    pytest.param(lambda: broken_header(1, unsigned={"value": ""}), "invalid_amount",
                 id="empty-amount"),
    pytest.param(lambda: broken_header(2, signed={"validBefore": now_plus(-1)}), "expired",
                 id="expired"),
    pytest.param(
        lambda: broken_header(2, signed={"validAfter": now_plus(45), "validBefore": now_plus(55)}),
        "not_yet_valid", id="not-yet-valid",
    ),
    pytest.param(lambda: broken_header(2, signature=flip_s), "high_s_signature", id="high-s"),
    pytest.param(lambda: broken_header(1, signer=OTHER_KEY), "signer_mismatch",
                 id="signed-by-another-key"),
    pytest.param(lambda: {"PAYMENT-SIGNATURE": broken_header(2)["PAYMENT-SIGNATURE"][:-9]},
                 "invalid_payment_header", id="truncated"),
    pytest.param(lambda: {"X-PAYMENT": "not base64!"}, "invalid_payment_header",
                 id="non-base64"),
    pytest.param(lambda: {"PAYMENT-SIGNATURE": "A" * 9000}, "invalid_payment_header",
                 id="oversized"),
    pytest.param(lambda: broken_header(1, top={"scheme": "upto"}), "unsupported_scheme",
                 id="unknown-scheme"),
    pytest.param(lambda: in_other_header(broken_header(1)), "unsupported_version",
                 id="v1-payload-in-v2-header"),
    pytest.param(lambda: in_other_header(broken_header(2)), "unsupported_version",
                 id="v2-payload-in-v1-header"),
]  # fmt: skip


@pytest.mark.parametrize(("make_headers", "reason"), REJECTIONS)
def test_invalid_payment_rejected(stack, fake, make_headers, reason):
    """Each broken payment gets 402 with its reason, and no network call or claim."""
    headers = make_headers()

    response = post(stack, montage_body(fake), headers)

    assert response.status_code == 402
    body = response.json()
    assert body["reason"] == reason
    assert body["x402Version"] == 1
    assert body["accepts"][0]["maxAmountRequired"] == "20000"
    assert "PAYMENT-REQUIRED" in response.headers
    assert fake.calls == Counter()
    assert jobs_paid_by(PAYER.address) == []


# ----- concurrency --------------------------------------------------------------------------


def test_concurrent_requests_start_one_job(stack, fake):
    """20 concurrent requests with one payment header start one job and settle once."""
    body = montage_body(fake, username="concurrent")
    headers = sdk_payment(stack, body, 2)
    start = threading.Barrier(20)

    def send(_: int) -> requests.Response:
        start.wait()
        return post(stack, body, headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))

    statuses = Counter(response.status_code for response in responses)
    assert statuses == Counter({202: 20}), [r.text for r in responses if r.status_code != 202]
    job_ids = {response.json()["jobId"] for response in responses}
    assert len(job_ids) == 1
    assert fake.calls == Counter({"verify": 1, "settle": 1})
    payer, _ = payment_of(headers)
    assert [job["jobId"] for job in jobs_paid_by(payer)] == list(job_ids)
    assert executions_of(stack, job_ids.pop()) == 1


def test_concurrent_submissions_race_on_claim(stack, fake):
    """20 Lambda-style workers racing on one payment, past the server's request lock.

    The local server runs one API request at a time, as one Lambda container does; in AWS
    parallel requests land in parallel containers, so the claim itself must stop the race.
    """
    body = montage_body(fake, username="race")
    headers = sdk_payment(stack, body, 2)
    start = threading.Barrier(20)

    def submit(_: int) -> str:
        start.wait()
        for _attempt in range(50):
            try:
                return submit_montage(json.dumps(body), headers, f"{stack.url}/montages")
            except PaymentConflict as error:
                assert error.code == "payment_in_progress"
                time.sleep(0.1)
        raise AssertionError("the payment stayed in progress")

    with ThreadPoolExecutor(max_workers=20) as pool:
        submissions = list(pool.map(submit, range(20)))

    job_ids = {submission.accepted.jobId for submission in submissions}
    assert len(job_ids) == 1
    assert fake.calls == Counter({"verify": 1, "settle": 1})
    assert executions_of(stack, job_ids.pop()) == 1


def test_same_payment_other_body_conflicts(stack, fake):
    """A paid payment reused for a different body gets 409; nothing settles again."""
    body = montage_body(fake, username="first")
    headers = sdk_payment(stack, body, 1)
    assert post(stack, body, headers).status_code == 202

    response = post(stack, dict(body, username="second"), headers)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "payment_reused"
    assert fake.calls["settle"] == 1


# ----- facilitator failures -------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    verify: str
    settle: list[str]
    status: int
    code: str
    claim_state: str | None  # after the failure; None means the claim was released
    first_calls: dict[str, int]
    retry_calls: dict[str, int]


BOTH = {"verify": 1, "settle": 1}
FAILURES = [
    pytest.param(Failure("invalid", [], 402, "insufficient_funds", None, {"verify": 1}, BOTH),
                 id="verify-false"),
    pytest.param(Failure("error", [], 503, "service_unavailable", None, {"verify": 1}, BOTH),
                 id="verify-500"),
    pytest.param(Failure("timeout", [], 503, "service_unavailable", None, {"verify": 1}, BOTH),
                 id="verify-timeout"),
    pytest.param(Failure("ok", ["fail"], 402, "insufficient_funds", None, BOTH, BOTH),
                 id="settle-false"),
    # After an unknown outcome the retry settles again without verifying: the facilitator
    # reconciles with the transaction it already broadcast.
    pytest.param(Failure("ok", ["pending"], 503, "settlement_pending", "pending", BOTH,
                         {"settle": 1}), id="settle-pending"),
    pytest.param(Failure("ok", ["timeout"], 503, "settlement_pending", "pending", BOTH,
                         {"settle": 1}), id="settle-timeout"),
    pytest.param(Failure("ok", ["error"], 503, "settlement_pending", "pending", BOTH,
                         {"settle": 1}), id="settle-500"),
]  # fmt: skip


@pytest.mark.parametrize("failure", FAILURES)
def test_facilitator_failure_leaves_consistent_state(stack, fake, monkeypatch, failure):
    """After each failure: no job, the claim released or pending; a retry pays once."""
    monkeypatch.setattr(facilitator_module, "DEFAULT_TIMEOUT_SECONDS", 0.5)
    fake.reset(verify=failure.verify, settle=failure.settle)
    body = montage_body(fake, username=f"failure-{failure.code}")
    headers = sdk_payment(stack, body, 2)
    payer, nonce = payment_of(headers)

    response = post(stack, body, headers)

    assert response.status_code == failure.status, response.text
    if failure.status == 402:
        assert response.json()["reason"] == failure.code
    else:
        assert response.json()["error"]["code"] == failure.code
    assert dict(fake.calls) == failure.first_calls
    assert jobs_paid_by(payer) == []
    claim = claim_of(headers)
    if failure.claim_state is None:
        assert claim is None
    else:
        assert claim is not None
        assert claim["claimState"] == failure.claim_state
        assert "settlement" not in claim
        assert response.headers["Retry-After"] == "2"
    if failure.settle == ["pending"]:
        assert claim is not None
        assert claim["pendingTransaction"] == transaction_for(nonce)

    fake.reset()
    retry = post(stack, body, headers)

    assert retry.status_code == 202, retry.text
    assert dict(fake.calls) == failure.retry_calls
    (job,) = jobs_paid_by(payer)
    assert job["jobId"] == retry.json()["jobId"]
    assert fake.broadcasts[nonce] == 1
    assert job["payment"]["transaction"] == transaction_for(nonce)
    assert claim_of(headers)["claimState"] == "job_written"
    assert executions_of(stack, job["jobId"]) == 1


def test_pending_retry_still_pending(stack, fake):
    """A retry that meets a still-pending settlement gets 503 again, never a 402."""
    fake.reset(settle=["pending", "pending"])
    body = montage_body(fake, username="still-pending")
    headers = sdk_payment(stack, body, 2)
    payer, nonce = payment_of(headers)

    first = post(stack, body, headers)
    second = post(stack, body, headers)

    assert first.status_code == 503
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "settlement_pending"
    assert "do not sign a new payment" in second.json()["error"]["message"]
    assert fake.calls == Counter({"verify": 1, "settle": 2})
    assert fake.broadcasts[nonce] == 1
    assert jobs_paid_by(payer) == []
    assert claim_of(headers)["claimState"] == "pending"


def test_rejection_after_unknown_outcome_keeps_claim(stack, fake):
    """A rejection of the second settle after a timeout is not turned into a fresh 402."""
    fake.reset(settle=["error", "nonce_used"])
    body = montage_body(fake, username="unconfirmed")
    headers = sdk_payment(stack, body, 2)
    payer, _ = payment_of(headers)

    first = post(stack, body, headers)
    second = post(stack, body, headers)

    assert first.status_code == 503
    assert second.status_code == 503
    error = second.json()["error"]
    assert error["code"] == "settlement_unconfirmed"
    assert payer in error["message"]
    claim = claim_of(headers)
    assert claim["claimState"] == "pending"
    assert claim["lastReason"] == "invalid_exact_evm_nonce_already_used"
    assert jobs_paid_by(payer) == []


@pytest.fixture
def chain() -> Iterator[FakeChain]:
    """A fake chain RPC endpoint that the API reads, for the tests that set it up."""
    with FakeChain(SETTINGS.payment_asset) as fake_chain, settings_env(
        chain_rpc_url=fake_chain.url
    ):
        yield fake_chain


@dataclasses.dataclass
class UnconfirmedPayment:
    """A payment whose settle failed with an unknown outcome: its body, headers and ids."""

    body: dict[str, Any]
    headers: dict[str, str]
    payer: str
    nonce: str
    valid_before: int


def unconfirmed_payment(
    stack: LocalStack, fake: FakeFacilitator, username: str
) -> UnconfirmedPayment:
    """Send a paid request whose settle fails with HTTP 500.

    The retry's settle then gets "nonce already used", so only the chain can decide it.
    """
    fake.reset(settle=["error", "nonce_used"])
    body = montage_body(fake, username=username)
    headers = sdk_payment(stack, body, 2)
    payer, nonce = payment_of(headers)
    authorization = decode_json_header(headers["PAYMENT-SIGNATURE"])["payload"]["authorization"]

    first = post(stack, body, headers)

    assert first.status_code == 503
    return UnconfirmedPayment(body, headers, payer, nonce, int(authorization["validBefore"]))


def test_unconfirmed_settlement_found_on_chain(stack, fake, chain):
    """The chain shows the transfer that paid for the authorization: the retry gets the job."""
    payment = unconfirmed_payment(stack, fake, "found-on-chain")
    transaction = "0x" + "c4" * 32

    chain.use(
        payment.payer,
        payment.nonce,
        block=chain.latest,
        transaction=transaction,
        to=SETTINGS.pay_to,
        value=SETTINGS.price_atomic,
    )
    second = post(stack, payment.body, payment.headers)

    assert second.status_code == 202, second.text
    (job,) = jobs_paid_by(payment.payer)
    assert job["jobId"] == second.json()["jobId"]
    assert job["payment"]["transaction"] == transaction
    assert claim_of(payment.headers)["claimState"] == "job_written"
    assert executions_of(stack, job["jobId"]) == 1
    methods = [method for method, _ in chain.calls]
    assert methods[:3] == ["eth_chainId", "eth_getBlockByNumber", "eth_call"]
    assert "eth_getTransactionReceipt" in methods


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
def test_unused_authorization_released(stack, fake, chain, outcome):
    """Expired unused, or cancelled, on chain: nothing was charged, so the request gets a 402."""
    payment = unconfirmed_payment(stack, fake, f"released-{outcome}")

    if outcome == "expired":
        chain.now = payment.valid_before + MARGIN_SECONDS
    else:
        chain.cancel(payment.payer, payment.nonce, block=chain.latest)
    second = post(stack, payment.body, payment.headers)

    assert second.status_code == 402, second.text
    challenge = second.json()
    assert challenge["reason"] == outcome
    assert "nothing was charged" in challenge["error"]
    assert "PAYMENT-REQUIRED" in second.headers
    assert claim_of(payment.headers) is None
    assert jobs_paid_by(payment.payer) == []


@pytest.mark.parametrize("setup", ["unused", "stale_node", "paid_elsewhere", "rpc_error"])
def test_undecided_on_chain_stays_pending(stack, fake, chain, setup):
    """Without a paying transfer and without a final unused state the claim stays pending."""
    payment = unconfirmed_payment(stack, fake, f"undecided-{setup}")

    if setup == "stale_node":
        # The chain's newest block is 2 s short of validBefore plus the margin.
        chain.now = payment.valid_before + MARGIN_SECONDS - 2
    if setup == "paid_elsewhere":
        chain.use(
            payment.payer,
            payment.nonce,
            block=chain.latest,
            transaction="0x" + "e1" * 32,
            to=OTHER_RECIPIENT,
            value=SETTINGS.price_atomic,
        )
    if setup == "rpc_error":
        chain.fail = 500
    second = post(stack, payment.body, payment.headers)

    assert second.status_code == 503
    assert second.json()["error"]["code"] == "settlement_unconfirmed"
    assert claim_of(payment.headers)["claimState"] == "pending"
    assert jobs_paid_by(payment.payer) == []
    if setup != "rpc_error":
        assert [method for method, _ in chain.calls][:3] == [
            "eth_chainId",
            "eth_getBlockByNumber",
            "eth_call",
        ]


def test_settled_payment_without_job_is_resumed(stack, fake, monkeypatch):
    """Settled, then the job write failed: the retry writes the job without settling again."""
    body = montage_body(fake, username="settled-no-job")
    headers = sdk_payment(stack, body, 1)
    payer, _ = payment_of(headers)
    original = JobStore.create_job
    failures = iter([True])

    def create_job_once_failing(self: JobStore, *args: Any, **kwargs: Any) -> None:
        if next(failures, False):
            raise ServiceUnavailable("simulated DynamoDB outage after settlement")
        original(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "create_job", create_job_once_failing)

    first = post(stack, body, headers)

    assert first.status_code == 503
    claim = claim_of(headers)
    assert claim["claimState"] == "settled"
    assert "jobId" not in claim
    assert claim["settlement"]["success"] is True
    assert jobs_paid_by(payer) == []

    retry = post(stack, body, headers)

    assert retry.status_code == 202, retry.text
    assert fake.calls == Counter({"verify": 1, "settle": 1})
    (job,) = jobs_paid_by(payer)
    assert job["payment"]["transaction"] == claim["settlement"]["transaction"]
    assert decode_json_header(retry.headers["X-PAYMENT-RESPONSE"])["transaction"] == (
        claim["settlement"]["transaction"]
    )
    assert executions_of(stack, job["jobId"]) == 1


def test_unstarted_job_started_by_retry(stack, fake, monkeypatch):
    """The job was written but its execution did not start: the retry starts it."""
    import ecliptic.submission

    real_client = ecliptic.submission.stepfunctions_client()
    failures = iter([True])

    class FailingOnce:
        def start_execution(self, **kwargs: Any) -> Any:
            if next(failures, False):
                raise ClientError(
                    {"Error": {"Code": "ServiceUnavailable", "Message": "simulated"}},
                    "StartExecution",
                )
            return real_client.start_execution(**kwargs)

    monkeypatch.setattr(ecliptic.submission, "stepfunctions_client", lambda: FailingOnce())
    body = montage_body(fake, username="unstarted")
    headers = sdk_payment(stack, body, 2)
    payer, _ = payment_of(headers)

    first = post(stack, body, headers)

    assert first.status_code == 503
    assert first.json()["error"]["code"] == "service_unavailable"
    (job,) = jobs_paid_by(payer)
    assert job["status"] == "queued"
    assert executions_of(stack, job["jobId"]) == 0
    assert claim_of(headers)["jobId"] == job["jobId"]

    retry = post(stack, body, headers)

    assert retry.status_code == 202, retry.text
    assert retry.json()["jobId"] == job["jobId"]
    assert fake.calls == Counter({"verify": 1, "settle": 1})
    assert executions_of(stack, job["jobId"]) == 1


def test_abandoned_claim_taken_over(stack, fake):
    """A claim whose request died mid-settle is settled again once its lease expired."""
    body = montage_body(fake, username="abandoned")
    headers = sdk_payment(stack, body, 2)
    payer, nonce = payment_of(headers)
    from ecliptic.submission import body_hash, parse_request

    JobStore().claim_payment(
        payer,
        nonce,
        body_hash(parse_request(json.dumps(body))),
        lease_id="dead-request",
        lease_seconds=-1,
    )

    response = post(stack, body, headers)

    assert response.status_code == 202, response.text
    # Settling again skips /verify, which fails once the first transfer is on chain.
    assert fake.calls == Counter({"settle": 1})
    assert len(jobs_paid_by(payer)) == 1


def test_claim_in_progress_conflicts(stack, fake, monkeypatch):
    """A payment another live request is settling gets 409 with Retry-After, no settle."""
    import ecliptic.submission

    monkeypatch.setattr(ecliptic.submission, "CLAIM_WAIT_SECONDS", 0.3)
    body = montage_body(fake, username="in-progress")
    headers = sdk_payment(stack, body, 2)
    payer, nonce = payment_of(headers)
    request_hash = ecliptic.submission.body_hash(
        ecliptic.submission.parse_request(json.dumps(body))
    )
    JobStore().claim_payment(
        payer, nonce, request_hash, lease_id="live-request", lease_seconds=60
    )

    response = post(stack, body, headers)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "payment_in_progress"
    assert response.headers["Retry-After"] == "2"
    assert fake.calls == Counter()
    assert claim_of(headers)["leaseId"] == "live-request"


def test_replay_after_authorization_expired(stack, fake):
    """The same payment replayed after its validBefore still returns its job, not 402."""
    body = montage_body(fake, username="late-replay")
    challenge = post(stack, body).json()
    challenge["accepts"][0]["maxTimeoutSeconds"] = 2  # validBefore = now + 2 s
    headers = dict([LocalPayer().payment_header(challenge, version=1)])
    first = post(stack, body, headers)
    assert first.status_code == 202, first.text

    time.sleep(2.2)
    replay = post(stack, body, headers)
    fresh = dict([LocalPayer().payment_header(challenge, version=1, now=int(time.time()) - 3)])
    expired = post(stack, body, fresh)

    assert replay.status_code == 202
    assert replay.json()["jobId"] == first.json()["jobId"]
    assert expired.status_code == 402
    assert expired.json()["reason"] == "expired"
    assert fake.calls["settle"] == 1


# ----- CDP authentication -----------------------------------------------------------------


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ed25519_secret() -> tuple[str, Any]:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed + public).decode(), key.public_key()


def es256_secret() -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


def check_jwt(token: str, public_key: Any, algorithm: str, uri: str) -> dict[str, Any]:
    """Verify a JWT's signature with `public_key` and return its claims."""
    encoded_header, encoded_claims, encoded_signature = token.split(".")
    signing_input = f"{encoded_header}.{encoded_claims}".encode()
    signature = _b64url_decode(encoded_signature)
    if algorithm == "EdDSA":
        public_key.verify(signature, signing_input)
    else:
        assert len(signature) == 64
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        public_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))

    header = json.loads(_b64url_decode(encoded_header))
    claims = json.loads(_b64url_decode(encoded_claims))
    assert header["alg"] == algorithm
    assert header["kid"] == "organizations/o/apiKeys/k"
    assert header["typ"] == "JWT"
    assert len(header["nonce"]) == 32
    assert claims["sub"] == "organizations/o/apiKeys/k"
    assert claims["iss"] == "cdp"
    assert abs(claims["nbf"] - time.time()) < 5
    assert claims["exp"] == claims["nbf"] + 120
    assert claims["uris"] == [uri]
    return claims


@pytest.mark.parametrize(
    ("make_secret", "algorithm"), [(ed25519_secret, "EdDSA"), (es256_secret, "ES256")]
)
def test_cdp_jwt_signature_and_claims(make_secret, algorithm):
    secret, public_key = make_secret()
    auth = CdpAuth(
        credentials_from_json({"keyId": "organizations/o/apiKeys/k", "keySecret": secret})
    )

    header = auth("post", "https://api.cdp.coinbase.com/platform/v2/x402/settle?x=1")

    assert header["Authorization"].startswith("Bearer ")
    check_jwt(
        header["Authorization"].removeprefix("Bearer "),
        public_key,
        algorithm,
        "POST api.cdp.coinbase.com/platform/v2/x402/settle",
    )
    other = auth("POST", "https://api.cdp.coinbase.com/platform/v2/x402/settle")
    assert other != header, "each request gets a fresh JWT nonce"


def test_cdp_key_file_names_and_escaped_newlines():
    """CDP's key file names (`id`/`name`, `privateKey`) and escaped newlines are accepted."""
    pem, _ = es256_secret()
    credentials = credentials_from_json(
        json.dumps({"name": "key-1", "privateKey": pem.replace("\n", "\\n")})
    )

    assert credentials.key_id == "key-1"
    assert load_private_key(credentials.key_secret.get_secret_value())[1] == "ES256"
    assert "BEGIN" not in repr(credentials)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"keySecret": "x"}, id="missing-key-id"),
        pytest.param({"keyId": "k"}, id="missing-secret"),
        pytest.param({"keyId": "k", "keySecret": base64.b64encode(b"\0" * 32).decode()},
                     id="ed25519-32-bytes"),
        pytest.param({"keyId": "k", "keySecret": base64.b64encode(b"\1" * 64).decode()},
                     id="ed25519-public-half-mismatch"),
        pytest.param({"keyId": "k", "keySecret": "not base64 at all"}, id="garbage"),
        pytest.param({"keyId": "k", "keySecret": "-----BEGIN EC PRIVATE KEY-----\nAA==\n"
                      "-----END EC PRIVATE KEY-----"}, id="broken-pem"),
        pytest.param(["keyId", "k"], id="not-an-object"),
    ],
)  # fmt: skip
def test_cdp_credentials_rejected(value):
    with pytest.raises(CdpCredentialsError):
        CdpAuth(credentials_from_json(value))


def test_cdp_p384_key_rejected():
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(CdpCredentialsError, match="P-256"):
        load_private_key(pem)


def test_facilitator_calls_carry_cdp_jwt_from_secret(stack, fake):
    """With a credentials secret, each facilitator call carries a JWT for its own URL."""
    secret, public_key = ed25519_secret()
    arn = boto3.client("secretsmanager").create_secret(
        Name=f"ecliptic-cdp-{time.monotonic_ns()}",
        SecretString=json.dumps({"keyId": "organizations/o/apiKeys/k", "keySecret": secret}),
    )["ARN"]
    body = montage_body(fake, username="cdp-auth")
    headers = sdk_payment(stack, body, 2)

    with settings_env(facilitator_credentials_secret_arn=arn):
        response = post(stack, body, headers)

    assert response.status_code == 202, response.text
    host = fake.base.removeprefix("http://")
    for endpoint, request_headers, _ in fake.requests:
        token = request_headers["Authorization"].removeprefix("Bearer ")
        check_jwt(token, public_key, "EdDSA", f"POST {host}{FACILITATOR_PATH}/{endpoint}")
    assert [endpoint for endpoint, _, _ in fake.requests] == ["verify", "settle"]


def test_unreadable_credentials_fail_before_claim(stack, fake):
    """A missing credentials secret gets 503 before the payment is claimed or sent."""
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:absent-AbCdEf"
    body = montage_body(fake, username="no-credentials")
    headers = sdk_payment(stack, body, 2)

    with settings_env(facilitator_credentials_secret_arn=missing):
        response = post(stack, body, headers)

    assert response.status_code == 503
    assert fake.calls == Counter()
    assert claim_of(headers) is None


def test_cdp_credentials_from_ssm(stack):
    """An SSM SecureString parameter works as the credentials source too."""
    secret, _ = ed25519_secret()
    boto3.client("ssm").put_parameter(
        Name="/ecliptic/cdp-key",
        Type="SecureString",
        Value=json.dumps({"id": "key-2", "privateKey": secret}),
        Overwrite=True,
    )

    auth = auth_from_source("/ecliptic/cdp-key")

    assert auth.key_id == "key-2"
    assert auth.algorithm == "EdDSA"


# ----- offline mode and the example client ----------------------------------------------


def test_offline_mode_refused_in_deployed_function(monkeypatch):
    offline = Settings(facilitator_mode="offline")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ecliptic-api")
    monkeypatch.delenv("AWS_SAM_LOCAL", raising=False)
    with pytest.raises(ServiceUnavailable):
        facilitator_from_settings(offline)

    monkeypatch.setenv("AWS_SAM_LOCAL", "true")
    assert isinstance(facilitator_from_settings(offline), OfflineFacilitator)


@pytest.mark.parametrize("version", [1, 2])
def test_example_pays_and_submits(stack, fake, capsys, version):
    """examples/pay_and_submit.py works against the local stack as `ecliptic serve` runs it."""
    spec = importlib.util.spec_from_file_location(
        "pay_and_submit", REPO_ROOT / "examples" / "pay_and_submit.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [
        "--api", stack.url,
        "--audio", fake.media_url("song.mp3"),
        "--video", fake.media_url("clip.mp4"),
        "--x402-version", str(version),
    ]  # fmt: skip

    with settings_env(facilitator_mode="offline"):
        exit_code = example.main(argv)

    assert exit_code == 0
    # The API handler's JSON log lines share stdout with the example's output.
    output = capsys.readouterr().out
    result, _ = json.JSONDecoder().raw_decode(output, output.index('{\n  "payer"'))
    assert result["job"]["jobId"].startswith("job_")
    assert result["settlement"]["success"] is True
    assert result["settlement"]["network"].startswith("offline:")
    assert fake.calls == Counter(), "the offline facilitator makes no network call"
