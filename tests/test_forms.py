"""Multipart `POST /montages` bodies, as API Gateway delivers them (payload 2.0, base64)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from ecliptic.aws import reset_clients
from ecliptic.config import Settings
from ecliptic.errors import InvalidRequest, MediaRejected, PayloadTooLarge
from ecliptic.forms import (
    FormFile,
    clean_filename,
    form_body_hash,
    is_multipart,
    parse_montage_form,
    parse_multipart,
    request_body,
    stage_form_files,
)
from ecliptic.models import Asset, AssetState, MediaKind

CHROME_BOUNDARY = "----WebKitFormBoundaryx8ZmT6cQ3oYn7QbS"
FIREFOX_BOUNDARY = "---------------------------31063722920652287541934327021"
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
SETTINGS = Settings()
# The module-scoped stack loads the API handler (which filters this warning) only once.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

Part = tuple[str, bytes]  # (Content-Disposition parameters and other headers, body)


def text_part(name: str, value: str) -> Part:
    return f'Content-Disposition: form-data; name="{name}"', value.encode()


def file_part(name: str, filename_params: str, content_type: str | None, data: bytes) -> Part:
    """A file part; `filename_params` is written as the browser would, e.g. `filename="a.mp4"`."""
    headers = f"Content-Disposition: form-data; name=\"{name}\"; {filename_params}"
    if content_type is not None:
        headers += f"\r\nContent-Type: {content_type}"
    return headers, data


def form_body(parts: list[Part], boundary: str = CHROME_BOUNDARY) -> bytes:
    """Join parts exactly as browsers do: CRLF line ends, header text in UTF-8."""
    body = b""
    for headers, data in parts:
        body += f"--{boundary}\r\n".encode() + headers.encode("utf-8") + b"\r\n\r\n"
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def api_event(body: bytes, boundary: str = CHROME_BOUNDARY) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event with the body base64-encoded."""
    return {
        "version": "2.0",
        "routeKey": "POST /montages",
        "rawPath": "/montages",
        "rawQueryString": "",
        "headers": {
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(len(body)),
            "host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36",
        },
        "requestContext": {
            "http": {"method": "POST", "path": "/montages", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10"},
            "routeKey": "POST /montages",
            "stage": "$default",
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


def parse_event(event: dict[str, Any]):
    return parse_montage_form(request_body(event), event["headers"]["content-type"], SETTINGS)


# ----- browser-style bodies -------------------------------------------------------------


def test_browser_form_with_files_and_descriptors(corpus) -> None:
    """A Chrome body with real media, Unicode names, repeated `videos` and JSON descriptors."""
    song = Path(corpus("bear-id3v2-apic-cover.mp3")).read_bytes()
    bear = Path(corpus("bear-odd-161x121-vp9-noaudio.webm")).read_bytes()
    slowmo = Path(corpus("android-slowmo-vfr-gap-noaudio.mp4")).read_bytes()
    body = form_body([
        file_part("audio", "filename*=UTF-8''%E2%99%AA%20bear%20song.mp3", "audio/mpeg", song),
        file_part("videos", 'filename="Café ☕ bear.webm"', "video/webm", bear),
        text_part("videos", json.dumps({"url": "https://cdn.example.com/clip-2.mp4"})),
        file_part("videos", 'filename="slow motion.mp4"', "video/mp4", slowmo),
        text_part("videos", '{"assetId": "vid_0123456789abcdefghij"}'),
        text_part("prompt", "Rêverie au lever du soleil 🌅"),
        text_part("username", "zoë"),
        text_part("format", "square"),
        text_part("durationSeconds", "12.5"),
        text_part("callbackUrl", "https://hooks.example.com/montage"),
    ])

    form = parse_event(api_event(body))

    request = form.request
    assert request.prompt == "Rêverie au lever du soleil 🌅"
    assert request.username == "zoë"
    assert request.format == "square"
    assert request.durationSeconds == 12.5
    assert request.callbackUrl == "https://hooks.example.com/montage"
    assert request.audio.url is None
    assert request.audio.assetId is None
    assert request.audio.filename == "♪ bear song.mp3"
    assert request.audio.contentType == "audio/mpeg"
    assert [video.filename for video in request.videos] == [
        "Café ☕ bear.webm", None, "slow motion.mp4", None
    ]
    assert request.videos[1].url == "https://cdn.example.com/clip-2.mp4"
    assert request.videos[3].assetId == "vid_0123456789abcdefghij"
    assert [(item.field, item.kind, item.index) for item in form.files] == [
        ("audio", MediaKind.AUDIO, None),
        ("videos[0]", MediaKind.VIDEO, 0),
        ("videos[2]", MediaKind.VIDEO, 2),
    ]
    assert [item.data for item in form.files] == [song, bear, slowmo]
    assert form.files[1].sha256 == hashlib.sha256(bear).hexdigest()


def test_binary_bytes_near_boundary_preserved() -> None:
    """File bytes that look like line ends or a partial boundary come through unchanged."""
    tricky = (
        MP4_HEAD + b"\r\n--" + CHROME_BOUNDARY[:-1].encode() + b"\r\n\r\n"
        + b"--" + CHROME_BOUNDARY.encode() + b"X" + bytes(range(256)) + b"\r\n"
    )
    body = form_body([
        file_part("audio", 'filename="a.m4a"', "audio/mp4", MP4_HEAD + bytes(300)),
        file_part("videos", 'filename="tricky.mp4"', "video/mp4", tricky),
    ])

    form = parse_event(api_event(body))

    assert form.files[1].data == tricky


def test_firefox_body_with_preamble() -> None:
    """A preamble before the first boundary and a Firefox boundary are accepted."""
    body = b"ignored preamble\r\n" + form_body(
        [
            file_part("audio", 'filename="song.mp3"', "audio/mpeg", b"ID3\x04" + bytes(600)),
            file_part("videos", 'filename="clip.mov"', "video/quicktime", MP4_HEAD + bytes(600)),
        ],
        FIREFOX_BOUNDARY,
    )

    form = parse_event(api_event(body, FIREFOX_BOUNDARY))

    assert [item.filename for item in form.files] == ["song.mp3", "clip.mov"]


def test_requests_library_body() -> None:
    """A body encoded by urllib3 (what `requests` sends) parses the same way."""
    from urllib3 import encode_multipart_formdata

    body, content_type = encode_multipart_formdata([
        ("audio", ("chanson d'été.mp3", b"ID3\x04" + bytes(600), "audio/mpeg")),
        ("videos", ("clip one.mp4", MP4_HEAD + bytes(600), "video/mp4")),
        ("videos", ("clip two.webm", b"\x1a\x45\xdf\xa3" + bytes(600), "video/webm")),
        ("prompt", "fast cuts"),
    ])

    form = parse_montage_form(body, content_type, SETTINGS)

    assert [item.filename for item in form.files] == [
        "chanson d'été.mp3", "clip one.mp4", "clip two.webm"
    ]
    assert form.request.prompt == "fast cuts"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ('filename="clip.mp4"', "clip.mp4"),
        ('filename="Café ☕.mp4"', "Café ☕.mp4"),
        ("filename*=UTF-8''%E2%98%95%20clip.mp4; filename=\"fallback.mp4\"", "☕ clip.mp4"),
        ("filename=\"fallback.mp4\"; filename*=utf-8'en'na%C3%AFve.mp4", "naïve.mp4"),
        ("filename*=ISO-8859-1''caf%E9.mp4", "café.mp4"),
        ('filename="C:\\Users\\me\\Videos\\clip.mp4"', "clip.mp4"),
        ('filename="my %22best%22 clip.mp4"', 'my "best" clip.mp4'),
        ('filename="say \\"hi\\".mp4"', 'say "hi".mp4'),
        ('filename="../../etc/clip.mp4"', "clip.mp4"),
        ('filename="Cafe\u0301.mp4"', "Café.mp4"),
        ('filename="tab\there.mp4"', "tabhere.mp4"),
    ],
    ids=["ascii", "utf8-raw", "rfc8187", "rfc8187-after", "latin1", "windows-path", "pct22",
         "backslash-quote", "dot-dot", "nfd", "control-char"],
)
def test_filename_spellings(params: str, expected: str) -> None:
    """Browser, RFC 8187 and legacy file name spellings decode to one plain name."""
    body = form_body([file_part("videos", params, "video/mp4", MP4_HEAD + bytes(600))])

    parts = parse_multipart(body, f"multipart/form-data; boundary={CHROME_BOUNDARY}",
                            max_parts=10)

    assert clean_filename(parts[0].filename or "") == expected


def test_long_filename_keeps_extension() -> None:
    name = clean_filename("x" * 400 + ".webm")
    assert len(name) == 255
    assert name.endswith(".webm")


def test_empty_file_input_skipped() -> None:
    """An empty file input (filename="" and no bytes) counts as not sent."""
    body = form_body([
        text_part("audio", '{"url": "https://cdn.example.com/song.mp3"}'),
        file_part("videos", 'filename=""', "application/octet-stream", b""),
        text_part("videos", '{"url": "https://cdn.example.com/clip.mp4"}'),
        text_part("prompt", ""),
    ])

    form = parse_event(api_event(body))

    assert form.files == []
    assert [video.url for video in form.request.videos] == ["https://cdn.example.com/clip.mp4"]
    assert form.request.prompt is None


def test_descriptor_array_in_one_field() -> None:
    body = form_body([
        text_part("audio", '{"assetId": "aud_0123456789abcdefghij"}'),
        text_part("videos", '[{"url": "https://a.example/1.mp4"}, {"url": "https://a.example/2.mp4"}]'),
        file_part("videos[]", 'filename="3.mp4"', "video/mp4", MP4_HEAD + bytes(600)),
    ])

    form = parse_event(api_event(body))

    assert len(form.request.videos) == 3
    assert form.files[0].field == "videos[2]"


# ----- rejected bodies ------------------------------------------------------------------

_AUDIO = file_part("audio", 'filename="song.mp3"', "audio/mpeg", b"ID3\x04" + bytes(600))
_VIDEO = file_part("videos", 'filename="clip.mp4"', "video/mp4", MP4_HEAD + bytes(600))

REJECTED = [
    ("unknown-field", [_AUDIO, _VIDEO, text_part("callback", "x")], InvalidRequest, "callback",
     "Unknown form field"),
    ("audio-twice", [_AUDIO, _AUDIO, _VIDEO], InvalidRequest, "audio", "once"),
    ("prompt-twice", [_AUDIO, _VIDEO, text_part("prompt", "a"), text_part("prompt", "b")],
     InvalidRequest, "prompt", "once"),
    ("bad-descriptor", [_AUDIO, text_part("videos", "https://a.example/clip.mp4")],
     InvalidRequest, "videos[0]", "JSON media descriptor"),
    ("descriptor-both-sources",
     [_AUDIO, text_part("videos", '{"url": "https://a.example/c.mp4", "assetId": "vid_x"}')],
     InvalidRequest, "videos[0]", "exactly one"),
    ("descriptor-http-scheme", [_AUDIO, text_part("videos", '{"url": "ftp://a.example/c.mp4"}')],
     InvalidRequest, "videos[0].url", "https://"),
    ("no-videos", [_AUDIO], InvalidRequest, "videos", "Field required"),
    ("prompt-too-long", [_AUDIO, _VIDEO, text_part("prompt", "x" * 1001)], InvalidRequest,
     "prompt", "at most 1000"),
    ("bad-format", [_AUDIO, _VIDEO, text_part("format", "vertical")], InvalidRequest, "format",
     "Input should be"),
    ("file-as-prompt", [_AUDIO, _VIDEO, file_part("prompt", 'filename="p.txt"', "text/plain",
                                                  b"hi")], InvalidRequest, "prompt", "text"),
    ("text-file-as-clip", [_AUDIO, file_part("videos", 'filename="notes.txt"', "text/plain",
                                             b"hello")], MediaRejected, "videos[0]",
     "not audio or video"),
    ("html-as-clip", [_AUDIO, file_part("videos", 'filename="clip.mp4"', "video/mp4",
                                        b"<!DOCTYPE html><html>" + b" " * 600)],
     MediaRejected, "videos[0]", "web page"),
    ("audio-as-clip", [_AUDIO, file_part("videos", 'filename="song.mp3"', "audio/mpeg",
                                         b"ID3\x04" + bytes(600))], MediaRejected, "videos[0]",
     "audio type"),
    ("unknown-extension", [_AUDIO, file_part("videos", 'filename="clip.bin"',
                                             "application/octet-stream", MP4_HEAD)],
     MediaRejected, "videos[0]", "no video extension"),
    ("empty-file", [_AUDIO, file_part("videos", 'filename="clip.mp4"', "video/mp4", b"")],
     MediaRejected, "videos[0]", "empty"),
    ("png-as-audio", [file_part("audio", 'filename="cover.mp3"', "audio/mpeg",
                                b"\x89PNG\r\n\x1a\n" + bytes(600)), _VIDEO], MediaRejected,
     "audio", "PNG image"),
]


@pytest.mark.parametrize(
    ("parts", "error_class", "field", "words"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_form_rejected(parts, error_class, field, words) -> None:
    """Each bad form gets its own error class, the field at fault and a readable reason."""
    with pytest.raises(error_class, match=words) as caught:
        parse_event(api_event(form_body(parts)))

    assert caught.value.status == 400
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (form_body([_AUDIO, _VIDEO])[:-20], None, "closing boundary"),
        (b"no boundary here", None, "does not contain its boundary"),
        (form_body([("Content-Type: text/plain", b"x")]), None, "Content-Disposition"),
        (form_body([("Content-Disposition: form-data", b"x")]), None, "name="),
        (form_body([_AUDIO]), "multipart/form-data", "boundary"),
        (form_body([_AUDIO]), "multipart/form-data; boundary=" + "b" * 71, "boundary"),
        (form_body([_AUDIO]), "multipart/mixed; boundary=" + CHROME_BOUNDARY, "form-data"),
        (form_body([_VIDEO] * 41), None, "more than 40 parts"),
        (form_body([("Content-Disposition: form-data; name=\"prompt\"\r\nbroken", b"x")]), None,
         "malformed header"),
    ],
    ids=["cut-off", "no-boundary", "no-disposition", "no-name", "missing-boundary-param",
         "long-boundary", "not-form-data", "too-many-parts", "bad-header-line"],
)
def test_malformed_multipart_rejected(body: bytes, content_type: str | None, words: str) -> None:
    content_type = content_type or f"multipart/form-data; boundary={CHROME_BOUNDARY}"
    with pytest.raises(InvalidRequest, match=words):
        parse_montage_form(body, content_type, SETTINGS)


def test_invalid_utf8_text_rejected() -> None:
    body = form_body([_AUDIO, _VIDEO, ('Content-Disposition: form-data; name="prompt"',
                                      b"\xff\xfe bad")])
    with pytest.raises(InvalidRequest, match="UTF-8") as caught:
        parse_event(api_event(body))
    assert caught.value.field == "prompt"


# ----- the event body -------------------------------------------------------------------


def test_request_body_decodes_base64_and_text() -> None:
    raw = bytes(range(256))
    assert request_body({"body": base64.b64encode(raw).decode(), "isBase64Encoded": True}) == raw
    assert request_body({"body": '{"a": "é"}', "isBase64Encoded": False}) == '{"a": "é"}'.encode()
    assert request_body({}) == b""


def test_request_body_over_limit_is_413() -> None:
    """A body over the Lambda payload budget gets 413 pointing to URLs and uploads."""
    event = api_event(bytes(5_000_000))

    with pytest.raises(PayloadTooLarge) as caught:
        request_body(event, max_bytes=4_500_000)

    assert caught.value.status == 413
    assert caught.value.code == "payload_too_large"
    assert "POST /uploads" in caught.value.message
    assert "URL" in caught.value.message


def test_request_body_bad_base64() -> None:
    with pytest.raises(InvalidRequest, match="base64"):
        request_body({"body": "not*base64", "isBase64Encoded": True})


def test_is_multipart() -> None:
    assert is_multipart(f"Multipart/Form-Data; boundary={CHROME_BOUNDARY}")
    assert not is_multipart("application/json")
    assert not is_multipart(None)


def test_body_hash_covers_file_bytes() -> None:
    """Two forms that differ only in a file's bytes hash differently (payment replay check)."""

    def files(data: bytes) -> list[FormFile]:
        return [FormFile("videos[0]", MediaKind.VIDEO, 0, "a.mp4", "video/mp4", data,
                         hashlib.sha256(data).hexdigest())]

    assert form_body_hash("abc", []) == "abc"
    assert form_body_hash("abc", files(b"1")) != form_body_hash("abc", files(b"2"))
    assert form_body_hash("abc", files(b"1")) == form_body_hash("abc", files(b"1"))


# ----- staging the files ----------------------------------------------------------------


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "ECLIPTIC_MEDIA_BUCKET": "forms-test",
        "ECLIPTIC_R2_ENDPOINT_URL": "", "ECLIPTIC_R2_CREDENTIALS_SECRET_ARN": "",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        reset_clients()
        from ecliptic.storage import MediaStore

        store = MediaStore()
        store.client.create_bucket(Bucket="forms-test")
        yield store
    reset_clients()


def test_stage_form_files_marks_assets_staged(bucket) -> None:
    """After payment, each file lands at its new asset's key and the asset is staged."""
    body = form_body([
        _AUDIO,
        text_part("videos", '{"url": "https://cdn.example.com/clip.mp4"}'),
        _VIDEO,
    ])
    form = parse_event(api_event(body))
    assets = [
        Asset(assetId=asset_id, kind=kind, key=f"assets/{asset_id}/file",
              createdAt="2026-01-01T00:00:00.000Z")
        for asset_id, kind in [("aud_a", MediaKind.AUDIO), ("vid_b", MediaKind.VIDEO),
                               ("vid_c", MediaKind.VIDEO)]
    ]

    stage_form_files(form.files, "aud_a", ["vid_b", "vid_c"], assets, bucket)

    audio, url_clip, file_clip = assets
    assert audio.state == AssetState.STAGED
    assert url_clip.state == AssetState.PENDING
    assert file_clip.state == AssetState.STAGED
    assert file_clip.sha256 == form.files[1].sha256
    assert file_clip.size == len(form.files[1].data)
    stored = bucket.client.get_object(Bucket=bucket.bucket, Key="assets/vid_c/file")
    assert stored["Body"].read() == form.files[1].data
    assert stored["ContentType"] == "video/mp4"


# ----- through the API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    """One local stack for the module's API tests."""
    from ecliptic.local.cli import LocalStack

    with LocalStack(output_max_side=320) as running:
        yield running


def test_oversize_body_gets_413_from_api(stack) -> None:
    """The API function returns 413 in the error shape for a body over the payload budget."""
    import requests

    body = form_body([_AUDIO, file_part("videos", 'filename="big.mp4"', "video/mp4",
                                        MP4_HEAD + bytes(4_600_000))])

    response = requests.post(
        f"{stack.url}/montages", data=body, timeout=30,
        headers={"Content-Type": f"multipart/form-data; boundary={CHROME_BOUNDARY}"},
    )

    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "POST /uploads" in error["message"]


def _post_paid_form(api_url: str, body: bytes, content_type: str) -> dict[str, Any]:
    import requests

    from ecliptic.x402.client import LocalPayer
    from ecliptic.x402.encoding import decode_json_header

    url = f"{api_url}/montages"
    challenge = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert challenge.status_code == 402, challenge.text
    requirements = decode_json_header(challenge.headers["PAYMENT-REQUIRED"])
    name, value = LocalPayer().payment_header(requirements, version=2)
    accepted = requests.post(
        url, data=body, headers={"Content-Type": content_type, name: value}, timeout=60
    )
    assert accepted.status_code == 202, accepted.text
    return accepted.json()


@pytest.mark.slow
def test_multipart_job_succeeds(stack, small_media) -> None:
    """A paid multipart job with uploaded files renders without fetching anything."""
    import requests
    from urllib3 import encode_multipart_formdata

    from ecliptic.local.cli import wait_for_job

    song = small_media["song"].read_bytes()
    clip = small_media["wide"].read_bytes()
    body, content_type = encode_multipart_formdata([
        ("audio", ("beat ♪.mp3", song, "audio/mpeg")),
        ("videos", ("wide clip.mp4", clip, "video/mp4")),
        ("username", "form-user"),
    ])

    accepted = _post_paid_form(stack.url, body, content_type)
    job = wait_for_job(stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "succeeded", job.get("error")
    video = requests.get(f"{stack.url}/assets/{accepted['videoAssetIds'][0]}", timeout=10).json()
    assert video["state"] == "staged"
    assert video["filename"] == "wide clip.mp4"
    assert video["sha256"] == hashlib.sha256(clip).hexdigest()
    assert video["probe"]["hasVideo"] is True
