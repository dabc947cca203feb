"""Sample media for the demo, generated with ffmpeg so no third-party media ships.

The song is a synthetic beat track (kick on every beat, hi-hat between beats, a bass line
that changes every bar). The clips are ffmpeg's test sources in distinct looks and shapes.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ecliptic.media.ffmpeg import ffmpeg_exe

logger = logging.getLogger(__name__)

DEMO_BPM = 112.0
DEMO_SONG_SECONDS = 24.0


@dataclass(frozen=True)
class SampleMedia:
    song: Path
    clips: list[Path]


def _beat_track_expression(bpm: float) -> str:
    period = 60.0 / bpm
    phase = f"mod(t,{period:.6f})"
    offbeat = f"mod(t+{period / 2:.6f},{period:.6f})"
    bar = f"floor(mod(t/{4 * period:.6f},4))"
    kick = f"0.9*sin(2*PI*(45+90*exp(-{phase}*35))*{phase})*exp(-{phase}*8)"
    hat = f"0.12*(random(0)*2-1)*exp(-{offbeat}*70)"
    bass = f"0.18*sin(2*PI*(55*(1+0.25*{bar}))*t)*(0.6+0.4*exp(-{phase}*4))"
    return f"{kick}+{hat}+{bass}"


def _run(args: list[str]) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


def make_song(path: Path, *, bpm: float = DEMO_BPM, seconds: float = DEMO_SONG_SECONDS) -> Path:
    expression = _beat_track_expression(bpm)
    _run(
        [
            "-f", "lavfi",
            "-i", f"aevalsrc=exprs='{expression}|{expression}':s=44100:d={seconds}",
            "-af", "alimiter=limit=0.9",
            "-c:a", "libmp3lame", "-b:a", "160k",
            str(path),
        ]
    )
    return path


# Distinct looks and shapes: landscape, portrait and square clips of different lengths.
_CLIP_SOURCES: list[tuple[str, str]] = [
    ("city-grid.mp4", "testsrc2=size=1280x720:rate=30:duration=9"),
    ("sunset-gradient.mp4", "gradients=size=1280x720:rate=30:duration=7:speed=0.02:seed=7"),
    (
        "tall-life.mp4",
        "life=size=360x640:rate=30:mold=10:ratio=0.1:death_color=#203040:life_color=#f0c040,"
        "scale=720:1280:flags=neighbor,trim=duration=8",
    ),
    ("fractal-zoom.mp4", "mandelbrot=size=640x640:rate=30,trim=duration=6"),
]


def make_clips(folder: Path) -> list[Path]:
    paths: list[Path] = []
    for name, source in _CLIP_SOURCES:
        path = folder / name
        _run(
            [
                "-f", "lavfi", "-i", source,
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-pix_fmt", "yuv420p",
                str(path),
            ]
        )
        paths.append(path)
    return paths


def make_sample_media(folder: Path) -> SampleMedia:
    """Write the demo song and clips into `folder` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("generating sample media", extra={"folder": str(folder)})
    song = make_song(folder / "beat-track-112bpm.mp3")
    return SampleMedia(song=song, clips=make_clips(folder))
