"""The Gemini planner against a fake Gemini API on loopback, the normalizer and the fallback.

The fake server implements what google-genai's client calls: the resumable upload (start,
then upload-and-finalize at the absolute `x-goog-upload-url` it returns), file states
(PROCESSING, then ACTIVE or FAILED) and `models/<model>:generateContent`. generateContent
rejects any file that is not ACTIVE with 400 FAILED_PRECONDITION, as Gemini does, so every
scenario also checks that the planner waits for its uploads.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import itertools
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ecliptic.aws import media_client, reset_clients
from ecliptic.jobs import JobStore
from ecliptic.models import (
    Analysis,
    Asset,
    AssetState,
    BeatGrid,
    ClipFacts,
    Job,
    JobStatus,
    MediaInfo,
    MediaKind,
    MontagePlan,
)
from ecliptic.plan_normalizer import (
    EmptyProposal,
    ProposedPlan,
    ProposedSegment,
    Timeline,
    build_timeline,
    normalize_proposal,
)
from ecliptic.planner import MIN_SEGMENT_SECONDS, beat_frame
from ecliptic.planning import plan_job

FPS = 30
API_KEY = "test-key-not-secret"
MODEL = "gemini-test-flash"
TABLE = "test-jobs"
BUCKET = "test-media"
CLIP_SECONDS = [6.0, 8.0, 3.0]
MP4 = "mov,mp4,m4a,3gp,3g2,mj2"


# ----- fake Gemini API ------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted generateContent response: HTTP status and JSON body, after `delay` s."""

    status: int
    body: dict[str, Any]
    delay: float = 0.0


def text_reply(text: str) -> Reply:
    """A 200 response whose only candidate contains `text`."""
    return Reply(
        200,
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 10},
            "modelVersion": MODEL,
        },
    )


def error_reply(code: int, status: str, *, retry_delay: str | None = None) -> Reply:
    """A Google API error body, with a RetryInfo detail when `retry_delay` is given."""
    error: dict[str, Any] = {"code": code, "message": f"fake {status}", "status": status}
    if retry_delay is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        ]
    return Reply(code, {"error": error})


def plan_json(segments: list[dict[str, Any]]) -> str:
    return json.dumps({"segments": segments})


@dataclass
class FakeGemini:
    """State and script of the fake server. The handler reads and records through it."""

    api_key: str = API_KEY
    processing_polls: int = 2
    fail_display_names: set[str] = field(default_factory=set)
    replies: list[Reply] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls_left: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    file_gets: list[str] = field(default_factory=list)
    generate_bodies: list[dict[str, Any]] = field(default_factory=list)
    generate_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def next_reply(self) -> Reply:
        if not self.replies:
            return error_reply(500, "INTERNAL")
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


_UPLOAD_START = re.compile(r"^/upload/(v1|v1beta)/files$")
_UPLOAD_SESSION = re.compile(r"^/upload-session/([0-9a-f]+)$")
_FILE = re.compile(r"^/(v1|v1beta)/(files/[a-z0-9]+)$")
_GENERATE = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")


def _handler(fake: FakeGemini) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes. With Nagle's algorithm each response
        # would wait for the client's delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _key_ok(self) -> bool:
            if self.headers.get("x-goog-api-key") == fake.api_key:
                return True
            self._send(400, error_reply(400, "INVALID_ARGUMENT").body)
            return False

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            match = _FILE.match(path)
            if not match:
                self._send(404, error_reply(404, "NOT_FOUND").body)
                return
            if not self._key_ok():
                return
            name = match.group(2)
            with fake.lock:
                fake.file_gets.append(name)
                record = fake.files.get(name)
                if record is None:
                    self._send(404, error_reply(404, "NOT_FOUND").body)
                    return
                if record["state"] == "PROCESSING":
                    fake.polls_left[name] -= 1
                    if fake.polls_left[name] <= 0:
                        if record["displayName"] in fake.fail_display_names:
                            record["state"] = "FAILED"
                            record["error"] = {"code": 400, "message": "unsupported media"}
                        else:
                            record["state"] = "ACTIVE"
                body = dict(record)
            self._send(200, body)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            if _UPLOAD_START.match(path):
                self._upload_start()
            elif match := _UPLOAD_SESSION.match(path):
                self._upload_chunk(match.group(1))
            elif match := _GENERATE.match(path):
                self._generate(match.group(2))
            else:
                self._body()
                self._send(404, error_reply(404, "NOT_FOUND").body)

        def _upload_start(self) -> None:
            body = self._body()
            if not self._key_ok():
                return
            assert self.headers.get("X-Goog-Upload-Protocol") == "resumable"
            assert self.headers.get("X-Goog-Upload-Command") == "start"
            meta = json.loads(body or b"{}").get("file", {})
            session = uuid.uuid4().hex
            with fake.lock:
                fake.sessions[session] = {
                    "meta": meta,
                    "size": int(self.headers.get("X-Goog-Upload-Header-Content-Length") or 0),
                    "mime": self.headers.get("X-Goog-Upload-Header-Content-Type"),
                    "data": b"",
                }
            self._send(
                200,
                {},
                {
                    "x-goog-upload-url": f"{fake.url}/upload-session/{session}",
                    "x-goog-upload-status": "active",
                },
            )

        def _upload_chunk(self, session_id: str) -> None:
            data = self._body()
            command = self.headers.get("X-Goog-Upload-Command", "")
            with fake.lock:
                session = fake.sessions[session_id]
                assert int(self.headers.get("X-Goog-Upload-Offset", "-1")) == len(session["data"])
                session["data"] += data
                if "finalize" not in command:
                    self._send(200, {}, {"x-goog-upload-status": "active"})
                    return
                assert len(session["data"]) == session["size"]
                file_id = uuid.uuid4().hex[:12]
                name = f"files/{file_id}"
                meta = session["meta"]
                now = datetime.now(UTC)
                digest = hashlib.sha256(session["data"]).digest()
                record = {
                    "name": name,
                    # google-genai 3.6 sends the start body in snake_case, and proto
                    # JSON accepts both spellings.
                    "displayName": meta.get("displayName") or meta.get("display_name", ""),
                    "mimeType": meta.get("mimeType") or meta.get("mime_type") or session["mime"],
                    "sizeBytes": str(len(session["data"])),
                    "createTime": _rfc3339(now),
                    "updateTime": _rfc3339(now),
                    "expirationTime": _rfc3339(now + timedelta(hours=48)),
                    "sha256Hash": base64.b64encode(digest).decode(),
                    "uri": f"{fake.url}/v1beta/{name}",
                    "state": "PROCESSING",
                    "source": "UPLOADED",
                }
                fake.files[name] = record
                fake.polls_left[name] = fake.processing_polls
                fake.uploads.append(record["displayName"])
                body = {"file": dict(record)}
            self._send(200, body, {"x-goog-upload-status": "final"})

        def _generate(self, model: str) -> None:
            body = json.loads(self._body() or b"{}")
            if not self._key_ok():
                return
            with fake.lock:
                fake.generate_bodies.append(body)
                fake.generate_times.append(time.monotonic())
                config = body.get("generationConfig", {})
                problem = None
                if model != MODEL:
                    problem = (404, "NOT_FOUND")
                elif config.get("responseMimeType") != "application/json" or not config.get(
                    "responseJsonSchema"
                ):
                    problem = (400, "INVALID_ARGUMENT")
                for uri in file_uris(body):
                    record = fake.files.get("files/" + uri.rsplit("/", 1)[-1])
                    if record is None or record["state"] != "ACTIVE":
                        problem = (400, "FAILED_PRECONDITION")
                reply = error_reply(*problem) if problem else fake.next_reply()
            if reply.delay:
                time.sleep(reply.delay)
            self._send(reply.status, reply.body)

    return Handler


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


# ----- AWS (moto) and jobs --------------------------------------------------------------


def make_grid(bpm: float, *, first_beat: float = 0.5, music_seconds: float = 20.0) -> BeatGrid:
    """A steady grid from `first_beat`, whose energy rises and falls so targets vary."""
    period = 60.0 / bpm
    count = int(music_seconds / period) + 1
    beats = [first_beat + index * period for index in range(count)]
    return BeatGrid(
        duration=beats[-1] + 1.0,
        tempo=bpm,
        beats=beats,
        downbeats=beats[::4],
        energy=[0.2 + 0.6 * ((index // 16) % 2) for index in range(count)],
        first_beat=beats[0],
        last_beat=beats[-1],
    )


def clip_info(seconds: float) -> MediaInfo:
    return MediaInfo(
        format_name=MP4, duration=seconds, has_video=True, has_audio=False,
        width=1280, height=720, fps=30.0,
    )  # fmt: skip


# Ids stay unique across the tests of this module, which share one moto table.
_IDS = itertools.count(1)


class Pipeline:
    """Jobs with staged assets in moto, and the plan step run on them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.jobs = JobStore()
        self.counter = _IDS

    def set_env(self, **values: str | None) -> None:
        for name, value in values.items():
            variable = f"ECLIPTIC_{name.upper()}"
            if value is None:
                self.monkeypatch.delenv(variable, raising=False)
            else:
                self.monkeypatch.setenv(variable, value)
        reset_clients()
        self.jobs = JobStore()

    def stage(self, kind: MediaKind, filename: str, data: bytes) -> Asset:
        number = next(self.counter)
        asset_id = f"{'aud' if kind is MediaKind.AUDIO else 'vid'}_{number:04d}"
        key = f"assets/{asset_id}/{filename}"
        media_client().put_object(Bucket=BUCKET, Key=key, Body=data)
        return Asset(
            assetId=asset_id, kind=kind, state=AssetState.STAGED, filename=filename,
            key=key, size=len(data), createdAt="2026-01-01T00:00:00.000Z",
        )  # fmt: skip

    def create_job(
        self,
        grid: BeatGrid,
        clip_seconds: list[float] = CLIP_SECONDS,
        *,
        prompt: str | None = "sunrise over the city",
        duration_seconds: float | None = None,
        reuse: Analysis | None = None,
        audio_format: str = "mp3",
    ) -> tuple[str, str, Analysis]:
        """Write a job, its assets and its analysis. With `reuse`, it takes that job's assets."""
        job_id = f"job_{next(self.counter):04d}"
        new_assets: list[Asset] = []
        if reuse is None:
            song = self.stage(MediaKind.AUDIO, "song.mp3", b"ID3" + b"\x00" * 2000)
            clips = [
                self.stage(MediaKind.VIDEO, f"clip-{index}.mp4", bytes([index]) * (3000 + index))
                for index in range(len(clip_seconds))
            ]
            new_assets = [song, *clips]
            audio = (song.assetId, song.key)
            clip_refs = [(clip.assetId, clip.key) for clip in clips]
        else:
            audio = (reuse.audio_asset_id, reuse.audio_key)
            clip_refs = [(clip.asset_id, clip.key) for clip in reuse.clips]

        job = Job(
            jobId=job_id, status=JobStatus.PLANNING, createdAt="2026-01-01T00:00:00.000Z",
            updatedAt="2026-01-01T00:00:00.000Z", prompt=prompt,
            durationSeconds=duration_seconds, audioAssetId=audio[0],
            videoAssetIds=[asset_id for asset_id, _ in clip_refs],
        )  # fmt: skip
        self.jobs.create_job(job, new_assets)
        analysis = Analysis(
            job_id=job_id,
            audio_asset_id=audio[0],
            audio_key=audio[1],
            audio=MediaInfo(
                format_name=audio_format, duration=grid.duration, has_video=False, has_audio=True
            ),
            beat_grid=grid,
            clips=[
                ClipFacts(index=index, asset_id=asset_id, key=key, info=clip_info(seconds))
                for index, ((asset_id, key), seconds) in enumerate(
                    zip(clip_refs, clip_seconds, strict=True)
                )
            ],
        )
        analysis_key = f"jobs/{job_id}/analysis.json"
        media_client().put_object(
            Bucket=BUCKET, Key=analysis_key, Body=analysis.model_dump_json().encode()
        )
        return job_id, analysis_key, analysis

    def run(self, job_id: str, analysis_key: str) -> tuple[MontagePlan, Job]:
        """Run the plan step and return the stored plan and the job record."""
        plan_key = plan_job(job_id, analysis_key)
        body = media_client().get_object(Bucket=BUCKET, Key=plan_key)["Body"].read()
        job = self.jobs.get_job(job_id)
        assert job is not None
        return MontagePlan.model_validate_json(body), job


@pytest.fixture(scope="module")
def aws() -> Iterator[None]:
    """moto's DynamoDB, S3 and Secrets Manager with the jobs table and the media bucket."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("ECLIPTIC_"):
                patch.delenv(name)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with mock_aws():
            boto3.client("dynamodb").create_table(
                TableName=TABLE,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield
    reset_clients()


@pytest.fixture
def pipeline(aws: None, monkeypatch: pytest.MonkeyPatch, gemini: FakeGemini) -> Iterator[Pipeline]:
    """The plan step on moto, with settings that point at this test's fake Gemini."""
    settings = {
        "TABLE_NAME": TABLE,
        "MEDIA_BUCKET": BUCKET,
        "OUTPUT_FPS": str(FPS),
        "OUTPUT_MAX_SIDE": "640",
        "GEMINI_MODEL": MODEL,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": gemini.url,
        "GEMINI_MAX_ATTEMPTS": "3",
        "GEMINI_RETRY_INITIAL_SECONDS": "0.01",
        "GEMINI_POLL_SECONDS": "0.01",
        "GEMINI_TIMEOUT_SECONDS": "20",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"ECLIPTIC_{name}", value)
    reset_clients()
    yield Pipeline(monkeypatch)
    reset_clients()


# ----- plan checks ----------------------------------------------------------------------


def timeline_for(analysis: Analysis, duration_seconds: float | None = None) -> Timeline:
    return build_timeline(analysis, fps=FPS, max_duration=180.0, duration_seconds=duration_seconds)


def assert_renderable(plan: MontagePlan, analysis: Analysis, timeline: Timeline) -> None:
    """The plan tiles the timeline, cuts on beat frames and keeps every shot in its clip."""
    MontagePlan.model_validate(plan.model_dump())
    grid = analysis.beat_grid
    durations = {clip.index: clip.info.duration for clip in analysis.clips}
    assert plan.audio_start == grid.first_beat
    assert plan.fps == FPS
    assert plan.total_frames == timeline.total_frames
    assert plan.segments[0].start_frame == 0
    assert plan.segments[-1].end_frame == plan.total_frames
    for number, segment in enumerate(plan.segments):
        where = f"segment {number}: {segment}"
        expected_start = beat_frame(grid.beats[segment.beat_start], plan.audio_start, FPS)
        assert segment.start_frame == expected_start, where
        if number < len(plan.segments) - 1:
            expected_end = beat_frame(grid.beats[segment.beat_end], plan.audio_start, FPS)
            assert segment.end_frame == expected_end, where
        assert segment.clip in durations, where
        assert segment.source_start >= 0, where
        seconds = segment.frames / FPS
        assert segment.source_start + seconds <= durations[segment.clip] + 1e-6, where
        assert seconds >= MIN_SEGMENT_SECONDS - 1e-9, where


def good_segments(timeline: Timeline, clip_seconds: list[float] = CLIP_SECONDS) -> list[dict]:
    """A sensible plan: 4-beat shots, clips in turn, each from a point inside the clip."""
    segments = []
    for number, start in enumerate(range(0, timeline.last, 4)):
        end = min(start + 4, timeline.last)
        if timeline.last - end < 2:
            end = timeline.last
        clip = number % len(clip_seconds)
        length = timeline.times[end] - timeline.times[start]
        clip_start = max(0.0, min(0.5 * number, clip_seconds[clip] - length))
        segments.append(
            {"clip": clip, "clip_start": round(clip_start, 3), "start_beat": start, "end_beat": end}
        )
        if end == timeline.last:
            break
    return segments


def file_uris(body: dict[str, Any]) -> list[str]:
    """File URIs of a generateContent body (google-genai 3.6 writes `fileData.file_uri`)."""
    uris = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            data = part.get("fileData") or part.get("file_data")
            if data is not None:
                uris.append(data.get("fileUri") or data.get("file_uri"))
    return uris


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(
        part["text"] for content in body["contents"] for part in content["parts"] if "text" in part
    )


# ----- scenarios ------------------------------------------------------------------------


def _good(timeline: Timeline) -> list[Reply]:
    return [text_reply(plan_json(good_segments(timeline)))]


def _rate_limited(timeline: Timeline) -> list[Reply]:
    return [error_reply(429, "RESOURCE_EXHAUSTED", retry_delay="0.05s"), *_good(timeline)]


def _unavailable(timeline: Timeline) -> list[Reply]:
    return [error_reply(503, "UNAVAILABLE")]


def _not_json(timeline: Timeline) -> list[Reply]:
    return [text_reply("Here is a montage plan: open on the skyline, then cut to the street.")]


def _wrong_schema(timeline: Timeline) -> list[Reply]:
    return [text_reply(json.dumps({"segments": [{"clip": "first", "from": 0, "to": 4}]}))]


def _unknown_clips(timeline: Timeline) -> list[Reply]:
    segments = good_segments(timeline)
    segments[1]["clip"] = 7
    segments[3]["clip"] = -1
    return [text_reply(plan_json(segments))]


def _bad_times(timeline: Timeline) -> list[Reply]:
    segments = good_segments(timeline)
    segments[0].update(clip_start=-3.5, start_beat=-4)
    segments[1]["clip_start"] = 99.0
    segments[2].update(clip=2, clip_start=0.0, end_beat=segments[2]["start_beat"] + 12)
    segments[-1]["end_beat"] = 999
    return [text_reply(plan_json(segments))]


def _empty(timeline: Timeline) -> list[Reply]:
    return [text_reply(plan_json([]))]


@pytest.mark.parametrize(
    ("script", "planner", "calls", "note_words"),
    [
        (_good, "gemini", 1, ["gemini-test-flash", "song and 3 of 3 clips attached"]),
        (_rate_limited, "gemini", 2, ["proposed shots used"]),
        (_unavailable, "beat-grid", 3, ["after 3 attempts", "503 UNAVAILABLE"]),
        (_not_json, "beat-grid", 1, ["not valid JSON"]),
        (_wrong_schema, "beat-grid", 1, ["does not match the plan schema"]),
        (_unknown_clips, "gemini", 1, ["shots naming an unknown clip dropped: 2"]),
        (_bad_times, "gemini", 1, ["clip starts moved inside the clip", "clamped"]),
        (_empty, "beat-grid", 1, ["no usable shot"]),
    ],
    ids=[
        "good-plan",
        "429-then-success",
        "503-until-budget-spent",
        "non-json-text",
        "json-fails-schema",
        "clip-index-out-of-range",
        "negative-and-overlong-times",
        "empty-plan",
    ],
)
def test_gemini_scenario_gives_valid_plan(
    pipeline: Pipeline,
    gemini: FakeGemini,
    script: Callable[[Timeline], list[Reply]],
    planner: str,
    calls: int,
    note_words: list[str],
) -> None:
    """Whatever Gemini returns, the job gets a renderable plan and the right planner."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    timeline = timeline_for(analysis)
    gemini.replies = script(timeline)

    plan, job = pipeline.run(job_id, analysis_key)

    assert_renderable(plan, analysis, timeline)
    assert plan.planner == planner
    assert job.planner == planner
    assert job.planSummary is not None
    assert job.planSummary["planner"] == planner
    for words in note_words:
        assert words in (plan.planner_note or ""), plan.planner_note
        assert words in job.planSummary["note"]
    if planner == "beat-grid":
        assert plan.planner_note is not None
        assert plan.planner_note.startswith("beat-grid planner: ")
    assert len(gemini.generate_bodies) == calls
    assert sorted(gemini.uploads) == sorted(
        [analysis.audio_asset_id] + [c.asset_id for c in analysis.clips]
    )
    assert len(file_uris(gemini.generate_bodies[0])) == 4


def test_good_plan_follows_text_reply(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A valid plan is used as given: same clips, clip starts and beat spans."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    timeline = timeline_for(analysis)
    segments = good_segments(timeline)
    gemini.replies = [text_reply(plan_json(segments))]

    plan, _ = pipeline.run(job_id, analysis_key)

    assert [segment.clip for segment in plan.segments] == [item["clip"] for item in segments]
    for segment, item in zip(plan.segments, segments, strict=True):
        assert segment.source_start == pytest.approx(item["clip_start"], abs=1e-6)
        assert segment.beat_start == timeline.beat_indexes[item["start_beat"]]
    assert "gaps filled" not in (plan.planner_note or "")


def test_rate_limit_waits_retry_delay(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A 429 with RetryInfo waits the delay Gemini requests before the next attempt."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    gemini.replies = _rate_limited(timeline_for(analysis))

    pipeline.run(job_id, analysis_key)

    first, second = gemini.generate_times
    assert second - first >= 0.05


def test_request_carries_schema_and_beats(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """The request has the JSON schema bounded to the job, the brief and the cut points."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0), prompt="neon nights")
    timeline = timeline_for(analysis)
    gemini.replies = _good(timeline)

    pipeline.run(job_id, analysis_key)

    body = gemini.generate_bodies[0]
    schema = body["generationConfig"]["responseJsonSchema"]
    item = schema["properties"]["segments"]["items"]
    assert item["properties"]["clip"]["maximum"] == len(CLIP_SECONDS) - 1
    assert item["properties"]["end_beat"]["maximum"] == timeline.last
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    text = prompt_text(body)
    assert "Brief: neon nights" in text
    assert f"{timeline.last} {timeline.end_time:.3f} end" in text
    assert f"0 {timeline.times[0]:.3f}" in text
    assert "Clip 2 (clip-2.mp4): 3.00 s, 1280x720" in text


def test_hanging_gemini_stays_in_budget(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A generateContent that does not respond in time ends in the fallback within the budget."""
    pipeline.set_env(gemini_timeout_seconds="2")
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    slow = text_reply(plan_json(good_segments(timeline_for(analysis))))
    slow.delay = 10.0
    gemini.replies = [slow]

    importlib.import_module("ecliptic.gemini.planner")  # keep the SDK import out of the timing
    started = time.monotonic()
    plan, _ = pipeline.run(job_id, analysis_key)
    elapsed = time.monotonic() - started

    assert plan.planner == "beat-grid"
    assert "2 s budget" in (plan.planner_note or "")
    # The budget is 2 s and the rest of the plan step is quick, but the reply takes 10 s.
    assert elapsed < 6.0
    assert_renderable(plan, analysis, timeline_for(analysis))


def test_failed_file_left_out(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A clip that ends FAILED is described by facts only, and Gemini still plans."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    failing = analysis.clips[1].asset_id
    gemini.fail_display_names = {failing}
    gemini.replies = _good(timeline_for(analysis))

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "gemini"
    assert "song and 2 of 3 clips attached" in (plan.planner_note or "")
    body = gemini.generate_bodies[0]
    assert len(file_uris(body)) == 3
    assert "Clip 1 (clip-1.mp4): 8.00 s, 1280x720, 30.00 fps (video not attached: " in prompt_text(
        body
    )
    assert JobStore().get_asset_gemini_file(failing) is None


def test_files_reused_until_expiry(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A second job with the same assets reuses the uploads; near expiry, they are redone."""
    grid = make_grid(120.0)
    job_id, analysis_key, analysis = pipeline.create_job(grid)
    gemini.replies = _good(timeline_for(analysis))
    pipeline.run(job_id, analysis_key)
    assert len(gemini.uploads) == 4
    record = JobStore().get_asset_gemini_file(analysis.audio_asset_id)
    assert record is not None
    assert record["name"] in gemini.files
    assert record["mimeType"] == "audio/mp3"

    second_id, second_key, _ = pipeline.create_job(grid, reuse=analysis)
    plan, _ = pipeline.run(second_id, second_key)
    assert plan.planner == "gemini"
    assert len(gemini.uploads) == 4
    assert set(file_uris(gemini.generate_bodies[1])) == set(file_uris(gemini.generate_bodies[0]))

    # One record close to expiry and one file gone from Gemini: both are uploaded again.
    store = JobStore()
    store.set_asset_gemini_file(
        analysis.audio_asset_id,
        name=record["name"],
        uri=record["uri"],
        mime_type=record["mimeType"],
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
    )
    deleted = store.get_asset_gemini_file(analysis.clips[0].asset_id)
    assert deleted is not None
    del gemini.files[deleted["name"]]
    third_id, third_key, _ = pipeline.create_job(grid, reuse=analysis)
    plan, _ = pipeline.run(third_id, third_key)
    assert plan.planner == "gemini"
    assert sorted(gemini.uploads[4:]) == sorted(
        [analysis.audio_asset_id, analysis.clips[0].asset_id]
    )


def test_upload_budget_skips_large_files(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """Files that would pass the upload budget are left out and named as such."""
    pipeline.set_env(gemini_upload_budget_bytes="6000")
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    gemini.replies = _good(timeline_for(analysis))

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "gemini"
    assert gemini.uploads == [analysis.audio_asset_id, analysis.clips[0].asset_id]
    assert "over the upload size budget" in prompt_text(gemini.generate_bodies[0])


def test_unsupported_song_format_not_uploaded(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A song in a container Gemini does not take (here M4A) goes by its beat grid only."""
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0), audio_format=MP4)
    gemini.replies = _good(timeline_for(analysis))

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "gemini"
    assert analysis.audio_asset_id not in gemini.uploads
    assert "The song is not attached" in prompt_text(gemini.generate_bodies[0])


def test_no_key_uses_beat_grid(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """Without a key the beat-grid planner plans, records why, and Gemini is never called."""
    pipeline.set_env(gemini_api_key=None)
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))

    plan, job = pipeline.run(job_id, analysis_key)

    assert plan.planner == "beat-grid"
    assert job.planSummary is not None
    assert job.planSummary["note"] == "beat-grid planner: no Gemini API key configured"
    assert gemini.uploads == []
    assert gemini.generate_bodies == []
    assert_renderable(plan, analysis, timeline_for(analysis))


@pytest.mark.parametrize("secret", [API_KEY, json.dumps({"apiKey": API_KEY})], ids=["text", "json"])
def test_key_from_secrets_manager(pipeline: Pipeline, gemini: FakeGemini, secret: str) -> None:
    """The key comes from Secrets Manager when only the secret ARN is configured."""
    arn = boto3.client("secretsmanager").create_secret(
        Name=f"gemini-{uuid.uuid4().hex[:8]}", SecretString=secret
    )["ARN"]
    pipeline.set_env(gemini_api_key=None, gemini_api_key_secret_arn=arn)
    job_id, analysis_key, analysis = pipeline.create_job(make_grid(120.0))
    gemini.replies = _good(timeline_for(analysis))

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "gemini"


def test_missing_secret_uses_beat_grid(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """An unreadable key secret falls back to the beat grid instead of failing the job."""
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:absent-AbCdEf"
    pipeline.set_env(gemini_api_key=None, gemini_api_key_secret_arn=arn)
    job_id, analysis_key, _ = pipeline.create_job(make_grid(120.0))

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "beat-grid"
    assert "secret could not be read" in (plan.planner_note or "")


def test_invalid_key_uses_beat_grid(pipeline: Pipeline, gemini: FakeGemini) -> None:
    """A key Gemini rejects (400, not retried) falls back at once."""
    pipeline.set_env(gemini_api_key="wrong-key")
    job_id, analysis_key, _ = pipeline.create_job(make_grid(120.0))
    gemini.replies = [text_reply(plan_json([]))]

    plan, _ = pipeline.run(job_id, analysis_key)

    assert plan.planner == "beat-grid"
    assert "rejected" in (plan.planner_note or "")
    assert gemini.generate_bodies == []


# ----- normalizer -----------------------------------------------------------------------


def _analysis(grid: BeatGrid, clip_seconds: list[float] = CLIP_SECONDS) -> Analysis:
    return Analysis(
        job_id="job_norm",
        audio_asset_id="aud_norm",
        audio_key="assets/aud_norm/song.mp3",
        audio=MediaInfo(format_name="mp3", duration=grid.duration, has_video=False, has_audio=True),
        beat_grid=grid,
        clips=[
            ClipFacts(
                index=index,
                asset_id=f"vid_{index}",
                key=f"assets/vid_{index}/c.mp4",
                info=clip_info(seconds),
            )  # fmt: skip
            for index, seconds in enumerate(clip_seconds)
        ],
    )


def _normalize(
    analysis: Analysis, segments: list[tuple[int, float, int, int]], timeline: Timeline
) -> MontagePlan:
    proposal = ProposedPlan(
        segments=[
            ProposedSegment(clip=clip, clip_start=start, start_beat=first, end_beat=last)
            for clip, start, first, last in segments
        ]
    )
    return normalize_proposal(
        proposal, analysis, timeline, width=640, height=360, planner="gemini", note="test"
    )


def test_normalizer_fills_gaps_and_overlaps() -> None:
    """Gaps (also before the first shot) are filled and overlaps trimmed on beats."""
    analysis = _analysis(make_grid(120.0))
    timeline = timeline_for(analysis)
    plan = _normalize(analysis, [(1, 1.0, 4, 12), (0, 0.0, 10, 16), (2, 0.0, 24, 28)], timeline)

    assert_renderable(plan, analysis, timeline)
    assert "gaps filled: 3" in (plan.planner_note or "")
    assert "overlaps trimmed: 1" in (plan.planner_note or "")
    shot = next(segment for segment in plan.segments if segment.clip == 0 and segment.source_start)
    # The overlapping shot starts at cut point 12 and skips the 1 s it lost to the overlap.
    assert shot.beat_start == timeline.beat_indexes[12]
    assert shot.source_start == pytest.approx(1.0)


def test_normalizer_short_clip_cut_to_length() -> None:
    """A shot longer than its whole clip ends on the last beat the clip covers."""
    analysis = _analysis(make_grid(120.0), [2.2, 8.0])
    timeline = timeline_for(analysis)
    plan = _normalize(analysis, [(0, 0.0, 0, 12), (1, 0.0, 12, timeline.last)], timeline)

    assert_renderable(plan, analysis, timeline)
    first = plan.segments[0]
    assert first.clip == 0
    assert first.beat_end == timeline.beat_indexes[4]
    assert "shots cut to their clip's length: 2" in (plan.planner_note or "")


def test_normalizer_merges_short_shots() -> None:
    """One-beat shots at 150 BPM (0.4 s) are merged into longer ones."""
    analysis = _analysis(make_grid(150.0))
    timeline = timeline_for(analysis)
    shots = [(point % 3, 0.0, point, point + 1) for point in range(timeline.last)]
    plan = _normalize(analysis, shots, timeline)

    assert_renderable(plan, analysis, timeline)
    assert "merged" in (plan.planner_note or "")


def test_normalizer_no_drift_three_minutes() -> None:
    """Over 3 minutes at 128 BPM every cut frame is the beat's own rounded frame."""
    analysis = _analysis(make_grid(128.0, first_beat=0.37, music_seconds=185.0), [30.0, 40.0])
    timeline = timeline_for(analysis)
    shots = [
        (number % 2, float(number % 10), start, min(start + 2, timeline.last))
        for number, start in enumerate(range(0, timeline.last, 2))
    ]
    plan = _normalize(analysis, shots, timeline)

    assert_renderable(plan, analysis, timeline)
    assert plan.total_frames == round(180.0 * FPS)
    for segment in plan.segments[1:]:
        beat = analysis.beat_grid.beats[segment.beat_start]
        assert segment.start_frame == round((beat - 0.37) * FPS)


def test_normalizer_rejects_unusable_proposal() -> None:
    """A proposal without one usable shot raises EmptyProposal."""
    analysis = _analysis(make_grid(120.0))
    timeline = timeline_for(analysis)
    with pytest.raises(EmptyProposal):
        _normalize(analysis, [(5, 0.0, 0, 8), (1, 0.0, 9, 9), (0, 0.0, -5, -1)], timeline)


def test_normalizer_duration_cap() -> None:
    """A requested duration is the plan's length, whatever spans the proposal names."""
    analysis = _analysis(make_grid(120.0))
    timeline = timeline_for(analysis, duration_seconds=7.3)
    plan = _normalize(analysis, [(1, 0.0, 0, 40)], timeline)

    assert_renderable(plan, analysis, timeline)
    assert plan.total_frames == round(7.3 * FPS)


# ----- corpus ---------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize(
    "song",
    ["horns-stem-leading-silence-8.9s.mp3", "song-outfoxing-the-fox-97s-id3.mp3"],
    ids=["horns-leading-silence", "outfoxing"],
)
def test_corpus_first_cut_on_first_beat(
    pipeline: Pipeline, gemini: FakeGemini, corpus: Callable[[str], Path], song: str
) -> None:
    """Real songs: both planners start the montage on the first musical beat."""
    from ecliptic.media.beats import compute_beat_grid

    grid = compute_beat_grid(corpus(song))
    if song.startswith("horns"):
        assert grid.first_beat > 8.8
    job_id, analysis_key, analysis = pipeline.create_job(grid, [12.0, 9.0, 15.0])
    timeline = timeline_for(analysis)
    # Gemini's plan starts two beats late; the normalizer fills the opening.
    segments = good_segments(timeline, [12.0, 9.0, 15.0])
    segments[0]["start_beat"] = 2
    gemini.replies = [text_reply(plan_json(segments))]

    plan, _ = pipeline.run(job_id, analysis_key)
    pipeline.set_env(gemini_api_key=None)
    second_id, second_key, _ = pipeline.create_job(grid, [12.0, 9.0, 15.0], reuse=analysis)
    fallback, _ = pipeline.run(second_id, second_key)

    first_index = grid.beats.index(grid.first_beat)
    for result, planner in ((plan, "gemini"), (fallback, "beat-grid")):
        assert result.planner == planner
        assert result.audio_start == grid.first_beat
        assert result.segments[0].start_frame == 0
        assert result.segments[0].beat_start == first_index
        assert_renderable(result, analysis, timeline)


def _random_case(
    rng: random.Random,
) -> tuple[Analysis, Timeline, list[tuple[int, float, int, int]]]:
    """A random grid, clips and proposal, with values out of range mixed in."""
    grid = make_grid(
        rng.uniform(60.0, 200.0),
        first_beat=rng.choice([0.0, 0.3, 8.9]),
        music_seconds=rng.uniform(1.0, 60.0),
    )
    clip_seconds = [rng.choice([0.3, 1.0, 2.5, 6.0, 20.0]) for _ in range(rng.randint(1, 4))]
    analysis = _analysis(grid, clip_seconds)
    duration = rng.choice([None, None, rng.uniform(3.0, 30.0)])
    timeline = timeline_for(analysis, duration_seconds=duration)
    shots = []
    for _ in range(rng.randint(0, 30)):
        start = rng.randint(-3, timeline.last + 3)
        shots.append(
            (
                rng.randint(-1, len(clip_seconds)),
                rng.choice([rng.uniform(-5.0, 25.0), 0.0]),
                start,
                start + rng.choice([-1, 0, 1, 2, 4, 8, 40]),
            )
        )
    return analysis, timeline, shots


def test_normalizer_random_proposals_renderable() -> None:
    """Random proposals give a renderable plan or EmptyProposal, never anything else."""
    rng = random.Random(20261204)
    plans = 0
    for case in range(400):
        analysis, timeline, shots = _random_case(rng)
        try:
            plan = _normalize(analysis, shots, timeline)
        except EmptyProposal:
            continue
        plans += 1
        longest = max(clip.info.duration for clip in analysis.clips)
        grid = analysis.beat_grid
        durations = {clip.index: clip.info.duration for clip in analysis.clips}
        assert plan.total_frames == timeline.total_frames, case
        assert plan.audio_start == grid.first_beat, case
        for number, segment in enumerate(plan.segments):
            where = f"case {case}, segment {number}: {segment}"
            start_beat = grid.beats[segment.beat_start]
            assert segment.start_frame == beat_frame(start_beat, plan.audio_start, FPS), where
            seconds = segment.frames / FPS
            if seconds <= longest:
                assert segment.source_start + seconds <= durations[segment.clip] + 1e-6, where
            else:
                # No clip is long enough, so the renderer freezes the clip on its last frame.
                assert segment.source_start == 0.0, where
            if timeline.seconds(0, timeline.last) >= MIN_SEGMENT_SECONDS:
                assert seconds >= MIN_SEGMENT_SECONDS - 1e-9, where
    assert plans > 200
