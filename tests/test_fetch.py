"""The URL fetcher: address checks, redirects, caps and timeouts, against a loopback HTTPS server.

Every test records the sockets the process tries to connect. Hostile URLs must be rejected
before any connection is made. The only server ever contacted is the test's own server on
127.0.0.1, whose certificate comes from a throwaway CA (trustme).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from moto import mock_aws

from ecliptic.aws import reset_clients
from ecliptic.errors import MediaFetchFailed, MediaRejected
from ecliptic.fetch import FetchLimits, address_allowed, check_url, fetch_to_store, parse_ip_host
from ecliptic.models import Asset, MediaKind
from ecliptic.staging import content_type_checker, head_checker
from ecliptic.storage import PART_SIZE, MediaStore

MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Clip</title></head><body>hi</body></html>\n"


# ----- name resolution ------------------------------------------------------------------


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Resolve the names put in the returned dict to their listed addresses, and no others."""
    answers: dict[str, list[str]] = {}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's DNS")
        result = []
        for address in answers[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            result.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


class NeverStore:
    """A store that fails the test when anything is written."""

    def open_multipart(self, key: str, content_type: str) -> Any:
        raise AssertionError(f"nothing may be stored, but {key} was opened")


# ----- address policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0", "10.0.0.5", "100.64.0.1", "100.100.100.200", "127.0.0.1", "127.255.0.9",
        "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.192", "192.0.2.10",
        "192.168.1.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1",
        "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "::", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",
        "::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:a9fe:a9fe::1",
        "2002:7f00:1::1", "2001::1", "2001:db8::1", "fc00::1", "fd00:ec2::254", "fe80::1",
        "fec0::1", "ff02::1", "100::1",
    ],
)
def test_address_forbidden(address: str) -> None:
    """Private, loopback, link-local, metadata, CGNAT, multicast and reserved are refused."""
    assert not address_allowed(ipaddress.ip_address(address), allow_loopback=False)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8",
     "64:ff9b::808:808", "2002:808:808::1"],
)
def test_address_public_allowed(address: str) -> None:
    """Public unicast addresses pass, including IPv4-mapped and NAT64 forms of them."""
    assert address_allowed(ipaddress.ip_address(address), allow_loopback=False)


def test_loopback_only_when_allowed() -> None:
    """`allow_loopback` opens loopback and nothing else."""
    for text in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert address_allowed(ipaddress.ip_address(text), allow_loopback=True)
    for text in ("10.0.0.1", "169.254.169.254", "64:ff9b::7f00:1", "fe80::1"):
        assert not address_allowed(ipaddress.ip_address(text), allow_loopback=True)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
    ],
)
def test_legacy_ip_spellings_parsed(host: str, expected: str) -> None:
    """Decimal, hex, octal and short IPv4 forms are read as the address they spell."""
    assert parse_ip_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.com", "cdn.example", "1.2.3.example", "xn--caf-dma.fr"])
def test_names_not_parsed_as_ip(host: str) -> None:
    assert parse_ip_host(host) is None


# ----- hostile URLs: rejected before any connection --------------------------------------

HOSTILE_URLS = [
    ("http://example.com/song.mp3", "Only https://"),
    ("ftp://example.com/song.mp3", "Only https://"),
    ("file:///etc/passwd", "Only https://"),
    ("gopher://example.com:70/", "Only https://"),
    ("https://user:secret@example.com/song.mp3", "user names"),
    ("https:///song.mp3", "no host"),
    ("https://example.com:99999/song.mp3", "malformed"),
    ("https://127.0.0.1/song.mp3", "private"),
    ("https://localhost/song.mp3", "private"),
    ("https://2130706433/song.mp3", "private"),
    ("https://0x7f.1/song.mp3", "private"),
    ("https://0177.0.0.1/song.mp3", "private"),
    ("https://127.1/song.mp3", "private"),
    ("https://0/song.mp3", "private"),
    ("https://0.0.0.0/song.mp3", "private"),
    ("https://[::1]/song.mp3", "private"),
    ("https://[::]/song.mp3", "private"),
    ("https://[::ffff:127.0.0.1]/song.mp3", "private"),
    ("https://[::ffff:7f00:1]/song.mp3", "private"),
    ("https://[0:0:0:0:0:ffff:a9fe:a9fe]/latest/meta-data/", "private"),
    ("https://169.254.169.254/latest/meta-data/", "private"),
    ("https://169.254.43518/latest/meta-data/", "private"),
    ("https://[fd00:ec2::254]/latest/meta-data/", "private"),
    ("https://metadata.google.internal/computeMetadata/v1/", "private"),
    ("https://100.100.100.200/latest/meta-data/", "private"),
    ("https://192.0.0.192/opc/v2/instance/", "private"),
    ("https://10.0.0.1/song.mp3", "private"),
    ("https://172.16.0.1/song.mp3", "private"),
    ("https://192.168.1.1/song.mp3", "private"),
    ("https://100.64.0.1/song.mp3", "private"),
    ("https://198.18.0.1/song.mp3", "private"),
    ("https://224.0.0.1/song.mp3", "private"),
    ("https://255.255.255.255/song.mp3", "private"),
    ("https://240.0.0.1/song.mp3", "private"),
    ("https://[fe80::1]/song.mp3", "private"),
    ("https://[fe80::1%25eth0]/song.mp3", "zone"),
    ("https://[ff02::1]/song.mp3", "private"),
    ("https://[64:ff9b::a9fe:a9fe]/song.mp3", "private"),
    ("https://[2002:a9fe:a9fe::]/song.mp3", "private"),
    ("https://[2001:db8::1]/song.mp3", "private"),
    ("https://134744072/song.mp3", "legacy form"),
    ("https://1.2.3.4.5/song.mp3", "not a valid IPv4"),
    ("https://example.123/song.mp3", "not a valid IPv4"),
    ("https://bad_host!.example/song.mp3", "not a valid host"),
    ("https://internal.example/song.mp3", "private"),
    ("https://metadata.example/song.mp3", "private"),
    ("https://mixed.example/song.mp3", "private"),
    ("https://mapped.example/song.mp3", "private"),
    ("https://cgnat.example/song.mp3", "private"),
    ("https://nxdomain.example/song.mp3", "could not be resolved"),
]


@pytest.mark.parametrize(("url", "words"), HOSTILE_URLS, ids=[url for url, _ in HOSTILE_URLS])
def test_hostile_url_rejected_without_connecting(
    url: str, words: str, connections: list, fake_dns: dict
) -> None:
    """Each hostile URL fails with a clear reason and no socket is ever connected."""
    fake_dns.update(
        {
            "localhost": ["127.0.0.1", "::1"],
            "metadata.google.internal": ["169.254.169.254"],
            "internal.example": ["10.0.0.5"],
            "metadata.example": ["169.254.169.254"],
            "mixed.example": ["93.184.215.14", "10.0.0.5"],
            "mapped.example": ["::ffff:127.0.0.1"],
            "cgnat.example": ["100.64.1.1"],
        }
    )
    limits = FetchLimits(max_bytes=1024, timeout_seconds=5)

    with pytest.raises(MediaFetchFailed, match=words):
        fetch_to_store(url, NeverStore(), "assets/x/song.mp3", limits=limits)  # type: ignore[arg-type]

    assert connections == []


def test_public_host_passes_check(connections: list, fake_dns: dict) -> None:
    """A name with only public addresses passes, pinned to the first checked address."""
    fake_dns["cdn.example"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    target = check_url("https://CDN.example/a/b.mp4?sig=1", FetchLimits(1, 1))

    assert target.address == ipaddress.ip_address("93.184.215.14")
    assert target.host == "cdn.example"
    assert target.path == "/a/b.mp4?sig=1"
    assert connections == []


def test_plain_http_loopback_only_in_local_mode(connections: list, fake_dns: dict) -> None:
    """With loopback allowed, http:// still reaches loopback only."""
    fake_dns["public.example"] = ["93.184.215.14"]
    local = FetchLimits(1, 1, allow_loopback=True)

    assert check_url("http://127.0.0.1:8000/a.mp3", local).scheme == "http"
    with pytest.raises(MediaFetchFailed, match="only for local test servers"):
        check_url("http://public.example/a.mp3", local)
    with pytest.raises(MediaFetchFailed, match="private"):
        check_url("https://10.0.0.1/a.mp3", local)
    assert connections == []


# ----- a loopback HTTPS server ----------------------------------------------------------


@dataclass
class Served:
    """What the test server saw: requests per path."""

    paths: list[str] = field(default_factory=list)


class HTTPSMediaServer:
    """HTTPS on 127.0.0.1 with routes given as functions of the request handler."""

    def __init__(self, ca: trustme.CA) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.served = Served()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.served.paths.append(self.path)
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                # The fetcher hangs up early on purpose in the cap and timeout tests.
                with contextlib.suppress(OSError):
                    route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        cert = ca.issue_cert("127.0.0.1", "localhost")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_context)
        self.httpd.socket = server_context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[HTTPSMediaServer]:
    running = HTTPSMediaServer(ca)
    running.start()
    yield running
    running.stop()


def _limits(ca_bundle: str, **overrides: Any) -> FetchLimits:
    values: dict[str, Any] = {
        "max_bytes": 64 * 1024 * 1024,
        "timeout_seconds": 10.0,
        "read_timeout_seconds": 5.0,
        "allow_loopback": True,
        "ca_bundle": ca_bundle,
    }
    values.update(overrides)
    return FetchLimits(**values)


def _send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    content_type: str = "video/mp4",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _redirect(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def _asset(kind: MediaKind = MediaKind.VIDEO, filename: str | None = None) -> Asset:
    return Asset(assetId="vid_test", kind=kind, key="assets/vid_test/clip.mp4",
                 filename=filename, createdAt="2026-01-01T00:00:00.000Z")


# ----- a media bucket in moto -----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_bucket() -> Iterator[str]:
    """One moto S3 bucket for the module; creating clients costs more than the tests."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "ECLIPTIC_MEDIA_BUCKET": "fetch-test-media",
            "ECLIPTIC_R2_ENDPOINT_URL": "", "ECLIPTIC_R2_CREDENTIALS_SECRET_ARN": "",
        }.items():
            patch.setenv(name, value)
        with mock_aws():
            reset_clients()
            MediaStore().client.create_bucket(Bucket="fetch-test-media")
            yield "fetch-test-media"
    reset_clients()


@pytest.fixture
def bucket(moto_bucket: str) -> Iterator[MediaStore]:
    """The module's bucket, emptied after each test."""
    store = MediaStore(moto_bucket)
    client = store.client
    yield store
    for item in client.list_objects_v2(Bucket=moto_bucket).get("Contents", []):
        client.delete_object(Bucket=moto_bucket, Key=item["Key"])


class RecordingClient:
    """Wraps an S3 client and records the body size of every `upload_part`."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.part_sizes: list[int] = []

    def upload_part(self, **kwargs: Any) -> Any:
        self.part_sizes.append(len(kwargs["Body"]))
        return self._client.upload_part(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class SinkClient:
    """Stands in for R2 when measuring memory: records part sizes and keeps no bytes.

    moto keeps every part in memory and joins them on completion, which would hide the
    fetcher's own footprint.
    """

    def __init__(self) -> None:
        self.part_sizes: list[int] = []
        self.digest = hashlib.sha256()
        self.completed = False

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, str]:
        return {"UploadId": "sink"}

    def upload_part(self, **kwargs: Any) -> dict[str, str]:
        self.part_sizes.append(len(kwargs["Body"]))
        self.digest.update(kwargs["Body"])
        return {"ETag": f'"{len(self.part_sizes)}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.completed = True
        return {}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a multi-part file must not be sent in one PUT")


class SinkStore(MediaStore):
    def __init__(self) -> None:
        self.bucket = "sink"
        self.client = SinkClient()  # type: ignore[assignment]


BLOCK = hashlib.sha256(b"block").digest() * (1024 * 1024 // 32)  # 1 MiB of fixed bytes


def _stream_route(total: int) -> Callable[[BaseHTTPRequestHandler], None]:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        handler.wfile.write(MP4_HEAD)
        sent = len(MP4_HEAD)
        while sent < total:
            piece = BLOCK[: min(len(BLOCK), total - sent)]
            handler.wfile.write(piece)
            sent += len(piece)

    return route


def _stream_digest(total: int) -> str:
    digest = hashlib.sha256(MP4_HEAD)
    sent = len(MP4_HEAD)
    while sent < total:
        piece = BLOCK[: min(len(BLOCK), total - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


# ----- fetching over HTTPS --------------------------------------------------------------


def test_small_file_fetched_with_sha256(server, ca_bundle, bucket, connections) -> None:
    """A file under one part is stored with one PUT and its sha256 and type recorded."""
    body = MP4_HEAD + bytes(range(256)) * 40
    server.routes["/clip.mp4"] = lambda handler: _send(handler, body)

    result = fetch_to_store(
        f"{server.url}/clip.mp4", bucket, "assets/vid_test/clip.mp4",
        limits=_limits(ca_bundle),
        content_type_check=content_type_checker(_asset()),
        head_check=head_checker("The video URL returned"),
    )

    assert result.size == len(body)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.content_type == "video/mp4"
    stored = bucket.client.get_object(Bucket=bucket.bucket, Key="assets/vid_test/clip.mp4")
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "video/mp4"
    assert {address for address, _ in connections} == {"127.0.0.1"}


def test_untrusted_certificate_rejected(server, bucket, connections) -> None:
    """Without the test CA the server's certificate does not verify."""
    server.routes["/clip.mp4"] = lambda handler: _send(handler, MP4_HEAD * 10)
    limits = FetchLimits(max_bytes=1024, timeout_seconds=5, allow_loopback=True)

    with pytest.raises(MediaFetchFailed, match="certificate"):
        fetch_to_store(f"{server.url}/clip.mp4", bucket, "assets/x/clip.mp4", limits=limits)


def test_large_file_streamed_in_equal_parts(server, ca_bundle, bucket, connections) -> None:
    """40 MB arrive as 8 MiB parts (the last one shorter) and the object matches byte for byte."""
    total = 40_000_000
    server.routes["/big.mp4"] = _stream_route(total)
    recorder = RecordingClient(bucket.client)
    bucket.client = recorder  # type: ignore[assignment]

    result = fetch_to_store(
        f"{server.url}/big.mp4", bucket, "assets/vid_big/big.mp4", limits=_limits(ca_bundle)
    )

    assert result.size == total
    assert result.sha256 == _stream_digest(total)
    assert recorder.part_sizes[:-1] == [PART_SIZE] * (total // PART_SIZE)
    assert 0 < recorder.part_sizes[-1] <= PART_SIZE
    assert sum(recorder.part_sizes) == total
    stored = recorder.get_object(Bucket=bucket.bucket, Key="assets/vid_big/big.mp4")["Body"]
    digest = hashlib.sha256()
    while chunk := stored.read(PART_SIZE):
        digest.update(chunk)
    assert digest.hexdigest() == result.sha256


def test_large_file_memory_bounded(server, ca_bundle, connections) -> None:
    """Streaming 40 MB peaks near two parts (the buffer and the part being sent)."""
    total = 40_000_000
    server.routes["/big.mp4"] = _stream_route(total)
    store = SinkStore()

    tracemalloc.start()
    try:
        result = fetch_to_store(
            f"{server.url}/big.mp4", store, "assets/vid_big/big.mp4", limits=_limits(ca_bundle)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.size == total
    assert store.client.digest.hexdigest() == result.sha256
    assert store.client.completed
    assert peak < 2.5 * PART_SIZE, f"peak traced memory {peak} bytes"


def test_redirect_to_metadata_rejected(server, ca_bundle, bucket, connections) -> None:
    """An allowed host that redirects to the metadata address is stopped before connecting."""
    server.routes["/clip.mp4"] = _redirect("https://169.254.169.254/latest/meta-data/")

    with pytest.raises(MediaFetchFailed, match="private"):
        fetch_to_store(f"{server.url}/clip.mp4", bucket, "assets/x/a.mp4",
                       limits=_limits(ca_bundle))

    assert [address for address, _ in connections] == ["127.0.0.1"]
    assert server.served.paths == ["/clip.mp4"]


@pytest.mark.parametrize(
    "location",
    [
        "https://internal.example/clip.mp4",
        "https://[::ffff:a9fe:a9fe]/clip.mp4",
        "https://0xa9fea9fe/clip.mp4",
        "https://10.1.2.3:8443/clip.mp4",
        "ftp://127.0.0.1/clip.mp4",
    ],
)
def test_redirect_to_forbidden_host_rejected(
    location, server, ca_bundle, bucket, connections, fake_dns
) -> None:
    """Every hop is checked again: names, mapped and legacy spellings, other schemes."""
    fake_dns["internal.example"] = ["10.0.0.5"]
    server.routes["/start"] = _redirect(location)

    with pytest.raises(MediaFetchFailed):
        fetch_to_store(f"{server.url}/start", bucket, "assets/x/a.mp4", limits=_limits(ca_bundle))

    assert [address for address, _ in connections] == ["127.0.0.1"]


def test_redirects_capped(server, ca_bundle, bucket, connections) -> None:
    """Three redirects are followed; a fourth is refused."""
    body = MP4_HEAD * 4
    server.routes["/clip.mp4"] = lambda handler: _send(handler, body)
    for hop in range(4):
        target = "/clip.mp4" if hop == 0 else f"/hop{hop - 1}"
        server.routes[f"/hop{hop}"] = _redirect(f"{server.url}{target}")

    result = fetch_to_store(f"{server.url}/hop2", bucket, "assets/x/a.mp4",
                            limits=_limits(ca_bundle))
    assert result.size == len(body)
    assert result.final_url == f"{server.url}/clip.mp4"

    with pytest.raises(MediaFetchFailed, match="redirected more than 3 times"):
        fetch_to_store(f"{server.url}/hop3", bucket, "assets/x/b.mp4",
                       limits=_limits(ca_bundle))


def test_slow_server_timed_out(server, ca_bundle, bucket, connections) -> None:
    """A server that trickles bytes under the read timeout is still cut at the total time."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(MP4_HEAD)
        handler.wfile.flush()
        while not server.release.wait(0.05):
            handler.wfile.write(b"x")
            handler.wfile.flush()

    server.routes["/slow.mp4"] = trickle
    limits = _limits(ca_bundle, timeout_seconds=1.0, read_timeout_seconds=0.5)

    started = time.monotonic()
    with pytest.raises(MediaFetchFailed, match="took longer than 1 s"):
        fetch_to_store(f"{server.url}/slow.mp4", bucket, "assets/x/a.mp4", limits=limits)
    elapsed = time.monotonic() - started

    assert 0.9 < elapsed < 3.0
    assert bucket.client.list_objects_v2(Bucket=bucket.bucket).get("KeyCount") == 0


def test_trickled_headers_timed_out(server, ca_bundle, bucket, connections) -> None:
    """The deadline covers the response headers too, not only the body."""

    def slow_headers(handler: BaseHTTPRequestHandler) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 1000:
            if server.release.wait(0.05):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    server.routes["/slow-headers.mp4"] = slow_headers
    limits = _limits(ca_bundle, timeout_seconds=1.0, read_timeout_seconds=0.5)

    started = time.monotonic()
    with pytest.raises(MediaFetchFailed, match="took longer than"):
        fetch_to_store(f"{server.url}/slow-headers.mp4", bucket, "assets/x/a.mp4",
                       limits=limits)
    assert time.monotonic() - started < 3.0


def test_stalled_server_read_timeout(server, ca_bundle, bucket, connections) -> None:
    """A server that goes quiet trips the read timeout."""

    def stall(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(MP4_HEAD)
        handler.wfile.flush()
        server.release.wait(10)

    server.routes["/stall.mp4"] = stall
    limits = _limits(ca_bundle, timeout_seconds=10.0, read_timeout_seconds=0.5)

    with pytest.raises(MediaFetchFailed, match="sent nothing for 0.5 s"):
        fetch_to_store(f"{server.url}/stall.mp4", bucket, "assets/x/a.mp4", limits=limits)


def test_declared_oversize_stopped_before_body(server, ca_bundle, bucket, connections) -> None:
    """A Content-Length over the cap is refused before any byte is stored."""

    def huge(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(10 * 1024 * 1024 * 1024))
        handler.end_headers()
        server.release.wait(10)

    server.routes["/huge.mp4"] = huge

    with pytest.raises(MediaRejected, match="10737418240 bytes, more than the 1048576"):
        fetch_to_store(f"{server.url}/huge.mp4", NeverStore(), "assets/x/a.mp4",  # type: ignore[arg-type]
                       limits=_limits(ca_bundle, max_bytes=1024 * 1024))


def test_undeclared_oversize_stopped_at_cap(server, ca_bundle, connections) -> None:
    """A chunked response with no length is cut at the cap and its upload aborted."""

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = MP4_HEAD + BLOCK[:65536]
        while not server.release.is_set():
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    server.routes["/endless.mp4"] = endless
    store = SinkStore()
    cap = 6 * 1024 * 1024

    with pytest.raises(MediaRejected, match=f"larger than the {cap} bytes"):
        fetch_to_store(f"{server.url}/endless.mp4", store, "assets/x/a.mp4",
                       limits=_limits(ca_bundle, max_bytes=cap))

    assert sum(store.client.part_sizes) <= cap
    assert not store.client.completed


def test_http_error_reported(server, ca_bundle, bucket, connections) -> None:
    with pytest.raises(MediaFetchFailed, match="HTTP 404"):
        fetch_to_store(f"{server.url}/missing.mp4?token=secret", bucket, "assets/x/a.mp4",
                       limits=_limits(ca_bundle))


def test_secret_query_kept_out_of_messages(server, ca_bundle, bucket, connections) -> None:
    with pytest.raises(MediaFetchFailed) as caught:
        fetch_to_store(f"{server.url}/missing.mp4?token=secret", bucket, "assets/x/a.mp4",
                       limits=_limits(ca_bundle))
    assert "secret" not in caught.value.message


@pytest.mark.parametrize(
    ("content_type", "body", "words"),
    [
        ("text/html; charset=utf-8", HTML_PAGE, "not audio or video"),
        ("application/json", b'{"error": "login required"}', "not audio or video"),
        ("video/mp4", HTML_PAGE, "web page"),
        ("application/octet-stream", b"%PDF-1.7\n" + bytes(600), "PDF"),
        ("audio/mpeg", MP4_HEAD * 20, "audio type"),
    ],
    ids=["html-page", "json", "html-as-mp4", "pdf-as-octet-stream", "audio-as-clip"],
)
def test_wrong_content_rejected(
    content_type, body, words, server, ca_bundle, bucket, connections
) -> None:
    """Declared type, file name and first bytes must all fit a video clip."""
    server.routes["/clip.mp4"] = lambda handler: _send(handler, body, content_type)

    with pytest.raises(MediaRejected, match=words):
        fetch_to_store(
            f"{server.url}/clip.mp4", bucket, "assets/x/clip.mp4",
            limits=_limits(ca_bundle),
            content_type_check=content_type_checker(_asset()),
            head_check=head_checker("The video URL returned"),
        )

    assert bucket.client.list_objects_v2(Bucket=bucket.bucket).get("KeyCount") == 0


def test_generic_type_accepted_by_extension(server, ca_bundle, bucket, connections) -> None:
    """application/octet-stream passes when the final URL names a media file."""
    body = MP4_HEAD * 30
    server.routes["/download/clip.mov"] = lambda handler: _send(
        handler, body, "application/octet-stream"
    )
    server.routes["/d"] = _redirect("/download/clip.mov")

    result = fetch_to_store(
        f"{server.url}/d", bucket, "assets/x/clip.mov", limits=_limits(ca_bundle),
        content_type_check=content_type_checker(_asset()),
    )

    assert result.content_type == "application/octet-stream"


def test_truncated_body_reported(server, ca_bundle, bucket, connections) -> None:
    """A server that closes before Content-Length bytes arrive does not yield a short file."""

    def truncated(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", "5000")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(MP4_HEAD * 10)
        handler.wfile.flush()
        handler.close_connection = True

    server.routes["/cut.mp4"] = truncated

    with pytest.raises(MediaFetchFailed, match="closed the connection"):
        fetch_to_store(f"{server.url}/cut.mp4", bucket, "assets/x/a.mp4",
                       limits=_limits(ca_bundle))

    assert bucket.client.list_objects_v2(Bucket=bucket.bucket).get("KeyCount") == 0


def test_compressed_response_rejected(server, ca_bundle, bucket, connections) -> None:
    server.routes["/clip.mp4"] = lambda handler: _send(
        handler, b"\x1f\x8b" + bytes(100), headers={"Content-Encoding": "gzip"}
    )

    with pytest.raises(MediaRejected, match="Content-Encoding"):
        fetch_to_store(f"{server.url}/clip.mp4", bucket, "assets/x/a.mp4",
                       limits=_limits(ca_bundle))


# ----- errors on the job ----------------------------------------------------------------


@pytest.fixture
def https_stack(ca_bundle: str) -> Iterator[Any]:
    """The local stack, trusting the test CA for media URLs."""
    from ecliptic.local.cli import LocalStack

    stack = LocalStack(output_max_side=320)
    stack.runtime.extra_env["ECLIPTIC_FETCH_CA_BUNDLE"] = ca_bundle
    with stack:
        yield stack


def test_fetch_errors_reported_on_job(https_stack, server, corpus) -> None:
    """A 404 and a web page served as media fail their jobs with readable errors."""
    import requests

    from ecliptic.local.cli import submit_paid, wait_for_job

    clip = Path(corpus("bear-odd-161x121-vp9-noaudio.webm")).read_bytes()
    server.routes["/clip.webm"] = lambda handler: _send(handler, clip, "video/webm")
    server.routes["/page.mp3"] = lambda handler: _send(handler, HTML_PAGE, "audio/mpeg")
    cases = [("/missing.mp3", "media_fetch_failed", "HTTP 404"),
             ("/page.mp3", "media_rejected", "web page")]

    for path, code, words in cases:
        accepted = submit_paid(https_stack.url, {
            "audio": {"url": f"{server.url}{path}"},
            "videos": [{"url": f"{server.url}/clip.webm"}],
        })
        job = wait_for_job(https_stack.url, accepted["jobId"], show_progress=False)

        assert job["status"] == "failed"
        assert job["error"]["code"] == code
        assert words in job["error"]["message"]
        asset = requests.get(
            f"{https_stack.url}/assets/{accepted['audioAssetId']}", timeout=10
        ).json()
        assert asset["state"] == "failed"
        assert asset["error"]["code"] == code
