"""Benchmark the beat tracker: accuracy on synthetic tracks and speed per minute of audio.

Run from the repository root:

    .venv/bin/python bench/bench_beats.py

The synthetic tracks come from `tests/test_beats.py` (drums, bass, an off-beat melody and
noise at a known tempo), so the benchmark measures what the tests check. When the media
corpus exists next to the repository (`../shared/media-corpus`), two real songs are
decoded and analysed as well.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_beats import SAMPLE_RATE, TOLERANCE_SECONDS, f_measure, synth_track  # noqa: E402

from ecliptic.media.beats import decode_mono, track_beats  # noqa: E402

CORPUS = REPO.parent / "shared" / "media-corpus"
CORPUS_SONGS = ("song-outfoxing-the-fox-97s-id3.mp3", "horns-stem-leading-silence-8.9s.mp3")
SYNTHETIC_CASES = [
    ("97 BPM", 97.0, 97.0, 1),
    ("120 BPM", 120.0, 120.0, 2),
    ("128 BPM", 128.0, 128.0, 3),
    ("118->126 BPM ramp", 118.0, 126.0, 4),
    ("75 BPM", 75.0, 75.0, 10),
    ("160 BPM", 160.0, 160.0, 9),
]
REPEATS = 3


def _print(line: str = "") -> None:
    print(line)  # noqa: T201 (a command-line report)


def _best_time(samples: np.ndarray) -> tuple[float, object]:
    """Run the tracker REPEATS times and return the fastest wall time with the grid."""
    best = float("inf")
    grid = None
    for _ in range(REPEATS):
        started = time.perf_counter()
        grid = track_beats(samples, SAMPLE_RATE)
        best = min(best, time.perf_counter() - started)
    return best, grid


def bench_synthetic() -> None:
    _print(f"Synthetic tracks, 30 s each, F-measure at +-{TOLERANCE_SECONDS * 1000:.0f} ms")
    _print(f"{'track':<20} {'F':>6} {'tempo':>8} {'error':>7} {'s/min':>7}")
    for label, bpm_start, bpm_end, seed in SYNTHETIC_CASES:
        samples, reference = synth_track(bpm_start, bpm_end, seed=seed)
        seconds, grid = _best_time(samples)
        expected = (bpm_start + bpm_end) / 2
        score = f_measure(np.asarray(grid.beats), reference, TOLERANCE_SECONDS)
        error = 100.0 * (grid.tempo - expected) / expected
        per_minute = seconds * 60.0 / (samples.size / SAMPLE_RATE)
        _print(f"{label:<20} {score:6.3f} {grid.tempo:8.2f} {error:+6.2f}% {per_minute:7.3f}")

    samples, _ = synth_track(120.0, seconds=180.0, seed=11)
    seconds, _ = _best_time(samples)
    _print(f"3-minute track: {seconds:.3f} s, {seconds / 3:.3f} s per minute of audio")


def bench_corpus() -> None:
    if not CORPUS.is_dir():
        _print(f"\nMedia corpus not found at {CORPUS}; skipping real songs.")
        return
    _print("\nCorpus songs (decode with ffmpeg, then track)")
    _print(f"{'file':<40} {'tempo':>7} {'first':>7} {'last':>7} {'decode':>7} {'track':>7}")
    for name in CORPUS_SONGS:
        path = CORPUS / name
        started = time.perf_counter()
        samples = decode_mono(path, SAMPLE_RATE)
        decode_seconds = time.perf_counter() - started
        track_seconds, grid = _best_time(samples)
        _print(
            f"{name:<40} {grid.tempo:7.2f} {grid.first_beat:7.3f} {grid.last_beat:7.3f} "
            f"{decode_seconds:6.2f}s {track_seconds:6.2f}s"
        )


def main() -> None:
    _print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}\n"
    )
    bench_synthetic()
    bench_corpus()


if __name__ == "__main__":
    main()
