"""Beat tracking with numpy only: decode with ffmpeg, onset envelope, tempo, beat grid.

The method follows D. P. W. Ellis, "Beat Tracking by Dynamic Programming", Journal of New
Music Research 36(1), 2007:

1. Onset strength: spectral flux of a log-compressed mel spectrogram (half-wave rectified
   frame-to-frame increase, averaged over the mel bands).
2. Tempo: autocorrelation of the onset envelope, weighted by a log-normal prior around
   120 BPM, searched between 60 and 200 BPM.
3. Beats: dynamic programming that trades onset strength against deviation from the beat
   period. The period is local here (windowed autocorrelation near the global tempo), so
   gradual tempo changes such as a 118 to 126 BPM ramp are followed.

Leading and trailing silence (frames below -50 dBFS RMS) are skipped, so the first beat is
the first beat of the music, not a guess inside the silence.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np

from ecliptic.errors import MediaRejected
from ecliptic.media.ffmpeg import ffmpeg_exe
from ecliptic.models import BeatGrid

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050
DECODE_TIMEOUT_SECONDS = 180.0
# Decoding stops here: 20 minutes of float32 mono at 22050 Hz is about 106 MB, and no
# montage uses more than the first 600 s of music.
MAX_ANALYSIS_SECONDS = 1200.0

HOP_SECONDS = 256 / 22050  # about 11.6 ms between onset-envelope frames
N_MELS = 64
TEMPO_MIN_BPM = 60.0
TEMPO_MAX_BPM = 200.0
TEMPO_PRIOR_BPM = 120.0
TEMPO_PRIOR_OCTAVES = 1.0
# Weight of the beat-period penalty in the dynamic program; 100 is the value Ellis (2007)
# and librosa use.
TIGHTNESS = 100.0
# Frames quieter than this (RMS, dBFS) count as silence.
SILENCE_DBFS = -50.0
# Local tempo: autocorrelation windows of this length, one every LOCAL_HOP_SECONDS, and
# at most this relative deviation from the global tempo.
LOCAL_WINDOW_SECONDS = 8.0
LOCAL_HOP_SECONDS = 1.0
LOCAL_MAX_DEVIATION = 0.1
BEATS_PER_BAR = 4
# When the music is shorter than two beats, the grid falls back to this tempo.
FALLBACK_BPM = 120.0


def decode_mono(
    path: Path,
    sample_rate: int = SAMPLE_RATE,
    *,
    max_seconds: float | None = MAX_ANALYSIS_SECONDS,
    timeout: float = DECODE_TIMEOUT_SECONDS,
) -> np.ndarray:
    """Decode the first audio stream of `path` to mono float32 PCM with ffmpeg.

    Parameters
    ----------
    path
        A local media file.
    sample_rate
        Output sample rate in Hz.
    max_seconds
        Decode at most this many seconds (None decodes everything).
    timeout
        Seconds before ffmpeg is killed.

    Raises
    ------
    MediaRejected
        The file has no audio stream, ffmpeg cannot decode it, the decode timed out, or
        it yields no samples.
    """
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-protocol_whitelist", "file"]
    args += ["-i", str(path)]
    # first audio stream only, downmixed and resampled
    args += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate)]
    if max_seconds is not None:
        args += ["-t", f"{max_seconds:.3f}"]
    args += ["-f", "f32le", "pipe:1"]
    logger.debug("decoding audio", extra={"argv": args})

    try:
        result = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise MediaRejected(
            f"Decoding the audio of {path.name} timed out after {timeout:.0f} s.",
            detail=str(error),
        ) from error
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        raise MediaRejected(
            f"{path.name} has no decodable audio stream; send an audio file such as "
            "MP3, M4A, WAV or FLAC.",
            detail=stderr[-2000:],
        )

    usable = len(result.stdout) - len(result.stdout) % 4
    samples = np.frombuffer(result.stdout[:usable], dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise MediaRejected(
            f"{path.name} decoded to no audio samples; send a file with audible audio.",
            detail=stderr[-2000:],
        )
    return samples


def compute_beat_grid(path: Path) -> BeatGrid:
    """Decode the song at `path` and return its beat grid.

    Raises
    ------
    MediaRejected
        The file has no decodable audio, or the audio is silent.
    """
    samples = decode_mono(path, SAMPLE_RATE)
    grid = track_beats(samples, SAMPLE_RATE)
    logger.info(
        "beat grid computed",
        extra={
            "file": path.name,
            "tempo": round(grid.tempo, 2),
            "beats": len(grid.beats),
            "first_beat": round(grid.first_beat, 3),
        },
    )
    return grid


def track_beats(samples: np.ndarray, sample_rate: int) -> BeatGrid:
    """Find tempo, beats, downbeats and per-beat energy in mono PCM samples.

    Raises
    ------
    MediaRejected
        The audio is silent (no frame reaches -50 dBFS) or empty.
    """
    samples = np.asarray(samples, dtype=np.float32)
    duration = samples.size / sample_rate
    if samples.size == 0 or not np.isfinite(samples).all():
        raise MediaRejected("The audio decoded to no usable samples.")

    hop = max(32, round(sample_rate * HOP_SECONDS))
    frame_rate = sample_rate / hop
    envelope, bass = _onset_envelopes(samples, sample_rate, hop)
    level_db = _frame_levels(samples, hop, envelope.size)

    start, stop = _music_range(level_db, frame_rate)
    if stop - start < 2:
        raise MediaRejected(
            f"The audio is silent: no part of it reaches {SILENCE_DBFS:.0f} dBFS; "
            "send a song with audible music."
        )
    music_start = start / frame_rate
    music_stop = stop / frame_rate

    # Analyse from a few frames before the first onset, so its envelope peak is kept.
    margin = round(0.1 * frame_rate)
    lo = max(0, start - margin)
    hi = min(envelope.size, stop + margin)
    onset = _normalize(envelope[lo:hi])

    tempo = _estimate_tempo(onset, frame_rate)
    periods = _local_periods(onset, frame_rate, 60.0 * frame_rate / tempo)
    beat_frames = _track(onset, periods) + lo
    beats = beat_frames / frame_rate

    # Keep beats inside the music; the tracker may put one just before the first onset.
    tolerance = 0.05
    beats = beats[(beats >= music_start - tolerance) & (beats <= music_stop + tolerance)]
    if beats.size < 2:
        beats = _fallback_beats(music_start, max(music_stop, duration))
    beats = np.clip(beats, 0.0, duration)

    tempo_bpm = 60.0 * (beats.size - 1) / float(beats[-1] - beats[0])
    energy = _beat_energy(samples, sample_rate, beats)
    downbeats = _downbeats(beats, bass, frame_rate, energy)
    return BeatGrid(
        duration=duration,
        tempo=tempo_bpm,
        beats=[round(float(beat), 4) for beat in beats],
        downbeats=[round(float(beat), 4) for beat in downbeats],
        energy=[round(float(value), 4) for value in energy],
        first_beat=round(float(beats[0]), 4),
        last_beat=round(float(beats[-1]), 4),
    )


# ----- onset envelope -------------------------------------------------------------------


def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale, shape (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    fmax = min(sample_rate / 2.0, 11025.0)
    edges = mel_to_hz(np.linspace(hz_to_mel(30.0), hz_to_mel(fmax), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    rising = (bins[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - bins[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _onset_envelopes(samples: np.ndarray, sample_rate: int, hop: int) -> tuple[np.ndarray, ...]:
    """Return the onset strength per frame, all bands and bass bands (below ~200 Hz).

    Frame `i` is centred on sample `i * hop`. The spectrogram is made in blocks, so memory
    stays bounded for long songs.
    """
    n_fft = 1 << int(np.ceil(np.log2(4 * hop)))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    filters = _mel_filterbank(sample_rate, n_fft, N_MELS)
    padded = np.pad(samples, (n_fft // 2, n_fft // 2))
    frame_count = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:frame_count]

    mel = np.empty((frame_count, N_MELS), dtype=np.float32)
    block = 4096
    for first in range(0, frame_count, block):
        spectrum = np.fft.rfft(frames[first : first + block] * window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        mel[first : first + block] = power @ filters.T

    # Log compression with an 80 dB floor below the loudest band, as in librosa's
    # power_to_db(top_db=80).
    log_mel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 80.0)
    flux = np.maximum(0.0, np.diff(log_mel, axis=0, prepend=log_mel[:1]))

    centres = _mel_centres(sample_rate)
    bass_bands = centres < 200.0
    return flux.mean(axis=1), flux[:, bass_bands].mean(axis=1)


def _mel_centres(sample_rate: int) -> np.ndarray:
    low = 2595.0 * np.log10(1.0 + 30.0 / 700.0)
    high = 2595.0 * np.log10(1.0 + min(sample_rate / 2.0, 11025.0) / 700.0)
    return 700.0 * (10.0 ** (np.linspace(low, high, N_MELS + 2)[1:-1] / 2595.0) - 1.0)


def _frame_levels(samples: np.ndarray, hop: int, frame_count: int) -> np.ndarray:
    """RMS level in dBFS of `hop`-long blocks centred on each envelope frame."""
    padded = np.pad(samples, (hop // 2, frame_count * hop))[: frame_count * hop]
    power = (padded.reshape(frame_count, hop).astype(np.float64) ** 2).mean(axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def _music_range(level_db: np.ndarray, frame_rate: float) -> tuple[int, int]:
    """Return the first and one-past-last frame where the music is audible.

    The level is smoothed over about 50 ms, so one stray click does not start the music.
    The threshold is -50 dBFS, or 30 dB below the loud parts of a very quiet recording.
    """
    width = max(1, round(0.05 * frame_rate))
    power = np.convolve(10.0 ** (level_db / 10.0), np.ones(width) / width, mode="same")
    smooth_db = 10.0 * np.log10(np.maximum(power, 1e-20))
    loud = float(np.percentile(smooth_db, 95))
    threshold = min(SILENCE_DBFS, loud - 30.0)
    audible = np.flatnonzero(smooth_db > threshold)
    if audible.size == 0:
        return 0, 0
    # `mode="same"` spreads a rise over half the window, so step back to the first frame
    # that is itself above the threshold.
    first = int(audible[0])
    while first + 1 < level_db.size and level_db[first] <= threshold and first < audible[0] + width:
        first += 1
    return first, int(audible[-1]) + 1


def _normalize(envelope: np.ndarray) -> np.ndarray:
    """Remove the slow trend (about 1 s moving average) and scale to unit deviation."""
    width = 87
    if envelope.size > width:
        trend = np.convolve(envelope, np.ones(width) / width, mode="same")
        envelope = np.maximum(0.0, envelope - trend)
    deviation = float(envelope.std())
    return envelope / deviation if deviation > 0 else envelope


# ----- tempo ----------------------------------------------------------------------------


def _autocorrelation(envelope: np.ndarray, max_lag: int) -> np.ndarray:
    centred = envelope - envelope.mean()
    size = 1 << int(np.ceil(np.log2(2 * centred.size)))
    spectrum = np.fft.rfft(centred, size)
    correlation = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size)[: max_lag + 1]
    # Unbiased: each lag is summed over fewer products.
    overlap = np.maximum(1, centred.size - np.arange(max_lag + 1))
    return correlation / overlap


def _peak_lag(values: np.ndarray, lags: np.ndarray) -> float:
    """Lag of the highest value, refined by a parabola through its neighbours."""
    best = int(np.argmax(values))
    if 0 < best < values.size - 1:
        left, centre, right = values[best - 1], values[best], values[best + 1]
        curvature = left - 2 * centre + right
        if curvature < 0:
            return float(lags[best] + 0.5 * (left - right) / curvature)
    return float(lags[best])


def _estimate_tempo(envelope: np.ndarray, frame_rate: float) -> float:
    """Global tempo in BPM: the autocorrelation peak weighted by a log-normal prior."""
    min_lag = int(np.floor(60.0 * frame_rate / TEMPO_MAX_BPM))
    max_lag = int(np.ceil(60.0 * frame_rate / TEMPO_MIN_BPM))
    if envelope.size <= max_lag + 2:
        return FALLBACK_BPM
    correlation = _autocorrelation(envelope, max_lag + 1)
    lags = np.arange(min_lag, max_lag + 1)
    bpm = 60.0 * frame_rate / lags
    prior = np.exp(-0.5 * (np.log2(bpm / TEMPO_PRIOR_BPM) / TEMPO_PRIOR_OCTAVES) ** 2)
    weighted = np.maximum(correlation[lags], 0.0) * prior
    if not np.any(weighted > 0):
        return FALLBACK_BPM
    lag = _peak_lag(weighted, lags)
    return float(np.clip(60.0 * frame_rate / lag, TEMPO_MIN_BPM, TEMPO_MAX_BPM))


def _local_periods(envelope: np.ndarray, frame_rate: float, period: float) -> np.ndarray:
    """Beat period in frames for every envelope frame, following slow tempo changes.

    Each window's autocorrelation peak is searched within LOCAL_MAX_DEVIATION of the
    global period. The window estimates are median-filtered and interpolated per frame.
    """
    count = envelope.size
    window = round(LOCAL_WINDOW_SECONDS * frame_rate)
    step = round(LOCAL_HOP_SECONDS * frame_rate)
    if count < window + step:
        return np.full(count, period)

    lo = max(1, int(np.floor(period * (1 - LOCAL_MAX_DEVIATION))))
    hi = int(np.ceil(period * (1 + LOCAL_MAX_DEVIATION)))
    lags = np.arange(lo, hi + 1)
    # A gentle preference for the global period keeps noisy windows near it.
    prior = np.exp(-0.5 * (np.log(lags / period) / 0.05) ** 2)
    centres: list[float] = []
    estimates: list[float] = []
    for first in range(0, count - window + 1, step):
        segment = envelope[first : first + window]
        correlation = _autocorrelation(segment, hi + 1)[lags]
        weighted = np.maximum(correlation, 0.0) * prior
        centres.append(first + window / 2)
        estimates.append(_peak_lag(weighted, lags) if np.any(weighted > 0) else period)

    smoothed = _median_filter(np.asarray(estimates), 5)
    return np.interp(np.arange(count), np.asarray(centres), smoothed)


def _median_filter(values: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


# ----- beats ----------------------------------------------------------------------------


def _track(envelope: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """Dynamic-programming beat tracker (Ellis 2007) with a per-frame beat period.

    Returns beat positions in frames (float, refined to the envelope peak).
    """
    count = envelope.size
    # Smooth the onsets with a Gaussian about 1/32 of a period wide, as Ellis does.
    mean_period = float(np.mean(periods))
    half = max(1, round(mean_period))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * 32.0 / mean_period) ** 2)
    local = np.convolve(envelope, kernel, mode="same")

    score = np.zeros(count)
    backlink = np.full(count, -1, dtype=np.int64)
    started = False
    threshold = 0.01 * float(local.max()) if count else 0.0
    for frame in range(count):
        period = periods[frame]
        earliest = frame - round(2 * period)
        latest = frame - round(period / 2)
        best_score = 0.0
        if latest >= 0 and started:
            earliest = max(earliest, 0)
            previous = np.arange(earliest, latest + 1)
            penalty = -TIGHTNESS * np.log((frame - previous) / period) ** 2
            candidates = score[earliest : latest + 1] + penalty
            best = int(np.argmax(candidates))
            best_score = float(candidates[best])
            backlink[frame] = earliest + best
        score[frame] = local[frame] + best_score
        if not started and local[frame] >= threshold:
            started = True

    last = _last_beat(score, periods)
    frames: list[int] = []
    while last >= 0:
        frames.append(last)
        last = int(backlink[last])
    frames.reverse()
    return np.asarray(frames, dtype=np.float64)


def _last_beat(score: np.ndarray, periods: np.ndarray) -> int:
    """The last local maximum of the cumulative score that is not a weak tail."""
    if score.size < 3:
        return int(np.argmax(score)) if score.size else -1
    peaks = np.flatnonzero((score[1:-1] > score[:-2]) & (score[1:-1] >= score[2:])) + 1
    if peaks.size == 0:
        return int(np.argmax(score))
    # Only the last period matters: take its strongest peak.
    tail = peaks[peaks >= score.size - 1 - round(periods[-1])]
    if tail.size == 0:
        tail = peaks[-1:]
    return int(tail[np.argmax(score[tail])])


def _fallback_beats(start: float, stop: float) -> np.ndarray:
    period = 60.0 / FALLBACK_BPM
    count = max(2, int((stop - start) / period) + 1)
    return start + period * np.arange(count)


# ----- energy and downbeats -------------------------------------------------------------


def _beat_energy(samples: np.ndarray, sample_rate: int, beats: np.ndarray) -> np.ndarray:
    """RMS level of each beat's span (to the next beat), mapped to 0..1 over the song.

    The quietest 5 % of beats map to 0 and the loudest 5 % to 1 (linear in dB).
    """
    edges = np.append(beats, beats[-1] + (beats[-1] - beats[-2]))
    bounds = np.clip(np.round(edges * sample_rate).astype(np.int64), 0, samples.size)
    squares = np.concatenate(([0.0], np.cumsum(samples.astype(np.float64) ** 2)))
    lengths = np.maximum(1, bounds[1:] - bounds[:-1])
    power = (squares[bounds[1:]] - squares[bounds[:-1]]) / lengths
    level = 10.0 * np.log10(np.maximum(power, 1e-12))
    low, high = np.percentile(level, [5, 95])
    if high - low < 1.0:
        return np.full(beats.size, 0.5)
    return np.clip((level - low) / (high - low), 0.0, 1.0)


def _downbeats(
    beats: np.ndarray, bass: np.ndarray, frame_rate: float, energy: np.ndarray
) -> np.ndarray:
    """Every 4th beat, starting at the phase with the most bass onset energy.

    Kick drums and bass notes tend to land on the first beat of a bar. Per-beat energy
    breaks ties.
    """
    if beats.size < BEATS_PER_BAR:
        return beats[:1]
    frames = np.clip(np.round(beats * frame_rate).astype(np.int64), 0, bass.size - 1)
    accents = np.array(
        [bass[max(0, frame - 2) : frame + 3].max() for frame in frames], dtype=np.float64
    )
    strength = accents / (accents.max() or 1.0) + 0.1 * energy
    phase_scores = [strength[phase::BEATS_PER_BAR].mean() for phase in range(BEATS_PER_BAR)]
    phase = int(np.argmax(phase_scores))
    return beats[phase::BEATS_PER_BAR]
