"""Presigned uploads and the asset view, through the local API server.

Locally the upload URL points at the local server's `PUT /files/<key>`, because moto cannot
take a presigned PUT, and this process signs it. In AWS it is an R2 presigned URL, which
`tests/test_storage.py` checks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from ecliptic.errors import AssetNotUsable, InvalidRequest, MediaRejected
from ecliptic.jobs import JobStore
from ecliptic.models import AssetState
from ecliptic.staging import stage_asset
from ecliptic.storage import MediaStore, upload_object_key
from ecliptic.uploads import check_upload_received, local_upload_url, parse_upload_request

MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
# The module-scoped stack loads the API handler (which filters this warning) only once.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    """One local stack for the module; every test makes its own assets."""
    from ecliptic.local.cli import LocalStack

    with LocalStack(output_max_side=320) as running:
        yield running


def _new_upload(api_url: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "video", "filename": "clip.mp4", "contentType": "video/mp4", "size": 1000}
    body.update(fields)
    response = requests.post(f"{api_url}/uploads", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def _put(ticket: dict[str, Any], data: bytes, **header_overrides: str) -> requests.Response:
    headers = dict(ticket["headers"])
    headers.update(header_overrides)
    return requests.request(
        ticket["method"], ticket["uploadUrl"], data=data, headers=headers, timeout=30
    )


def _asset(api_url: str, asset_id: str) -> dict[str, Any]:
    response = requests.get(f"{api_url}/assets/{asset_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# ----- request validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", None),
        (b"[1, 2]", None),
        (b"{not json", None),
        (b'{"filename": "a.mp4", "size": 1}', "kind"),
        (b'{"kind": "image", "filename": "a.mp4", "size": 1}', "kind"),
        (b'{"kind": "video", "filename": "a.mp4", "size": 0}', "size"),
        (b'{"kind": "video", "filename": "a.mp4"}', "size"),
        (b'{"kind": "video", "filename": "dir/a.mp4", "size": 1}', "filename"),
        (b'{"kind": "video", "filename": "", "size": 1}', "filename"),
        (b'{"kind": "video", "filename": "a.mp4", "size": 1, "url": "x"}', "url"),
    ],
)
def test_upload_request_validated(body: bytes, field: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_upload_request(body)
    assert caught.value.field == field


# ----- POST /uploads ---------------------------------------------------------------------


def test_upload_ticket_shape(stack) -> None:
    """The ticket names a pending asset and a local PUT URL with its signed headers."""
    started = time.time()

    ticket = _new_upload(stack.url, filename="Café clip.mov", contentType=None, size=1234)

    assert ticket["assetId"].startswith("vid_")
    assert ticket["method"] == "PUT"
    assert ticket["headers"] == {"Content-Type": "video/quicktime"}
    assert ticket["maxBytes"] == 500 * 1024 * 1024
    url = urlsplit(ticket["uploadUrl"])
    assert f"{url.scheme}://{url.netloc}" == stack.url
    assert url.path == f"/files/uploads/{ticket['assetId']}/cafe-clip.mov"
    expires = datetime.fromisoformat(ticket["expiresAt"].replace("Z", "+00:00")).timestamp()
    assert 3599 <= expires - started <= 3601
    asset = _asset(stack.url, ticket["assetId"])
    assert asset["state"] == "pending"
    assert asset["uploadReceived"] is False
    assert asset["filename"] == "Café clip.mov"


@pytest.mark.parametrize(
    ("fields", "status", "code", "field"),
    [
        ({"size": 500 * 1024 * 1024 + 1}, 400, "invalid_request", "size"),
        ({"kind": "audio", "filename": "song.mp3", "contentType": "audio/mpeg",
          "size": 100 * 1024 * 1024 + 1}, 400, "invalid_request", "size"),
        ({"contentType": "text/html"}, 400, "media_rejected", "contentType"),
        ({"contentType": "audio/mpeg"}, 400, "media_rejected", "contentType"),
        ({"filename": "notes.txt", "contentType": None}, 400, "media_rejected", "contentType"),
    ],
    ids=["video-too-big", "audio-too-big", "html", "audio-as-video", "text-file"],
)
def test_upload_ticket_refused(stack, fields, status, code, field) -> None:
    body = {"kind": "video", "filename": "clip.mp4", "contentType": "video/mp4", "size": 10}
    body.update(fields)

    response = requests.post(f"{stack.url}/uploads", json=body, timeout=10)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


# ----- PUT and staging -------------------------------------------------------------------


def test_upload_staged_with_sha256(stack, corpus) -> None:
    """PUT, then the stage step checks the file, copies it to the asset key and hashes it."""
    data = Path(corpus("bear-odd-161x121-vp9-noaudio.webm")).read_bytes()
    ticket = _new_upload(stack.url, filename="bear.webm", contentType="video/webm",
                         size=len(data))

    assert _put(ticket, data).status_code == 200
    pending = _asset(stack.url, ticket["assetId"])
    assert pending["state"] == "pending"
    assert pending["uploadReceived"] is True

    staged = stage_asset("job_uploadtest000000000", ticket["assetId"])

    assert staged.state == AssetState.STAGED
    view = _asset(stack.url, ticket["assetId"])
    assert view["state"] == "staged"
    assert view["size"] == len(data)
    assert view["sha256"] == hashlib.sha256(data).hexdigest()
    assert view["contentType"] == "video/webm"
    assert "uploadReceived" not in view
    store = MediaStore()
    assert store.head(upload_object_key(ticket["assetId"], "bear.webm")) is None
    assert store.open_stream(staged.key).read() == data
    # A second PUT to the still-valid URL cannot change the staged file.
    assert _put(ticket, b"\x00" * len(data)).status_code == 200
    assert store.open_stream(staged.key).read() == data


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("content-type", "signature does not match"),
        ("length", "exactly"),
        ("signature", "signature does not match"),
        ("expired", "expired"),
        ("other-key", "signature does not match"),
    ],
)
def test_local_put_rejected(stack, change: str, words: str) -> None:
    """The local PUT accepts only the signed key, type and length, before the expiry."""
    ticket = _new_upload(stack.url, size=1000)
    data = MP4_HEAD + bytes(1000 - len(MP4_HEAD))
    url = ticket["uploadUrl"]
    headers: dict[str, str] = {}
    if change == "content-type":
        headers["Content-Type"] = "video/webm"
    elif change == "length":
        data += b"extra"
    elif change == "signature":
        url = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    elif change == "expired":
        key = urlsplit(url).path.removeprefix("/files/")
        url = local_upload_url(f"{stack.url}/files", key, "video/mp4", 1000, int(time.time()) - 1)
    elif change == "other-key":
        url = url.replace("/files/uploads/", "/files/assets/")

    response = requests.put(url, data=data, headers={**ticket["headers"], **headers}, timeout=10)

    assert response.status_code == 403
    assert words in response.json()["error"]["message"]
    assert _asset(stack.url, ticket["assetId"])["uploadReceived"] is False


def test_missing_upload_fails_staging_clearly(stack) -> None:
    """Naming an upload that never arrived fails with the fix in the message; it stays usable."""
    ticket = _new_upload(stack.url)
    asset = JobStore().get_asset(ticket["assetId"])

    with pytest.raises(AssetNotUsable, match="upload the file to uploadUrl before submitting"):
        check_upload_received(asset, field="videos[0]")
    with pytest.raises(AssetNotUsable, match="upload the file to uploadUrl before submitting"):
        stage_asset("job_uploadtest000000000", ticket["assetId"])

    assert _asset(stack.url, ticket["assetId"])["state"] == "pending"


def test_non_media_upload_rejected_at_staging(stack) -> None:
    """An HTML page uploaded as video/mp4 fails staging and the asset records why."""
    page = b"<!DOCTYPE html><html><body>" + b"x" * 600 + b"</body></html>"
    ticket = _new_upload(stack.url, size=len(page))
    assert _put(ticket, page).status_code == 200

    with pytest.raises(MediaRejected, match="web page"):
        stage_asset("job_uploadtest000000000", ticket["assetId"])

    view = _asset(stack.url, ticket["assetId"])
    assert view["state"] == "failed"
    assert view["error"]["code"] == "media_rejected"


def test_oversize_upload_rejected_at_staging(stack, monkeypatch) -> None:
    """Staging checks the stored size against the cap even if the URL let more through."""
    from ecliptic.config import get_settings

    ticket = _new_upload(stack.url, size=4000)
    assert _put(ticket, MP4_HEAD + bytes(4000 - len(MP4_HEAD))).status_code == 200
    monkeypatch.setenv("ECLIPTIC_MAX_VIDEO_BYTES", "3000")
    get_settings.cache_clear()
    try:
        with pytest.raises(MediaRejected, match="4000 bytes, more than the 3000"):
            stage_asset("job_uploadtest000000000", ticket["assetId"])
    finally:
        monkeypatch.delenv("ECLIPTIC_MAX_VIDEO_BYTES")
        get_settings.cache_clear()


# ----- GET /assets/{assetId} ------------------------------------------------------------


@pytest.mark.parametrize(
    "asset_id", ["vid_0123456789abcdefghij", "nope", "job_0123456789abcdefghij"]
)
def test_unknown_asset_not_found(stack, asset_id: str) -> None:
    response = requests.get(f"{stack.url}/assets/{asset_id}", timeout=10)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["error"]["field"] == "assetId"


@pytest.mark.slow
def test_asset_view_after_job(stack, media_server, small_media) -> None:
    """After a job, its assets show size, sha256 and the facts the analyze step probed."""
    from ecliptic.local.cli import submit_paid, wait_for_job

    accepted = submit_paid(stack.url, {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [{"url": media_server.add(small_media["wide"])}],
    })
    job = wait_for_job(stack.url, accepted["jobId"], show_progress=False)
    assert job["status"] == "succeeded", job.get("error")

    audio = _asset(stack.url, accepted["audioAssetId"])
    video = _asset(stack.url, accepted["videoAssetIds"][0])

    song = small_media["song"].read_bytes()
    assert audio["kind"] == "audio"
    assert audio["state"] == "staged"
    assert audio["size"] == len(song)
    assert audio["sha256"] == hashlib.sha256(song).hexdigest()
    assert audio["probe"]["hasAudio"] is True
    assert audio["probe"]["duration"] == pytest.approx(8.0, abs=0.2)
    assert video["kind"] == "video"
    assert video["probe"]["width"] == 320
    assert video["probe"]["height"] == 180


@pytest.mark.slow
def test_uploaded_assets_make_a_job(stack, small_media) -> None:
    """POST /uploads, PUT both files, then a paid job that names the asset ids succeeds."""
    from ecliptic.local.cli import submit_paid, wait_for_job

    song = small_media["song"].read_bytes()
    clip = small_media["wide"].read_bytes()
    audio = _new_upload(stack.url, kind="audio", filename="beat.mp3", contentType="audio/mpeg",
                        size=len(song))
    video = _new_upload(stack.url, filename="wide.mp4", size=len(clip))
    assert _put(audio, song).status_code == 200
    assert _put(video, clip).status_code == 200

    accepted = submit_paid(stack.url, {
        "audio": {"assetId": audio["assetId"]},
        "videos": [{"assetId": video["assetId"]}],
    })
    job = wait_for_job(stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "succeeded", job.get("error")
    view = _asset(stack.url, video["assetId"])
    assert view["state"] == "staged"
    assert view["sha256"] == hashlib.sha256(clip).hexdigest()
    assert view["probe"]["hasVideo"] is True
