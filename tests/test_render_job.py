"""Render jobs end to end: the outputs a finished job links, and crafted inputs it rejects.

The jobs run on the local stack (the ASL on moto with the real handlers) and real ffmpeg.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
import requests
from test_render import FifoWatch

import ecliptic.analysis
from ecliptic.local.cli import LocalStack, submit_paid, wait_for_job
from ecliptic.media.ffmpeg import ffmpeg_exe

pytestmark = pytest.mark.slow

# Crafted "clips": (file name declared in the request or None, content, expected words of
# the job's error message). The server always calls the file clip.mp4, type video/mp4.
# Each names `bait.mp4` in its own folder. The comment line of invalid UTF-8 gets a file
# past the staging check that rejects text, so the ffmpeg input guard has to stop it.
CRAFTED = {
    "ffconcat-text": (
        None,
        b"ffconcat version 1.0\nfile bait.mp4\n",
        "returned a text file, not audio or video",
    ),
    "ffconcat-binary": (
        None,
        b"ffconcat version 1.0\n# \xff\xfe\xfd\nfile bait.mp4\n",
        "is not decodable media",
    ),
    # ffmpeg 9 detects a playlist only by an .m3u8 or .m3u name (or an HLS content type),
    # so this one declares such a name.
    "hls-binary": (
        "clip.m3u8",
        b"#EXTM3U\n# \xff\xfe\xfd\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        b"#EXTINF:10,\nbait.mp4\n#EXT-X-ENDLIST\n",
        "is not decodable media",
    ),
}


@pytest.fixture(scope="module")
def job_stack() -> Iterator[LocalStack]:
    """One local stack for the module: starting it takes most of a job's time."""
    with LocalStack(output_max_side=320) as running:
        yield running


@pytest.fixture
def bait(tmp_path: Path) -> Path:
    """A FIFO that no process should open; FifoWatch notices a reader."""
    fifo = tmp_path / "bait.fifo"
    os.mkfifo(fifo)
    return fifo


def test_render_job_links_outputs(job_stack, media_server, small_media, tmp_path: Path):
    """A finished job links a video, a poster and a storyboard under the user's job prefix."""
    body = {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [
            {"url": media_server.add(small_media["wide"])},
            {"url": media_server.add(small_media["tall"])},
        ],
        "username": "Ana Lía",
        "format": "square",
        "durationSeconds": 4,
    }

    accepted = submit_paid(job_stack.url, body)
    job = wait_for_job(job_stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "succeeded", job.get("error")
    output = job["output"]
    assert (output["width"], output["height"]) == (320, 320)
    prefix = f"/outputs/ana-lia/{job['jobId']}/"
    for field, name, content_type in (
        ("videoUrl", "montage.mp4", "video/mp4"),
        ("posterUrl", "poster.jpg", "image/jpeg"),
        ("storyboardUrl", "storyboard.jpg", "image/jpeg"),
    ):
        assert prefix + name in output[field]
        response = requests.get(output[field], timeout=30)
        assert response.status_code == 200, field
        assert response.headers["Content-Type"] == content_type
    storyboard = tmp_path / "storyboard.jpg"
    storyboard.write_bytes(requests.get(output["storyboardUrl"], timeout=30).content)
    segments = job["planSummary"]["segments"]
    with av.open(str(storyboard)) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
        frame = next(container.decode(video=0))
    # Square 240 px thumbnails, one per segment, up to 6 per row, 4 px apart.
    columns = min(6, len(segments))
    assert frame.width == columns * 240 + (columns + 1) * 4


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_clip_fails_job(
    kind: str,
    job_stack,
    media_server,
    small_media,
    bait: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A playlist or concat list posing as a clip fails the job and reads no other file."""
    declared_name, content, expected_message = CRAFTED[kind]

    # Without the guard, ffmpeg opens the file that the crafted clip names.
    control = tmp_path / "control"
    control.mkdir()
    control_clip = control / (declared_name or "clip.mp4")
    control_clip.write_bytes(content)
    (control / "bait.mp4").symlink_to(bait)
    with FifoWatch(bait) as watch:
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-i", str(control_clip), "-f", "null", "-"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert watch.opened, "the unguarded run never opened the FIFO, so this check proves nothing"

    # The job's analyze folder gets the same `bait.mp4` beside the downloaded clip.
    make_workspace = ecliptic.analysis.job_workspace

    @contextmanager
    def baited_workspace(job_id: str, step: str) -> Iterator[Path]:
        with make_workspace(job_id, step) as folder:
            (folder / "bait.mp4").symlink_to(bait)
            yield folder

    monkeypatch.setattr(ecliptic.analysis, "job_workspace", baited_workspace)
    served = tmp_path / "served" / "clip.mp4"
    served.parent.mkdir()
    served.write_bytes(content)
    video: dict[str, str] = {"url": media_server.add(served)}
    if declared_name:
        video["filename"] = declared_name
    body = {"audio": {"url": media_server.add(small_media["song"])}, "videos": [video]}

    with FifoWatch(bait) as watch:
        accepted = submit_paid(job_stack.url, body)
        job = wait_for_job(job_stack.url, accepted["jobId"], show_progress=False)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "media_rejected"
    assert expected_message in job["error"]["message"]
    assert not watch.opened, "a job step opened the file that the crafted clip names"
