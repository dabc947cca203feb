"""The API handler through the local server: validation, the 402 challenge, replays, reads."""

from __future__ import annotations

import json

import pytest
import requests

from ecliptic.local.cli import LocalStack, MediaFileServer
from ecliptic.x402.client import LocalPayer
from ecliptic.x402.encoding import decode_json_header


@pytest.fixture(scope="module")
def stack():
    """One local stack for the module: these tests read and reject far more than they render."""
    with LocalStack(output_max_side=320) as running:
        yield running


def _body(media_server: MediaFileServer, small_media: dict, **extra: object) -> dict:
    body = {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [{"url": media_server.add(small_media["wide"])}],
    }
    body.update(extra)
    return body


def _challenge(stack: LocalStack, body: dict) -> dict:
    response = requests.post(f"{stack.url}/montages", json=body, timeout=30)
    assert response.status_code == 402
    return decode_json_header(response.headers["PAYMENT-REQUIRED"])


def test_unpaid_request_gets_challenge(stack, media_server, small_media):
    """A valid request without payment gets 402 with requirements in body and headers."""
    response = requests.post(
        f"{stack.url}/montages", json=_body(media_server, small_media), timeout=30
    )

    assert response.status_code == 402
    body = response.json()
    assert body["x402Version"] == 1
    assert body["reason"] == "payment_required"
    requirement = body["accepts"][0]
    assert requirement["scheme"] == "exact"
    assert requirement["network"] == "base"
    assert requirement["maxAmountRequired"] == "20000"
    assert requirement["payTo"] == "0xFdeAE251395004654FBd741824D08Df95315Ed6c"
    assert requirement["asset"] == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert requirement["maxTimeoutSeconds"] == 60
    v2 = decode_json_header(response.headers["PAYMENT-REQUIRED"])
    assert v2["accepts"][0]["network"] == "eip155:8453"
    assert v2["accepts"][0]["amount"] == "20000"
    assert response.headers["WWW-Authenticate"].startswith("x402 ")


@pytest.mark.parametrize(
    ("mutate", "status", "code", "field"),
    [
        (lambda b: b.pop("videos"), 400, "invalid_request", "videos"),
        (lambda b: b.update(videos=[]), 400, "invalid_request", "videos"),
        (lambda b: b.update(prompt="x" * 1001), 400, "invalid_request", "prompt"),
        (lambda b: b.update(username="u" * 51), 400, "invalid_request", "username"),
        (lambda b: b["audio"].update(assetId="aud_x"), 400, "invalid_request", "audio"),
        (lambda b: b.update(audio={"url": "ftp://example.invalid/a.mp3"}), 400,
         "invalid_request", "audio.url"),
        (lambda b: b.update(colour="blue"), 400, "invalid_request", "colour"),
        (lambda b: b.update(format="vertical"), 400, "invalid_request", "format"),
        (lambda b: b.update(audio={"assetId": "vid_0123456789abcdefghij"}), 400,
         "asset_not_usable", "audio.assetId"),
        (lambda b: b.update(audio={"assetId": "aud_0123456789abcdefghij"}), 404,
         "not_found", "audio.assetId"),
        (lambda b: b.update(videos=[{"assetId": "not-an-id"}]), 400,
         "invalid_request", "videos[0].assetId"),
    ],
    ids=[
        "videos-missing", "videos-empty", "prompt-too-long", "username-too-long",
        "audio-url-and-asset", "audio-ftp-url", "unknown-field", "unknown-format",
        "video-asset-as-audio", "unknown-audio-asset", "malformed-asset-id",
    ],
)
def test_bad_request_rejected_before_payment(
    stack, media_server, small_media, mutate, status, code, field
):
    """Bad input gets its 4xx with the field named, before any payment is asked for."""
    body = _body(media_server, small_media)
    mutate(body)

    response = requests.post(f"{stack.url}/montages", json=body, timeout=30)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert field.split("[")[0].split(".")[0] in error["message"]


def test_malformed_json_rejected(stack):
    response = requests.post(
        f"{stack.url}/montages",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_paid_request_accepted_and_replay_returns_same_job(stack, media_server, small_media):
    """The same payment with the same body returns the same job; another body gets 409."""
    body = _body(media_server, small_media, username="replay")
    header = LocalPayer().payment_header(_challenge(stack, body), version=2)

    paid = dict([header])
    first = requests.post(f"{stack.url}/montages", json=body, headers=paid, timeout=60)
    again = requests.post(f"{stack.url}/montages", json=body, headers=paid, timeout=60)
    other = dict(body, username="someone-else")
    conflict = requests.post(f"{stack.url}/montages", json=other, headers=paid, timeout=60)

    assert first.status_code == 202
    accepted = first.json()
    assert accepted["jobId"].startswith("job_")
    assert accepted["audioAssetId"].startswith("aud_")
    assert [v[:4] for v in accepted["videoAssetIds"]] == ["vid_"]
    assert "PAYMENT-RESPONSE" in first.headers
    assert again.status_code == 202
    assert again.json()["jobId"] == accepted["jobId"]
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "payment_reused"
    stack.runtime.wait_for_execution(accepted["jobId"])


def test_v1_payment_header_accepted(stack, media_server, small_media):
    body = _body(media_server, small_media)
    response = requests.post(f"{stack.url}/montages", json=body, timeout=30)
    name, value = LocalPayer().payment_header(response.json(), version=1)

    paid = requests.post(f"{stack.url}/montages", json=body, headers={name: value}, timeout=60)

    assert name == "X-PAYMENT"
    assert paid.status_code == 202
    assert "X-PAYMENT-RESPONSE" in paid.headers
    stack.runtime.wait_for_execution(paid.json()["jobId"])


def test_forged_payment_rejected(stack, media_server, small_media):
    """A payment whose signature does not match its payer gets 402 with a reason."""
    body = _body(media_server, small_media)
    name, value = LocalPayer().payment_header(_challenge(stack, body), version=2)
    payment = decode_json_header(value)
    payment["payload"]["authorization"]["from"] = LocalPayer().address
    import base64

    forged = base64.b64encode(json.dumps(payment).encode()).decode()

    response = requests.post(
        f"{stack.url}/montages", json=body, headers={name: forged}, timeout=30
    )

    assert response.status_code == 402
    assert response.json()["reason"] in {"signer_mismatch", "invalid_signature"}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/jobs/job_0123456789abcdefghij", 404, "not_found"),
        ("/jobs/nope", 404, "not_found"),
        ("/jobs?limit=0", 400, "invalid_request"),
        ("/jobs?limit=101", 400, "invalid_request"),
        ("/jobs?limit=ten", 400, "invalid_request"),
        ("/jobs?cursor=garbage", 400, "invalid_request"),
        ("/nowhere", 404, "route_not_found"),
    ],
)
def test_reads_reject_bad_ids_and_limits(stack, path, status, code):
    response = requests.get(f"{stack.url}{path}", timeout=30)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_list_jobs_shape(stack):
    response = requests.get(f"{stack.url}/jobs?limit=5", timeout=30)

    assert response.status_code == 200
    jobs = response.json()["jobs"]
    assert len(jobs) <= 5
    assert all(job["jobId"].startswith("job_") for job in jobs)


def test_unexpected_error_keeps_error_shape(stack, monkeypatch):
    """An unexpected exception still returns 500 in the common error shape."""
    from ecliptic.jobs import JobStore

    def broken(self, job_id):
        raise RuntimeError("table unreachable")

    monkeypatch.setattr(JobStore, "get_job", broken)

    response = requests.get(f"{stack.url}/jobs/job_0123456789abcdefghij", timeout=30)

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "table unreachable" not in response.text
