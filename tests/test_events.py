"""Sample events: each handler the template names runs with its file from events/.

`sam local invoke -e events/<file>` needs Docker. These tests give the same files to the
same handlers inside the local runtime, after seeding the job and assets the events name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecliptic.jobs import JobStore, utc_now
from ecliptic.local.runtime import LocalRuntime
from ecliptic.models import Asset, Job, JobStatus, MediaKind
from ecliptic.storage import asset_object_key

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"
# The ids every sample event uses.
JOB_ID = "job_0123456789abcdefghij"
VIDEO_ID = "vid_0123456789abcdefghij"
AUDIO_ID = "aud_0123456789abcdefghij"
API_EVENT_FILES = sorted(path.name for path in EVENTS_DIR.glob("api-*.json"))


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def _invoke(runtime: LocalRuntime, logical_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """Call a task function as Lambda would, failing the test on a function error."""
    headers: dict[str, str] = {}
    result = json.loads(runtime.invoke(logical_id, json.dumps(event), headers))
    assert "x-amz-function-error" not in headers, (
        f"{logical_id} raised {result.get('errorType')}: {result.get('errorMessage')}"
    )
    return result


def _api(runtime: LocalRuntime, event: dict[str, Any]) -> tuple[int, Any]:
    """Return the status and the body, parsed when it is JSON."""
    response = runtime.invoke_api(event)
    headers = {name.lower(): value for name, value in response.get("headers", {}).items()}
    body = response["body"]
    if headers.get("content-type", "").startswith("application/json"):
        body = json.loads(body)
    return response["statusCode"], body


def _seed_job(audio_url: str | None = None, video_url: str | None = None) -> None:
    """Write the job and the two assets that the sample events name."""
    now = utc_now()
    job = Job(
        jobId=JOB_ID,
        status=JobStatus.QUEUED,
        createdAt=now,
        updatedAt=now,
        audioAssetId=AUDIO_ID,
        videoAssetIds=[VIDEO_ID],
    )
    assets = [
        Asset(
            assetId=asset_id,
            kind=kind,
            sourceUrl=url,
            filename=filename,
            key=asset_object_key(asset_id, filename),
            jobId=JOB_ID,
            createdAt=now,
        )
        for asset_id, kind, url, filename in [
            (AUDIO_ID, MediaKind.AUDIO, audio_url, "beat.mp3"),
            (VIDEO_ID, MediaKind.VIDEO, video_url, "wide.mp4"),
        ]
    ]
    JobStore().create_job(job, assets)


@pytest.fixture
def runtime() -> Iterator[LocalRuntime]:
    with LocalRuntime(output_max_side=320) as running:
        yield running


def test_api_event_files_found() -> None:
    """The API sample events exist, so the table below cannot pass empty."""
    assert "api-post-montage.json" in API_EVENT_FILES
    assert "api-get-job.json" in API_EVENT_FILES


def test_api_events(runtime: LocalRuntime) -> None:
    """Each API event gets its documented response, before and after its records exist."""
    events = {name: _event(name) for name in API_EVENT_FILES}
    routes = {event["routeKey"]: event for event in events.values()}
    expected_routes = {
        "POST /montages", "GET /jobs/{jobId}", "GET /jobs", "POST /uploads",
        "GET /assets/{assetId}", "GET /openapi.json", "GET /docs",
    }  # fmt: skip
    assert set(routes) == expected_routes, "a new API event needs its expectations here"

    status, body = _api(runtime, routes["GET /openapi.json"])
    assert status == 200
    assert body["openapi"].startswith("3.")
    assert "/montages" in body["paths"]

    status, body = _api(runtime, routes["GET /docs"])
    assert status == 200
    assert "<html" in body.lower()

    status, body = _api(runtime, routes["POST /montages"])
    assert status == 402
    assert body["x402Version"] == 1
    assert body["accepts"]

    status, body = _api(runtime, routes["POST /uploads"])
    assert status == 201
    assert body["assetId"].startswith("vid_")
    assert body["method"] == "PUT"

    for route in ("GET /jobs/{jobId}", "GET /assets/{assetId}"):
        status, body = _api(runtime, routes[route])
        assert status == 404, route
        assert body["error"]["code"] == "not_found", route

    _seed_job()

    status, body = _api(runtime, routes["GET /jobs/{jobId}"])
    assert status == 200
    assert body["jobId"] == JOB_ID
    assert body["status"] == "queued"

    status, body = _api(runtime, routes["GET /assets/{assetId}"])
    assert status == 200
    assert body["assetId"] == VIDEO_ID

    status, body = _api(runtime, routes["GET /jobs"])
    assert status == 200
    assert [job["jobId"] for job in body["jobs"]] == [JOB_ID]


@pytest.mark.slow
def test_step_events(runtime: LocalRuntime, media_server, small_media) -> None:
    """Stage, analyze, plan, render and notify run on their event files, in pipeline order."""
    _seed_job(
        audio_url=media_server.add(small_media["song"]),
        video_url=media_server.add(small_media["wide"]),
    )
    stage_event = _event("stage-asset.json")
    assert stage_event == {"jobId": JOB_ID, "assetId": VIDEO_ID}

    staged = _invoke(runtime, "StageAssetFunction", stage_event)
    assert staged["assetId"] == VIDEO_ID
    assert staged["kind"] == "video"
    assert staged["size"] == small_media["wide"].stat().st_size
    staged_audio = _invoke(runtime, "StageAssetFunction", {**stage_event, "assetId": AUDIO_ID})
    assert staged_audio["kind"] == "audio"

    analyzed = _invoke(runtime, "AnalyzeFunction", _event("analyze.json"))
    plan_event = _event("plan.json")
    assert analyzed == {"analysisKey": plan_event["analysisKey"]}

    planned = _invoke(runtime, "PlanFunction", plan_event)
    render_event = _event("render.json")
    assert planned == {"planKey": render_event["planKey"]}

    rendered = _invoke(runtime, "RenderFunction", render_event)
    assert set(rendered) == {
        "key", "posterKey", "storyboardKey", "duration", "width", "height", "size",
    }  # fmt: skip
    assert rendered["size"] > 0
    assert max(rendered["width"], rendered["height"]) <= 320

    # `Record success` writes these fields in the state machine.
    JobStore().update_job(
        JOB_ID,
        status="succeeded",
        progress=100,
        output={name: rendered[name] for name in ("key", "duration", "width", "height", "size")},
    )
    notify_event = _event("notify.json")
    assert notify_event == {"jobId": JOB_ID, "outcome": "succeeded"}
    reported = _invoke(runtime, "NotifyFunction", notify_event)
    assert reported == {
        "jobId": JOB_ID,
        "outcome": "succeeded",
        "webhook": "not_requested",
        "webhookAttempts": 0,
    }
