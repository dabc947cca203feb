"""Signed webhooks: signatures, delivery with retries, URL checks, and the state machine path.

Receivers are HTTP(S) servers this module starts on 127.0.0.1. Hostile callback URLs
resolve, through a patched `getaddrinfo`, to the documentation address 192.0.2.10, and a
recorder fails the test if any socket tries to connect there.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import trustme

from ecliptic.config import Settings
from ecliptic.errors import InvalidRequest, NotFound
from ecliptic.jobs import JobStore, utc_now
from ecliptic.local.cli import LocalStack, submit_paid, wait_for_job
from ecliptic.local.runtime import LocalRuntime
from ecliptic.models import Job, JobStatus
from ecliptic.outcome import report_outcome
from ecliptic.webhooks import (
    check_callback_url,
    deliver,
    load_secret,
    sign,
    signature_header,
    verify_signature,
    webhook_limits,
)

SECRET = b"test-webhook-secret"
# The key the local runtime signs with, as the README documents it.
LOCAL_SECRET = b"local-webhook-secret"
FORBIDDEN_ADDRESS = "192.0.2.10"
PAYLOAD = {"event": "job.succeeded", "job": {"jobId": "job_test", "status": "succeeded"}}


# ----- receivers and recorders ----------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A webhook receiver on 127.0.0.1 that responds with queued statuses, then 200."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        delay: float = 0.0,
        drip_seconds: float = 0.0,
        tls: Any = None,
    ) -> None:
        self.received: list[Received] = []
        self.statuses = list(statuses or [])
        self.delay = delay
        self.drip_seconds = drip_seconds
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.time())
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay)
                if receiver.drip_seconds:
                    self._drip(receiver.drip_seconds)
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _drip(self, seconds: float) -> None:
                # One byte of a never-ending header every 0.1 s: no single wait times out.
                deadline = time.monotonic() + seconds
                with contextlib.suppress(OSError):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while time.monotonic() < deadline:
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        time.sleep(0.1)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str = "/hooks/ecliptic") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class FakeDns:
    """Addresses for chosen host names, and the lookups made for them."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """Resolve the names in `answers` to their addresses; other names resolve as usual."""
    dns = FakeDns()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in dns.answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        dns.lookups.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in dns.answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_loopback_urls": True,
        "webhook_timeout_seconds": 2.0,
        "webhook_attempts": 3,
        "webhook_backoff_seconds": 0.01,
        "webhook_secret": "test-secret",
    }
    values.update(overrides)
    return Settings(**values)


def _deliver(url: str, settings: Settings | None = None, **overrides: Any) -> Any:
    settings = settings or _settings()
    options: dict[str, Any] = {
        "limits": webhook_limits(settings),
        "attempts": settings.webhook_attempts,
        "backoff_seconds": settings.webhook_backoff_seconds,
    }
    options.update(overrides)
    return deliver(url, PAYLOAD, SECRET, **options)


# ----- signatures -----------------------------------------------------------------------


def test_sign_known_vector() -> None:
    """The signature is HMAC-SHA256 over "<timestamp>." + body, in lowercase hex (openssl dgst)."""
    body = b'{"event":"job.succeeded"}'

    signature = sign(b"whsec", 1796414400, body)

    assert signature == hmac.new(b"whsec", b"1796414400." + body, hashlib.sha256).hexdigest()
    assert signature == "571e852e6c84195a50c1920a4868ec326c9e96a678b41725eee4f868dec4ccde"


def test_signature_header_format() -> None:
    """The header is `t=<timestamp>,v1=<hex>`."""
    header = signature_header(SECRET, 1796414400, b"{}")

    assert header == f"t=1796414400,v1={sign(SECRET, 1796414400, b'{}')}"


NOW = 1796414400


@pytest.mark.parametrize(
    ("header", "body", "secret", "expected"),
    [
        (signature_header(SECRET, NOW, b"{}"), b"{}", SECRET, True),
        (signature_header(SECRET, NOW - 299, b"{}"), b"{}", SECRET, True),
        (signature_header(SECRET, NOW, b"{}"), b"{}", b"other-secret", False),
        (signature_header(SECRET, NOW, b"{}"), b'{"x":1}', SECRET, False),
        (signature_header(SECRET, NOW - 301, b"{}"), b"{}", SECRET, False),
        (signature_header(SECRET, NOW + 301, b"{}"), b"{}", SECRET, False),
        (f"t={NOW}", b"{}", SECRET, False),
        (f"v1={sign(SECRET, NOW, b'{}')}", b"{}", SECRET, False),
        ("garbage", b"{}", SECRET, False),
        (f"t={NOW},v1=00,v1={sign(SECRET, NOW, b'{}')}", b"{}", SECRET, True),
    ],
    ids=[
        "valid", "within-tolerance", "wrong-secret", "tampered-body", "too-old",
        "too-far-ahead", "no-signature", "no-timestamp", "malformed", "second-v1-valid",
    ],
)  # fmt: skip
def test_verify_signature(header: str, body: bytes, secret: bytes, expected: bool) -> None:
    """verify_signature accepts only a matching, recent signature."""
    assert verify_signature(secret, header, body, now=NOW) is expected


def test_load_secret_prefers_environment_value() -> None:
    """A secret set directly in the settings is used as UTF-8 bytes."""
    assert load_secret(Settings(webhook_secret="s3cret")) == b"s3cret"


def test_load_secret_reads_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """With only an ARN, the secret string is read through Powertools, whitespace stripped."""
    from aws_lambda_powertools.utilities import parameters

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:webhook-AbCdEf"
    requested: list[str] = []

    def get_secret(name: str, **kwargs: Any) -> str:
        requested.append(name)
        return "from-secrets-manager\n"

    monkeypatch.setattr(parameters, "get_secret", get_secret)

    assert load_secret(Settings(webhook_secret_arn=arn)) == b"from-secrets-manager"
    assert requested == [arn]


def test_load_secret_unreadable_or_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configured or readable secret gives None, so nothing unsigned is ever sent."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    def get_secret(name: str, **kwargs: Any) -> str:
        raise GetParameterError("AccessDeniedException")

    monkeypatch.setattr(parameters, "get_secret", get_secret)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:webhook-AbCdEf"

    assert load_secret(Settings()) is None
    assert load_secret(Settings(webhook_secret_arn=arn)) is None


# ----- delivery -------------------------------------------------------------------------


def test_deliver_retries_after_500(connections: list[tuple[str, int]]) -> None:
    """A 500 is retried, the retry is signed again, and a 200 ends the delivery."""
    with Receiver([500]) as receiver:
        result = _deliver(receiver.url())

    assert result.delivered
    assert result.attempts == 2
    assert len(receiver.received) == 2
    for request in receiver.received:
        assert request.path == "/hooks/ecliptic"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Ecliptic-Event"] == "job.succeeded"
        assert request.headers["User-Agent"].startswith("ecliptic-webhook/")
        signature = request.headers["Ecliptic-Signature"]
        assert signature.startswith(f"t={request.headers['Ecliptic-Timestamp']},v1=")
        assert verify_signature(SECRET, signature, request.body)
        assert json.loads(request.body) == PAYLOAD
    assert {address for address, _ in connections} == {"127.0.0.1"}


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
def test_deliver_stops_on_client_error(status: int) -> None:
    """4xx other than 408/429, and redirects, end the delivery after one attempt."""
    with Receiver([status]) as receiver:
        result = _deliver(receiver.url())

    assert result.outcome == "rejected"
    assert result.status == status
    assert len(receiver.received) == 1
    assert receiver.received[0].path == "/hooks/ecliptic"


@pytest.mark.parametrize("status", [408, 429, 502, 503])
def test_deliver_gives_up_after_attempts(status: int) -> None:
    """Retryable statuses are retried `attempts` times with growing delays, then given up."""
    settings = _settings(webhook_attempts=3, webhook_backoff_seconds=0.1)
    with Receiver([status] * 5) as receiver:
        result = _deliver(receiver.url(), settings)

    assert result.outcome == "failed"
    assert result.attempts == 3
    assert result.status == status
    times = [request.at for request in receiver.received]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1
    assert times[2] - times[1] >= 0.2


def test_deliver_retries_connection_errors() -> None:
    """A refused connection is retried, then reported as failed without raising."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` any more.
    result = _deliver(f"http://127.0.0.1:{port}/hook")

    assert result.outcome == "failed"
    assert result.attempts == 3
    assert result.status is None


def test_deliver_attempt_times_out() -> None:
    """A receiver slower than the timeout counts as a failed attempt."""
    settings = _settings(webhook_timeout_seconds=0.3, webhook_attempts=2)
    started = time.monotonic()
    with Receiver(delay=1.0) as receiver:
        result = _deliver(receiver.url(), settings)
        elapsed = time.monotonic() - started

    assert result.outcome == "failed"
    assert len(receiver.received) == 2
    assert elapsed < 1.8


def test_deliver_attempt_bounded_against_slow_drip() -> None:
    """A receiver that trickles its response byte by byte is cut off at the timeout."""
    settings = _settings(webhook_timeout_seconds=0.5, webhook_attempts=1)
    started = time.monotonic()
    with Receiver(drip_seconds=3.0) as receiver:
        result = _deliver(receiver.url(), settings)
        elapsed = time.monotonic() - started

    assert result.outcome == "failed"
    assert elapsed < 1.5


def test_deliver_stops_at_deadline() -> None:
    """No retry starts when it could not finish before the deadline."""
    settings = _settings(webhook_attempts=5, webhook_backoff_seconds=0.5)
    with Receiver([500] * 5) as receiver:
        result = _deliver(receiver.url(), settings, deadline=time.monotonic() + 1.0)

    assert result.outcome == "failed"
    assert result.attempts == 1
    assert len(receiver.received) == 1


def test_deliver_resolves_host_once(
    connections: list[tuple[str, int]], fake_dns: FakeDns
) -> None:
    """All attempts go to the address checked first: a later DNS answer is never used."""
    fake_dns.answers["hooks.test"] = ["127.0.0.1"]
    with Receiver([500, 500]) as receiver:
        result = _deliver(f"http://hooks.test:{receiver.port}/hook")

    assert result.delivered
    assert result.attempts == 3
    assert fake_dns.lookups == ["hooks.test"]
    assert receiver.received[0].headers["Host"] == f"hooks.test:{receiver.port}"


def test_deliver_https_checks_certificate(
    tmp_path: Any, fake_dns: FakeDns
) -> None:
    """HTTPS goes to the checked address with SNI and certificate checks for the host name."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    fake_dns.answers["hooks.test"] = ["127.0.0.1"]
    fake_dns.answers["other.test"] = ["127.0.0.1"]
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_context)
    settings = _settings(fetch_ca_bundle=str(bundle), webhook_attempts=1)

    with Receiver(tls=server_context) as receiver:
        good = _deliver(f"https://hooks.test:{receiver.port}/hook", settings)
        wrong_name = _deliver(f"https://other.test:{receiver.port}/hook", settings)

    assert good.delivered
    assert wrong_name.outcome == "failed"
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("url", "allow_loopback"),
    [
        ("https://hooks.example.test/ecliptic", False),
        ("https://hooks.example.test/ecliptic", True),
        (f"https://{FORBIDDEN_ADDRESS}/ecliptic", True),
        ("http://127.0.0.1:9/ecliptic", False),
        ("https://2130706433/ecliptic", True),
        ("http://127.0.0.1:9/hoök", True),
    ],
    ids=["name-to-reserved", "name-to-reserved-local", "reserved-literal", "loopback-deployed",
         "legacy-ipv4-spelling", "non-ascii-path"],
)  # fmt: skip
def test_deliver_never_connects_to_forbidden_url(
    url: str,
    allow_loopback: bool,
    connections: list[tuple[str, int]],
    fake_dns: FakeDns,
) -> None:
    """A URL that fails the media URL rules at delivery time is never contacted."""
    fake_dns.answers["hooks.example.test"] = [FORBIDDEN_ADDRESS]

    result = _deliver(url, _settings(allow_loopback_urls=allow_loopback))

    assert result.outcome == "rejected"
    assert result.attempts == 0
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.test/ecliptic",
        f"https://{FORBIDDEN_ADDRESS}/ecliptic",
        "https://user:password@127.0.0.1/ecliptic",
        "https://2130706433/ecliptic",
        "https://[::1/ecliptic",
        "http://127.0.0.1:9/hoök",
        "http://127.0.0.1:9/a b",
    ],
    ids=["name-to-reserved", "reserved-literal", "user-info", "legacy-ipv4", "malformed",
         "non-ascii-path", "space-in-path"],
)
def test_check_callback_url_rejects(
    url: str, connections: list[tuple[str, int]], fake_dns: FakeDns
) -> None:
    """The submission check raises a 400 that names `callbackUrl`, without connecting."""
    fake_dns.answers["hooks.example.test"] = [FORBIDDEN_ADDRESS]

    with pytest.raises(InvalidRequest) as raised:
        check_callback_url(url, _settings())

    assert raised.value.field == "callbackUrl"
    assert raised.value.status == 400
    assert connections == []


def test_check_callback_url_accepts_public_and_none(fake_dns: FakeDns) -> None:
    """A public https URL and a missing URL pass."""
    fake_dns.answers["hooks.example.test"] = ["93.184.215.14"]

    check_callback_url("https://hooks.example.test/ecliptic", _settings())
    check_callback_url(None, _settings())


def test_check_callback_url_needs_a_secret(fake_dns: FakeDns) -> None:
    """Without a signing secret no callback could be sent, so the API rejects the URL."""
    fake_dns.answers["hooks.example.test"] = ["93.184.215.14"]

    with pytest.raises(InvalidRequest, match="no webhook signing secret") as raised:
        check_callback_url("https://hooks.example.test/ecliptic", _settings(webhook_secret=None))

    assert raised.value.field == "callbackUrl"


# ----- reporting the outcome ------------------------------------------------------------


def _write_job(job_id: str, status: JobStatus, callback_url: str | None) -> None:
    now = utc_now()
    job = Job(
        jobId=job_id,
        status=status,
        createdAt=now,
        updatedAt=now,
        callbackUrl=callback_url,
        audioAssetId="aud_0123456789abcdefghij",
        videoAssetIds=["vid_0123456789abcdefghij"],
    )
    JobStore().create_job(job, [])


def test_report_outcome_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics for every job; the webhook only with a callbackUrl, a secret and a final record."""
    with LocalRuntime(), Receiver() as receiver:
        _write_job("job_00000000000000000001", JobStatus.SUCCEEDED, None)
        _write_job("job_00000000000000000002", JobStatus.SUCCEEDED, receiver.url())
        _write_job("job_00000000000000000003", JobStatus.RENDERING, receiver.url())

        plain = report_outcome("job_00000000000000000001", JobStatus.SUCCEEDED)
        delivered = report_outcome("job_00000000000000000002", JobStatus.SUCCEEDED)
        unfinished = report_outcome("job_00000000000000000003", JobStatus.FAILED)
        monkeypatch.setattr("ecliptic.outcome.load_secret", lambda settings: None)
        unsigned = report_outcome("job_00000000000000000002", JobStatus.SUCCEEDED)
        with pytest.raises(NotFound):
            report_outcome("job_00000000000000000009", JobStatus.SUCCEEDED)

    def names(report: Any) -> list[str]:
        return [point.name for point in report.metrics]

    assert plain.webhook == "not_requested"
    assert names(plain) == ["JobsSucceeded", "JobSeconds"]
    assert delivered.webhook == "delivered"
    assert names(delivered) == ["JobsSucceeded", "JobSeconds", "WebhooksDelivered"]
    assert unfinished.webhook == "skipped"
    assert names(unfinished) == ["JobsFailed", "JobSeconds", "WebhooksFailed"]
    assert unsigned.webhook == "no_secret"
    assert names(unsigned) == ["JobsSucceeded", "JobSeconds", "WebhooksFailed"]
    assert len(receiver.received) == 1
    payload = json.loads(receiver.received[0].body)
    assert payload["job"]["jobId"] == "job_00000000000000000002"
    assert payload["job"]["callbackUrl"] == receiver.url()


# ----- through the state machine --------------------------------------------------------


@pytest.fixture(scope="module")
def webhook_stack() -> Iterator[LocalStack]:
    """The local stack with short webhook backoff, shared by this module's job tests."""
    with LocalStack(
        output_max_side=320, extra_env={"ECLIPTIC_WEBHOOK_BACKOFF_SECONDS": "0.05"}
    ) as running:
        yield running


def _finished_job(stack: LocalStack, job_id: str) -> dict[str, Any]:
    job = wait_for_job(stack.url, job_id, show_progress=False)
    # The webhook goes out after the job record is final: wait for the whole execution.
    stack.runtime.wait_for_execution(job_id, timeout=120)
    return job


@pytest.mark.slow
def test_job_webhook_retried_then_delivered(webhook_stack, media_server, small_media):
    """A job with a callbackUrl POSTs its final job, signed, retrying once after a 500."""
    with Receiver([500]) as receiver:
        accepted = submit_paid(webhook_stack.url, {
            "audio": {"url": media_server.add(small_media["song"])},
            "videos": [{"url": media_server.add(small_media["wide"])}],
            "durationSeconds": 4,
            "callbackUrl": receiver.url(),
        })
        job = _finished_job(webhook_stack, accepted["jobId"])
        time.sleep(0.5)
        received = list(receiver.received)

    assert job["status"] == "succeeded", job.get("error")
    assert len(received) == 2
    for request in received:
        timestamp = int(request.headers["Ecliptic-Timestamp"])
        assert abs(timestamp - request.at) < 60
        assert verify_signature(LOCAL_SECRET, request.headers["Ecliptic-Signature"], request.body)
        assert request.headers["Ecliptic-Event"] == "job.succeeded"
    assert received[0].body == received[1].body
    payload = json.loads(received[1].body)
    assert payload["event"] == "job.succeeded"
    assert payload["job"] == job
    assert payload["job"]["output"]["videoUrl"].startswith(webhook_stack.url)
    history = webhook_stack.runtime.execution_history(job["jobId"])
    entered = [e["stateEnteredEventDetails"]["name"] for e in history
               if "stateEnteredEventDetails" in e]
    assert entered[-2:] == ["Report success", "Montage ready"]


@pytest.mark.slow
def test_failed_job_webhook(webhook_stack, media_server, small_media):
    """A job that fails POSTs `job.failed` with its error, and the execution still fails."""
    missing = media_server.add(small_media["song"]).rsplit("/", 2)[0] + "/nope/a.mp3"
    with Receiver() as receiver:
        accepted = submit_paid(webhook_stack.url, {
            "audio": {"url": missing},
            "videos": [{"url": media_server.add(small_media["wide"])}],
            "callbackUrl": receiver.url(),
        })
        job = _finished_job(webhook_stack, accepted["jobId"])
        time.sleep(0.3)
        received = list(receiver.received)

    assert job["status"] == "failed"
    assert len(received) == 1
    assert received[0].headers["Ecliptic-Event"] == "job.failed"
    assert verify_signature(LOCAL_SECRET, received[0].headers["Ecliptic-Signature"],
                            received[0].body)
    payload = json.loads(received[0].body)
    assert payload["event"] == "job.failed"
    assert payload["job"]["error"]["code"] == "media_fetch_failed"
    assert webhook_stack.runtime.wait_for_execution(job["jobId"])["status"] == "FAILED"


@pytest.mark.slow
def test_forbidden_callback_rejected_before_payment(
    webhook_stack, media_server, small_media, connections, fake_dns
):
    """A callbackUrl that resolves to a reserved address gets 400 before any payment."""
    fake_dns.answers["hooks.example.test"] = [FORBIDDEN_ADDRESS]
    body = {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [{"url": media_server.add(small_media["wide"])}],
        "callbackUrl": "https://hooks.example.test/ecliptic",
    }

    response = requests.post(f"{webhook_stack.url}/montages", json=body, timeout=30)

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "callbackUrl"
    assert "PAYMENT-REQUIRED" not in response.headers
    assert all(address == "127.0.0.1" for address, _ in connections)
