"""Shared fixtures: the local stack, a loopback media server, small generated media and a
recorder of outgoing connections."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecliptic.local.cli import LocalStack, MediaFileServer
from ecliptic.media.ffmpeg import ffmpeg_exe

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT.parent / "shared" / "media-corpus"


def corpus_file(name: str) -> Path:
    """Return a media-corpus file, skipping the test when the corpus is not beside the repo."""
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"media corpus file {name} not found under {CORPUS} (it ships separately)")
    return path


@pytest.fixture(scope="session")
def corpus():
    """The `corpus_file` lookup, as a fixture for test modules."""
    return corpus_file


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def small_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An 8 s beat track at 120 BPM and two short clips, one landscape and one portrait."""
    from ecliptic.local.samples import make_song

    folder = tmp_path_factory.mktemp("small-media")
    song = make_song(folder / "beat-120.mp3", bpm=120.0, seconds=8.0)
    wide = folder / "wide.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=4",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(wide))
    tall = folder / "tall.webm"
    _ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=180x320:rate=30,trim=duration=3",
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(tall))
    text = folder / "notes.txt"
    text.write_text("this is not media\n" * 100)
    return {"song": song, "wide": wide, "tall": tall, "text": text}


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    """The local runtime and API server, with a small output frame to keep renders fast."""
    with LocalStack(output_max_side=320) as running:
        yield running


@pytest.fixture
def media_server() -> Iterator[MediaFileServer]:
    with MediaFileServer() as server:
        yield server


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every outgoing connection; only 127.0.0.1 may actually be reached.

    A connection to any other address fails the test before a packet is sent.
    """
    attempts: list[tuple[str, int]] = []
    real_create = socket.create_connection
    real_connect = socket.socket.connect

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append((str(address[0]), int(address[1])))
        if address[0] != "127.0.0.1":
            raise AssertionError(f"the test tried to connect to {address}")
        return real_create(address, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] != "127.0.0.1":
            attempts.append((str(address[0]), int(address[1])))
            raise AssertionError(f"the test tried to connect to {address}")
        real_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts
