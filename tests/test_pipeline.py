"""End to end: the ASL on moto with the real handlers and real ffmpeg, through the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from ecliptic.local.cli import run_montage, submit_paid, wait_for_job
from ecliptic.media.probe import probe_media

pytestmark = pytest.mark.slow


def _state_names(history: list[dict]) -> list[str]:
    return [
        event["stateEnteredEventDetails"]["name"]
        for event in history
        if "stateEnteredEventDetails" in event
    ]


def test_montage_job_succeeds(stack, media_server, small_media):
    """A paid job runs every state and its output URL downloads a beat-cut H.264/AAC MP4."""
    body = {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [
            {"url": media_server.add(small_media["wide"])},
            {"url": media_server.add(small_media["tall"]), "filename": "tall clip.webm"},
        ],
        "username": "Zoë Test",
        "prompt": "fast cuts",
    }

    accepted = submit_paid(stack.url, body)
    job = wait_for_job(stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "succeeded", job.get("error")
    assert job["progress"] == 100
    for stamp in (job["createdAt"], job["updatedAt"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    assert job["planner"] == "beat-grid"
    assert job["payment"]["amount"] == "20000"
    output = job["output"]
    assert output["width"] % 2 == 0
    assert output["height"] % 2 == 0
    assert max(output["width"], output["height"]) <= 320
    video = requests.get(output["videoUrl"], timeout=30)
    assert video.status_code == 200
    assert f"/outputs/zoe-test/{job['jobId']}/" in output["videoUrl"]
    assert requests.get(output["posterUrl"], timeout=30).status_code == 200
    # The job is marked before the execution ends: the outcome report runs after it.
    execution = stack.runtime.wait_for_execution(job["jobId"])
    assert execution["status"] == "SUCCEEDED"
    assert _state_names(stack.runtime.execution_history(job["jobId"])) == [
        "Record staging", "Stage assets", "Stage asset", "Stage asset", "Stage asset",
        "Record planning", "Analyze media", "Plan montage", "Record rendering",
        "Render montage", "Record success", "Report success", "Montage ready",
    ]

    listed = requests.get(f"{stack.url}/jobs?limit=5", timeout=30).json()["jobs"]
    assert [item["jobId"] for item in listed] == [job["jobId"]]


def test_staged_assets_reused_by_id(stack, media_server, small_media):
    """A second job that names the first job's asset ids stages nothing again."""
    first = submit_paid(stack.url, {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [{"url": media_server.add(small_media["wide"])}],
    })
    assert wait_for_job(stack.url, first["jobId"], show_progress=False)["status"] == "succeeded"
    media_server.files.clear()  # any new download would now fail with 404

    second = submit_paid(stack.url, {
        "audio": {"assetId": first["audioAssetId"]},
        "videos": [{"assetId": first["videoAssetIds"][0]}],
        "durationSeconds": 4,
    })
    job = wait_for_job(stack.url, second["jobId"], show_progress=False)

    assert job["status"] == "succeeded", job.get("error")
    assert second["audioAssetId"] == first["audioAssetId"]
    assert job["output"]["duration"] == pytest.approx(4.0, abs=1 / 30)


@pytest.mark.parametrize(
    ("audio_key", "code", "words"),
    [
        ("missing", "media_fetch_failed", "HTTP 404"),
        ("text", "media_rejected", "not audio or video"),
    ],
    ids=["audio-url-404", "audio-is-text"],
)
def test_failing_step_marks_job_failed(stack, media_server, small_media, audio_key, code, words):
    """A step that fails leaves the job `failed` with a readable error and the trace FAILED."""
    if audio_key == "missing":
        audio_url = media_server.add(small_media["song"]).rsplit("/", 2)[0] + "/nope/a.mp3"
    else:
        audio_url = media_server.add(small_media[audio_key])
    body = {"audio": {"url": audio_url}, "videos": [{"url": media_server.add(small_media["wide"])}]}

    accepted = submit_paid(stack.url, body)
    job = wait_for_job(stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "failed"
    assert job["error"]["code"] == code
    assert words in job["error"]["message"]
    assert "Traceback" not in job["error"]["message"]
    assert stack.runtime.wait_for_execution(job["jobId"])["status"] == "FAILED"


@pytest.mark.corpus
def test_corpus_montage_matches_plan(tmp_path: Path, corpus):
    """The README's corpus example: a real song and three awkward real clips."""
    song = corpus("song-outfoxing-the-fox-97s-id3.mp3")
    clips = [
        corpus("flower-vp8-vorbis-29.97fps.webm"),
        corpus("friday-audio-stream-first-30fps.mp4"),
        corpus("gopro-max-848x480-3datastreams.mp4"),
    ]
    out = tmp_path / "corpus-montage.mp4"

    job = run_montage(song, clips, out, max_side=320, show_progress=False)

    info = probe_media(out)
    assert info.video_codec == "h264"
    assert info.audio_codec == "aac"
    assert info.pix_fmt == "yuv420p"
    assert abs(info.duration - job["output"]["duration"]) <= 1 / 30 + 1e-3
