"""Beat tracker accuracy on synthetic drum tracks, plus decoding of real corpus files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ecliptic.errors import MediaRejected
from ecliptic.media.beats import compute_beat_grid, decode_mono, track_beats

SAMPLE_RATE = 22050
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "media-corpus"
# A beat counts as found when the tracker puts one within this distance (the usual
# tolerance of beat-tracking evaluations, e.g. mir_eval's F-measure).
TOLERANCE_SECONDS = 0.07


# ----- synthetic music ------------------------------------------------------------------


def beat_times(bpm_start: float, bpm_end: float, seconds: float, offset: float) -> np.ndarray:
    """Beat times of a tempo that changes linearly from `bpm_start` to `bpm_end`."""
    slope = (bpm_end - bpm_start) / seconds  # BPM per second
    times: list[float] = []
    beat = 0
    while True:
        # Beats elapsed at time t: (bpm_start * t + slope * t**2 / 2) / 60.
        if slope == 0:
            t = 60.0 * beat / bpm_start
        else:
            t = (-bpm_start + np.sqrt(bpm_start**2 + 120.0 * slope * beat)) / slope
        if offset + t >= seconds - 0.2:
            break
        times.append(offset + t)
        beat += 1
    return np.asarray(times)


def _add(track: np.ndarray, start: float, sound: np.ndarray) -> None:
    first = round(start * SAMPLE_RATE)
    if first >= track.size:
        return
    end = min(track.size, first + sound.size)
    track[first:end] += sound[: end - first]


def _kick(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(round(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    frequency = 45.0 + 110.0 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    return 0.9 * np.sin(phase) * np.exp(-t / 0.09)


def _snare(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(round(0.18 * SAMPLE_RATE)) / SAMPLE_RATE
    noise = rng.standard_normal(t.size) * np.exp(-t / 0.05)
    tone = np.sin(2 * np.pi * 190.0 * t) * np.exp(-t / 0.04)
    return 0.35 * noise + 0.4 * tone


def _hat(rng: np.random.Generator, level: float) -> np.ndarray:
    t = np.arange(round(0.06 * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.diff(rng.standard_normal(t.size + 1))  # first difference: a crude high-pass
    return level * noise * np.exp(-t / 0.015)


def _note(frequency: float, seconds: float, level: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / max(seconds, 0.05))
    wave = np.sin(2 * np.pi * frequency * t) + 0.3 * np.sin(4 * np.pi * frequency * t)
    return level * wave * envelope


def synth_track(
    bpm_start: float,
    bpm_end: float | None = None,
    *,
    seconds: float = 30.0,
    seed: int = 0,
    lead_in: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a drum, bass and melody track; return (samples, true beat times).

    Kick on beats 1 and 3 with a syncopated extra kick every other bar, snare on 2 and 4,
    hi-hat eighths, a bass note per beat, an off-beat melody and background noise.
    """
    rng = np.random.default_rng(seed)
    beats = beat_times(bpm_start, bpm_end or bpm_start, seconds, lead_in)
    track = np.zeros(round(seconds * SAMPLE_RATE))
    kick, snare = _kick(rng), _snare(rng)
    roots = [55.0, 55.0 * 2 ** (8 / 12), 55.0 * 2 ** (3 / 12), 55.0 * 2 ** (10 / 12)]
    scale = [0, 2, 3, 5, 7, 8, 10, 12]

    for index, beat in enumerate(beats):
        position = index % 4
        period = beats[index + 1] - beat if index + 1 < beats.size else beats[-1] - beats[-2]
        if position in (0, 2):
            _add(track, beat, kick)
        else:
            _add(track, beat, snare)
        if position == 2 and (index // 4) % 2 == 1:
            _add(track, beat + 0.5 * period, 0.7 * kick)  # syncopated kick on the "and"
        _add(track, beat, _hat(rng, 0.25))
        _add(track, beat + 0.5 * period, _hat(rng, 0.15))

        root = roots[(index // 8) % len(roots)]
        _add(track, beat, _note(root, period * 0.9, 0.25))
        # Melody notes start on off-beats (the second and fourth sixteenth) half the time.
        for sixteenth in (1, 3):
            if rng.random() < 0.5:
                pitch = 4 * root * 2 ** (scale[rng.integers(len(scale))] / 12)
                _add(track, beat + sixteenth * period / 4, _note(pitch, period * 0.4, 0.12))

    # Pink-ish background noise about 35 dB below the drums.
    walk = np.cumsum(rng.standard_normal(track.size + 4000))
    noise = (walk - np.convolve(walk, np.ones(2001) / 2001, mode="same"))[2000:-2000]
    track += 0.01 * noise / (noise.std() or 1.0)
    track /= np.abs(track).max() / 0.8
    return track.astype(np.float32), beats


def f_measure(estimated: np.ndarray, reference: np.ndarray, tolerance: float) -> float:
    """Beat F-measure: one-to-one matches within `tolerance` seconds."""
    if estimated.size == 0 or reference.size == 0:
        return 0.0
    used = np.zeros(estimated.size, dtype=bool)
    hits = 0
    for beat in reference:
        distance = np.abs(estimated - beat)
        distance[used] = np.inf
        nearest = int(np.argmin(distance))
        if distance[nearest] <= tolerance:
            used[nearest] = True
            hits += 1
    precision = hits / estimated.size
    recall = hits / reference.size
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


# ----- accuracy -------------------------------------------------------------------------


ACCURACY_CASES = [
    pytest.param(97.0, 97.0, 1, id="97bpm"),
    pytest.param(120.0, 120.0, 2, id="120bpm"),
    pytest.param(128.0, 128.0, 3, id="128bpm"),
    pytest.param(118.0, 126.0, 4, id="ramp-118-126bpm"),
]


@pytest.mark.parametrize(("bpm_start", "bpm_end", "seed"), ACCURACY_CASES)
def test_track_beats_accuracy(bpm_start: float, bpm_end: float, seed: int) -> None:
    """The tracker finds the beats (F >= 0.95 at 70 ms) and the mean tempo within 2 %."""
    samples, reference = synth_track(bpm_start, bpm_end, seed=seed)

    grid = track_beats(samples, SAMPLE_RATE)

    estimated = np.asarray(grid.beats)
    score = f_measure(estimated, reference, TOLERANCE_SECONDS)
    assert score >= 0.95, f"F-measure {score:.3f}"
    # The mean tempo of a linear ramp is the average of its ends.
    expected_tempo = (bpm_start + bpm_end) / 2
    assert abs(grid.tempo - expected_tempo) <= 0.02 * expected_tempo, f"tempo {grid.tempo:.2f}"


def test_track_beats_follows_ramp() -> None:
    """On a 118 to 126 BPM ramp, the beat spacing shrinks from start to end."""
    samples, _ = synth_track(118.0, 126.0, seed=5)

    beats = np.asarray(track_beats(samples, SAMPLE_RATE).beats)

    intervals = np.diff(beats)
    start_bpm = 60.0 / np.median(intervals[:8])
    end_bpm = 60.0 / np.median(intervals[-8:])
    assert start_bpm == pytest.approx(118.5, abs=2.0)
    assert end_bpm == pytest.approx(125.5, abs=2.0)


def test_track_beats_grid_fields() -> None:
    """Downbeats are every 4th beat, energy has one value per beat within 0..1."""
    samples, _ = synth_track(120.0, seed=6, seconds=20.0)

    grid = track_beats(samples, SAMPLE_RATE)

    assert grid.first_beat == grid.beats[0]
    assert grid.last_beat == grid.beats[-1]
    assert grid.duration == pytest.approx(20.0, abs=0.01)
    assert len(grid.energy) == len(grid.beats)
    assert all(0.0 <= value <= 1.0 for value in grid.energy)
    phase = grid.beats.index(grid.downbeats[0])
    assert phase < 4
    assert grid.downbeats == grid.beats[phase::4]


def test_track_beats_skips_leading_silence() -> None:
    """Synthetic music after 6 s of silence and faint noise starts its grid at the music."""
    music, reference = synth_track(120.0, seed=7, seconds=20.0)
    rng = np.random.default_rng(7)
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    hiss = (rng.standard_normal(3 * SAMPLE_RATE) * 10 ** (-65 / 20)).astype(np.float32)
    samples = np.concatenate([silence, hiss, music])

    grid = track_beats(samples, SAMPLE_RATE)

    assert grid.first_beat >= 6.0 + reference[0] - TOLERANCE_SECONDS
    assert grid.first_beat <= 6.0 + reference[1]
    assert grid.last_beat <= 26.0


def test_track_beats_silence_rejected() -> None:
    """All-silent audio has no beat grid."""
    with pytest.raises(MediaRejected, match="silent"):
        track_beats(np.zeros(5 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)


def test_track_beats_speed() -> None:
    """Analysis of one minute of audio takes well under a second of CPU time."""
    samples, _ = synth_track(128.0, seconds=60.0, seed=8)

    # CPU time of this process, best of two, so other processes on the machine count less.
    timings = []
    for _ in range(2):
        started = time.process_time()
        track_beats(samples, SAMPLE_RATE)
        timings.append(time.process_time() - started)

    assert min(timings) < 0.8, f"{min(timings):.2f} s of CPU for 60 s of audio"


# ----- decoding real files --------------------------------------------------------------


def _corpus_file(name: str) -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"media corpus not found at {CORPUS}")
    return CORPUS / name


@pytest.mark.slow
@pytest.mark.corpus
def test_compute_beat_grid_horns_leading_silence() -> None:
    """The horns stem is below -50 dBFS for its first 8.9 s; its first beat comes after."""
    path = _corpus_file("horns-stem-leading-silence-8.9s.mp3")

    grid = compute_beat_grid(path)

    assert grid.first_beat >= 8.8
    assert grid.duration == pytest.approx(83.25, abs=0.1)
    assert grid.last_beat <= grid.duration
    assert 60.0 <= grid.tempo <= 200.0


@pytest.mark.slow
@pytest.mark.corpus
def test_decode_mono_song() -> None:
    """An MP3 song decodes to mono float samples of the song's length."""
    path = _corpus_file("song-outfoxing-the-fox-97s-id3.mp3")

    samples = decode_mono(path, 8000)

    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.size / 8000 == pytest.approx(97.4, abs=0.2)
    assert 0.01 < float(np.abs(samples).max()) <= 1.5


@pytest.mark.slow
def test_decode_mono_rejects_text_file(tmp_path: Path) -> None:
    """A file that is not media raises MediaRejected."""
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 100)

    with pytest.raises(MediaRejected, match="no decodable audio"):
        decode_mono(path)


@pytest.mark.slow
@pytest.mark.corpus
def test_decode_mono_rejects_video_without_audio() -> None:
    """A video with no audio stream raises MediaRejected."""
    path = _corpus_file("roadtrip-vp9-10bit-23.976fps-noaudio.webm")

    with pytest.raises(MediaRejected, match="no decodable audio"):
        decode_mono(path)
