"""The media bucket client: R2 settings, the requests it sends, multipart writes and keys."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from moto import mock_aws

from ecliptic.aws import media_client, reset_clients
from ecliptic.errors import TransientStepError
from ecliptic.storage import (
    MIN_PART_SIZE,
    MediaStore,
    asset_object_key,
    upload_object_key,
    write_stream,
)

R2_ENDPOINT = "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"


class _EmptyBody:
    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield b""


def _capture_requests(client: Any) -> list[AWSPreparedRequest]:
    """Record every request of `client` and return an empty 200 in place of sending it."""
    seen: list[AWSPreparedRequest] = []

    def before_send(request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse:
        seen.append(request)
        return AWSResponse(request.url, 200, {"ETag": '"0"'}, _EmptyBody())

    client.meta.events.register("before-send.s3", before_send)
    return seen


def _send_uploads(client: Any) -> None:
    client.put_object(Bucket="media", Key="a", Body=b"x" * 100)
    client.put_object(Bucket="media", Key="b", Body=io.BytesIO(b"x" * 100))
    client.upload_part(Bucket="media", Key="c", UploadId="u", PartNumber=1, Body=b"y" * 100)


@pytest.fixture
def r2_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The service's media client, configured for R2 as the template configures it."""
    monkeypatch.setenv("ECLIPTIC_R2_ENDPOINT_URL", R2_ENDPOINT)
    monkeypatch.setenv("ECLIPTIC_R2_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("ECLIPTIC_R2_SECRET_ACCESS_KEY", "test-secret")
    reset_clients()
    yield media_client()
    reset_clients()


def test_r2_client_checksums_when_required(r2_client) -> None:
    """The R2 client computes and validates checksums only when an operation requires it."""
    config = r2_client.meta.config

    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.signature_version == "s3v4"
    assert r2_client.meta.region_name == "auto"
    assert r2_client.meta.endpoint_url == R2_ENDPOINT


def test_r2_uploads_send_plain_bodies(r2_client) -> None:
    """PUT and UploadPart carry no aws-chunked encoding or CRC32 trailer, which R2 rejects."""
    seen = _capture_requests(r2_client)

    _send_uploads(r2_client)

    assert len(seen) == 3
    for request in seen:
        headers = {name.lower(): value for name, value in request.headers.items()}
        assert b"aws-chunked" not in headers.get("content-encoding", b"")
        assert "x-amz-trailer" not in headers
        assert not any(name.startswith("x-amz-checksum") for name in headers)
        assert "x-amz-sdk-checksum-algorithm" not in headers
        assert not headers["x-amz-content-sha256"].startswith(b"STREAMING")
        assert urlsplit(request.url).hostname == urlsplit(R2_ENDPOINT).hostname


def test_default_boto3_config_would_send_trailers() -> None:
    """Control: without the R2 settings boto3 streams with a CRC32 trailer (so the check bites)."""
    client = boto3.client(
        "s3", endpoint_url=R2_ENDPOINT, region_name="auto", aws_access_key_id="a",
        aws_secret_access_key="b", config=Config(signature_version="s3v4"),
    )
    seen = _capture_requests(client)

    _send_uploads(client)

    assert all(request.headers.get("X-Amz-Trailer") for request in seen)


def test_presigned_put_signs_type_and_length(r2_client) -> None:
    """An upload URL only accepts the Content-Type and Content-Length it was made for."""
    store = MediaStore("media")

    url = store.presigned_put_url(
        "uploads/vid_x/clip.mp4", content_type="video/mp4", content_length=1234,
        expires_in=600,
    )

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.scheme == "https"
    assert parts.hostname == urlsplit(R2_ENDPOINT).hostname
    assert parts.path == "/media/uploads/vid_x/clip.mp4"
    assert query["X-Amz-SignedHeaders"] == ["content-length;content-type;host"]
    assert query["X-Amz-Expires"] == ["600"]


# ----- multipart writes on moto ---------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[MediaStore]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "ECLIPTIC_MEDIA_BUCKET": "storage-test",
        "ECLIPTIC_R2_ENDPOINT_URL": "", "ECLIPTIC_R2_CREDENTIALS_SECRET_ARN": "",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        reset_clients()
        media = MediaStore()
        media.client.create_bucket(Bucket="storage-test")
        yield media
    reset_clients()


class _PartRecorder:
    def __init__(self, client: Any, fail_at: int | None = None) -> None:
        self._client = client
        self.sizes: list[int] = []
        self.fail_at = fail_at

    def upload_part(self, **kwargs: Any) -> Any:
        if self.fail_at is not None and kwargs["PartNumber"] == self.fail_at:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "UploadPart")
        self.sizes.append(len(kwargs["Body"]))
        return self._client.upload_part(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_multipart_parts_equal_size(store) -> None:
    """Uneven writes still produce parts of exactly `part_size` bytes, the last one shorter."""
    recorder = _PartRecorder(store.client)
    store.client = recorder  # type: ignore[assignment]
    data = bytes(range(256)) * (3 * MIN_PART_SIZE // 256 + 1000)

    with store.open_multipart("assets/x/big.bin", "video/mp4", part_size=MIN_PART_SIZE) as writer:
        for start in range(0, len(data), 777_777):
            writer.write(data[start : start + 777_777])
        size = writer.close()

    assert size == len(data)
    assert recorder.sizes == [MIN_PART_SIZE] * 3 + [len(data) - 3 * MIN_PART_SIZE]
    stored = store.client.get_object(Bucket=store.bucket, Key="assets/x/big.bin")
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "video/mp4"


def test_small_object_single_put(store) -> None:
    recorder = _PartRecorder(store.client)
    store.client = recorder  # type: ignore[assignment]

    size = write_stream(store, "assets/x/small.mp3", "audio/mpeg", io.BytesIO(b"ID3" + bytes(99)))

    assert size == 102
    assert recorder.sizes == []
    assert store.head("assets/x/small.mp3")["ContentLength"] == 102


def test_failed_part_aborts_upload(store) -> None:
    """A storage error becomes TransientStepError and leaves no object or open upload."""
    store.client = _PartRecorder(store.client, fail_at=2)  # type: ignore[assignment]

    with pytest.raises(TransientStepError), store.open_multipart(
        "assets/x/broken.bin", "video/mp4", part_size=MIN_PART_SIZE
    ) as writer:
        writer.write(bytes(3 * MIN_PART_SIZE))

    assert store.head("assets/x/broken.bin") is None
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
    assert uploads.get("Uploads", []) == []


def test_part_size_below_r2_minimum_rejected(store) -> None:
    with pytest.raises(ValueError, match="at least"):
        store.open_multipart("assets/x/a.bin", "video/mp4", part_size=MIN_PART_SIZE - 1)


def test_stream_and_delete(store) -> None:
    store.put_bytes("uploads/vid_x/a.mp4", b"abc", "video/mp4")

    assert store.open_stream("uploads/vid_x/a.mp4").read() == b"abc"
    store.delete("uploads/vid_x/a.mp4")
    assert store.open_stream("uploads/vid_x/a.mp4") is None
    assert store.head("uploads/vid_x/a.mp4") is None


@pytest.mark.parametrize(
    ("filename", "asset_key", "upload_key"),
    [
        ("Café ☕ clip.MP4", "assets/vid_1/cafe-clip.mp4", "uploads/vid_1/cafe-clip.mp4"),
        ("song", "assets/vid_1/song", "uploads/vid_1/song"),
        (None, "assets/vid_1/source", "uploads/vid_1/source"),
        ("../../etc/passwd", "assets/vid_1/source.etc-pass", "uploads/vid_1/source.etc-pass"),
    ],
)
def test_object_keys(filename, asset_key, upload_key) -> None:
    """Keys are ASCII slugs under the asset's folder, whatever the client's file name."""
    assert asset_object_key("vid_1", filename) == asset_key
    assert upload_object_key("vid_1", filename) == upload_key
