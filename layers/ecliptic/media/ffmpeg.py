"""Locate the ffmpeg binary and run it with captured errors, a timeout and progress.

Every ffmpeg run in the package goes through `run_ffmpeg`, so the argv is logged the same
way and a failure always becomes `RenderFailed` with the stderr tail as private detail.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import cache
from typing import IO

from ecliptic.errors import RenderFailed

logger = logging.getLogger(__name__)

FFMPEG_ENV_VAR = "ECLIPTIC_FFMPEG"

# Demuxers that may open user media. Each one reads only the file it is given. Demuxers
# that open other files or URLs named inside the input (hls, dash, concat, image2
# sequences, webm_dash_manifest) are left out. ffmpeg matches any comma-separated alias of
# a demuxer's name, so "mov" also admits mp4/m4a/3gp and "matroska" also admits webm.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mov",
    "matroska",
    "mpegts",
    "avi",
    "flv",
    "asf",
    "gif",
    "mp3",
    "aac",
    "flac",
    "ogg",
    "wav",
    "w64",
    "aiff",
    "caf",
)

# libavformat options that restrict an input to the local file itself. With ffmpeg 9.0.2,
# "-protocol_whitelist file" alone still lets an .m3u8 or ffconcat file read other local
# files through the file protocol, so the demuxer allowlist is the part that rejects them
# ("Format not on whitelist", EINVAL). The same keys work as PyAV `av.open` options.
INPUT_GUARD_OPTIONS: dict[str, str] = {
    "protocol_whitelist": "file",
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
}

# Input options to put before every `-i` of user media.
FFMPEG_INPUT_GUARD: list[str] = [
    arg for key, value in INPUT_GUARD_OPTIONS.items() for arg in (f"-{key}", value)
]

PROGRESS_INTERVAL_SECONDS = 2.0
_STDERR_TAIL_LINES = 40
_STDERR_TAIL_CHARS = 4000


@cache
def ffmpeg_exe() -> str:
    """Return the path of the ffmpeg binary, found once per process.

    The order is the `ECLIPTIC_FFMPEG` environment variable, then `ffmpeg` on PATH, then
    the binary that the imageio-ffmpeg package ships.

    Raises
    ------
    RuntimeError
        When `ECLIPTIC_FFMPEG` names a missing file, or no ffmpeg is found at all.
    """
    configured = os.environ.get(FFMPEG_ENV_VAR)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise RuntimeError(
                f"{FFMPEG_ENV_VAR}={configured!r} is not an executable file; "
                "point it at an ffmpeg binary or unset it"
            )
        return configured

    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path

    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError as exc:
            logger.debug("imageio-ffmpeg has no binary: %s", exc)

    raise RuntimeError(
        "ffmpeg not found: install ffmpeg on PATH, set "
        f"{FFMPEG_ENV_VAR} to its path, or pip install imageio-ffmpeg"
    )


def run_ffmpeg(
    args: list[str],
    *,
    timeout: float,
    on_progress: Callable[[float], None] | None = None,
    total_seconds: float | None = None,
) -> None:
    """Run ffmpeg with `args` and wait for it to finish.

    Parameters
    ----------
    args
        Arguments after the binary; `-hide_banner -nostdin -nostats` are added in front.
    timeout
        Seconds before the process is killed.
    on_progress
        Called in this thread with the done fraction (0..1), at most every 2 s. It needs
        `total_seconds`, the output duration that counts as done.

    Raises
    ------
    RenderFailed
        On a non-zero exit status or a timeout. `detail` contains the stderr tail.
    """
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats"]
    track_progress = on_progress is not None and total_seconds is not None and total_seconds > 0
    if track_progress:
        argv += ["-progress", "pipe:1"]
    argv += args
    logger.debug("ffmpeg: %s", shlex.join(argv))

    deadline = time.monotonic() + timeout
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if track_progress else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr_tail: deque[str | None] = deque(maxlen=_STDERR_TAIL_LINES)
    readers = [_start_reader(process.stderr, stderr_tail.append)]
    progress_lines: queue.Queue[str | None] = queue.Queue()
    if track_progress:
        readers.append(_start_reader(process.stdout, progress_lines.put))

    timed_out = False
    try:
        if track_progress:
            assert on_progress is not None and total_seconds is not None
            timed_out = _follow_progress(
                process, progress_lines, deadline, on_progress, total_seconds
            )
        else:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for reader in readers:
            reader.join(timeout=5)

    tail = _tail_text(stderr_tail)
    if timed_out:
        logger.debug("ffmpeg timed out after %.0f s; stderr tail:\n%s", timeout, tail)
        raise RenderFailed(f"Rendering timed out after {timeout:.0f} s.", detail=tail)
    if process.returncode != 0:
        logger.debug("ffmpeg exited with status %s; stderr tail:\n%s", process.returncode, tail)
        raise RenderFailed(
            f"ffmpeg could not process the media (exit status {process.returncode}).",
            detail=tail,
        )


def _follow_progress(
    process: subprocess.Popen[bytes],
    lines: queue.Queue[str | None],
    deadline: float,
    on_progress: Callable[[float], None],
    total_seconds: float,
) -> bool:
    """Pass `-progress` reports to `on_progress` until the process ends; True on timeout."""
    last_report = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return True
        if line is None:  # stdout closed: ffmpeg is exiting
            break

        key, _, value = line.strip().partition("=")
        # ffmpeg writes both out_time_us and out_time_ms, and both are in microseconds.
        if key != "out_time_us" or not value.lstrip("-").isdigit():
            continue
        now = time.monotonic()
        if now - last_report < PROGRESS_INTERVAL_SECONDS:
            continue
        last_report = now
        fraction = int(value) / 1_000_000 / total_seconds
        on_progress(min(1.0, max(0.0, fraction)))

    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    return False


def _start_reader(stream: IO[bytes] | None, sink: Callable[[str | None], None]) -> threading.Thread:
    """Drain `stream` line by line in a daemon thread, so a full pipe never blocks ffmpeg.

    `sink` receives None once the stream is closed.
    """

    def drain() -> None:
        if stream is not None:
            with stream:
                for raw in iter(stream.readline, b""):
                    sink(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        sink(None)

    thread = threading.Thread(target=drain, name="ffmpeg-pipe-reader", daemon=True)
    thread.start()
    return thread


def _tail_text(lines: deque[str | None]) -> str:
    text = "\n".join(line for line in lines if line is not None)
    return text[-_STDERR_TAIL_CHARS:]
