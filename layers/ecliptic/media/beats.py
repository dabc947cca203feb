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
from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD, ffmpeg_exe
from ecliptic.models import BeatGrid

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050
DECODE_TIMEOUT_SECONDS = 180.0
# Decoding stops here. Twenty minutes of float32 mono at 22050 Hz is about 106 MB, and the
# API caps a montage at 600 s of music.
MAX_ANALYSIS_SECONDS = 1200.0

HOP_SECONDS = 256 / 22050  # about 11.6 ms between onset-envelope frames
N_MELS = 64
TEMPO_MIN_BPM = 60.0
TEMPO_MAX_BPM = 200.0
TEMPO_PRIOR_BPM = 120.0
TEMPO_PRIOR_OCTAVES = 1.0
# Weight of the beat-period penalty in the dynamic program (librosa's `beat_track` default).
TIGHTNESS = 100.0
# Frames quieter than this (RMS, dBFS) count as silence.
SILENCE_DBFS = -50.0
QUIET_FLOOR_DBFS = -80.0
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
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner"]
    # local file only, from a known demuxer; an absolute path is never read as a protocol
    args += [*FFMPEG_INPUT_GUARD, "-i", str(path.resolve())]
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
        The audio is empty, silent (never louder than -80 dBFS) or shorter than two beats
        at 120 BPM.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise MediaRejected("The audio decoded to no samples; send a file with audible audio.")
    if not np.isfinite(samples).all():
        # Float WAV files can carry NaN or infinite samples. Treat them as silence.
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    duration = samples.size / sample_rate

    hop = max(32, round(sample_rate * HOP_SECONDS))
    frame_rate = sample_rate / hop
    bands = _band_onsets(samples, sample_rate, hop)
    envelope = _combine_bands(bands)
    bass = bands[:, 0]
    level_db = _frame_levels(samples, hop, envelope.size)

    start, stop = _music_range(level_db, frame_rate)
    if stop - start < 2:
        raise MediaRejected(
            f"The audio is silent (never louder than {QUIET_FLOOR_DBFS:.0f} dBFS); "
            "send a song with audible music."
        )
    music_start = start / frame_rate
    music_stop = stop / frame_rate

    # Analyse from a few frames before the first onset, so its envelope peak is kept.
    margin = round(0.1 * frame_rate)
    lo = max(0, start - margin)
    hi = min(envelope.size, stop + margin)
    onset = _normalize(envelope[lo:hi], frame_rate)

    _, periods = _estimate_periods(onset, frame_rate)
    beat_frames = _track(onset, periods) + lo
    beats = beat_frames.astype(np.float64) / frame_rate

    # Keep beats inside the music, because the tracker may put one just before the first
    # onset.
    tolerance = 0.05
    beats = beats[(beats >= music_start - tolerance) & (beats <= music_stop + tolerance)]
    if beats.size < 2:
        beats = _fallback_beats(music_start, music_stop, duration)
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


def _band_onsets(samples: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Return the onset strength per frame in three bands: below 200 Hz, to 2 kHz, above.

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
    floor = log_mel.max() - 80.0
    log_mel = np.maximum(log_mel, floor)
    # The file starts after silence: sound at sample 0 is an onset.
    silence = np.full((1, N_MELS), floor, dtype=log_mel.dtype)
    flux = np.maximum(0.0, np.diff(log_mel, axis=0, prepend=silence))
    # Frames whose window reaches past the last sample see the cut to zero padding as a
    # broadband click, not as music.
    flux[max(0, frame_count - n_fft // (2 * hop)) :] = 0.0

    centres = _mel_centres(sample_rate)
    groups = [centres < 200.0, (centres >= 200.0) & (centres < 2000.0), centres >= 2000.0]
    return np.stack([flux[:, group].mean(axis=1) for group in groups], axis=1)


def _combine_bands(bands: np.ndarray) -> np.ndarray:
    """Average the band onsets, each scaled to unit deviation.

    Without the scaling, hi-hats dominate a band average of log-mel flux (they raise many
    high bands at once), and their eighth notes pull the tempo to double time. A band
    with almost no onsets is not scaled up beyond a tenth of the liveliest band.
    """
    deviation = bands.std(axis=0)
    floor = 0.1 * float(deviation.max()) if bands.size else 0.0
    if floor <= 0:
        return bands.mean(axis=1) if bands.size else np.zeros(bands.shape[0])
    return (bands / np.maximum(deviation, floor)).mean(axis=1)


def _mel_centres(sample_rate: int) -> np.ndarray:
    low = 2595.0 * np.log10(1.0 + 30.0 / 700.0)
    high = 2595.0 * np.log10(1.0 + min(sample_rate / 2.0, 11025.0) / 700.0)
    return 700.0 * (10.0 ** (np.linspace(low, high, N_MELS + 2)[1:-1] / 2595.0) - 1.0)


def _frame_levels(samples: np.ndarray, hop: int, frame_count: int) -> np.ndarray:
    """RMS level in dBFS of `hop`-long blocks centred on each envelope frame."""
    # Frame i covers samples [i * hop - hop / 2, i * hop + hop / 2).
    padded = np.pad(samples, (hop // 2, hop + hop // 2))[: frame_count * hop]
    padded = np.pad(padded, (0, frame_count * hop - padded.size))
    power = (padded.reshape(frame_count, hop) ** 2).mean(axis=1, dtype=np.float64)
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def _music_range(level_db: np.ndarray, frame_rate: float) -> tuple[int, int]:
    """Return the first and one-past-last frame where the music is audible.

    The level is smoothed over about 50 ms, so one stray click does not start the music.
    The threshold is -50 dBFS, or 30 dB below the loud parts (95th percentile) of a quiet
    recording, but never below -80 dBFS.
    """
    width = max(1, round(0.05 * frame_rate))
    power = np.convolve(10.0 ** (level_db / 10.0), np.ones(width) / width, mode="same")
    smooth_db = 10.0 * np.log10(np.maximum(power, 1e-20))
    loud = float(np.percentile(smooth_db, 95))
    threshold = max(QUIET_FLOOR_DBFS, min(SILENCE_DBFS, loud - 30.0))
    audible = np.flatnonzero(smooth_db > threshold)
    if audible.size == 0:
        return 0, 0
    # Centred smoothing lifts the level up to half a window before the onset, so start at
    # the first frame that is itself above the threshold.
    first = int(audible[0])
    loud_frames = np.flatnonzero(level_db[first:] > threshold)
    if loud_frames.size:
        first += int(loud_frames[0])
    return first, int(audible[-1]) + 1


def _normalize(envelope: np.ndarray, frame_rate: float) -> np.ndarray:
    """Remove the slow trend (1 s moving average) and scale to unit deviation."""
    width = round(frame_rate)
    if envelope.size > width:
        trend = np.convolve(envelope, np.ones(width) / width, mode="same")
        envelope = np.maximum(0.0, envelope - trend)
    deviation = float(envelope.std())
    return envelope / deviation if deviation > 0 else envelope


# ----- tempo ----------------------------------------------------------------------------


def _tempogram(envelope: np.ndarray, frame_rate: float, max_lag: int) -> tuple[np.ndarray, ...]:
    """Autocorrelation of overlapping windows of the onset envelope.

    Returns the window centres (frames) and one row per window for lags 0..max_lag. Each
    row is unbiased (divided by the number of overlapping products) and scaled so its lag
    0 is 1, so quiet and loud passages weigh the same.
    """
    window = min(envelope.size, round(LOCAL_WINDOW_SECONDS * frame_rate))
    step = round(LOCAL_HOP_SECONDS * frame_rate)
    starts = np.arange(0, envelope.size - window + 1, step)
    windows = np.lib.stride_tricks.sliding_window_view(envelope, window)[starts]
    windows = windows - windows.mean(axis=1, keepdims=True)

    size = 1 << int(np.ceil(np.log2(2 * window)))
    spectrum = np.fft.rfft(windows, size, axis=1)
    correlation = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size, axis=1)
    correlation = correlation[:, : max_lag + 1]
    correlation /= np.maximum(1, window - np.arange(max_lag + 1))
    energy = correlation[:, :1]
    correlation = np.divide(correlation, energy, out=np.zeros_like(correlation), where=energy > 0)
    return starts + window / 2, correlation


def _peak_lag(values: np.ndarray, lags: np.ndarray) -> float:
    """Lag of the highest value, refined by a parabola through its neighbours."""
    best = int(np.argmax(values))
    if 0 < best < values.size - 1:
        left, centre, right = values[best - 1], values[best], values[best + 1]
        curvature = left - 2 * centre + right
        if curvature < 0:
            return float(lags[best] + 0.5 * (left - right) / curvature)
    return float(lags[best])


def _estimate_periods(envelope: np.ndarray, frame_rate: float) -> tuple[float, np.ndarray]:
    """Return the global tempo (BPM) and the beat period (frames) at every frame.

    The global tempo is the peak of the mean windowed autocorrelation, weighted by a
    log-normal prior around 120 BPM. Each window then picks its own peak within
    LOCAL_MAX_DEVIATION of the global period. The window estimates are median-filtered
    over 5 windows and interpolated per frame, so a slow tempo ramp is followed.
    """
    min_lag = int(np.floor(60.0 * frame_rate / TEMPO_MAX_BPM))
    max_lag = int(np.ceil(60.0 * frame_rate / TEMPO_MIN_BPM))
    fallback = 60.0 * frame_rate / FALLBACK_BPM
    if envelope.size <= max_lag + 2:
        return FALLBACK_BPM, np.full(envelope.size, fallback)
    centres, correlation = _tempogram(envelope, frame_rate, max_lag + 1)

    lags = np.arange(min_lag, max_lag + 1)
    bpm = 60.0 * frame_rate / lags
    prior = np.exp(-0.5 * (np.log2(bpm / TEMPO_PRIOR_BPM) / TEMPO_PRIOR_OCTAVES) ** 2)
    weighted = np.maximum(correlation[:, lags].mean(axis=0), 0.0) * prior
    if not np.any(weighted > 0):
        return FALLBACK_BPM, np.full(envelope.size, fallback)
    period = _peak_lag(weighted, lags)
    tempo = float(np.clip(60.0 * frame_rate / period, TEMPO_MIN_BPM, TEMPO_MAX_BPM))
    period = 60.0 * frame_rate / tempo
    if centres.size < 2:
        return tempo, np.full(envelope.size, period)

    lo = max(1, int(np.floor(period * (1 - LOCAL_MAX_DEVIATION))))
    hi = min(max_lag + 1, int(np.ceil(period * (1 + LOCAL_MAX_DEVIATION))))
    near = np.arange(lo, hi + 1)
    # A gentle preference for the global period keeps windows without a clear beat near it.
    local_prior = np.exp(-0.5 * (np.log(near / period) / 0.05) ** 2)
    estimates = []
    for row in correlation[:, near]:
        local = np.maximum(row, 0.0) * local_prior
        estimates.append(_peak_lag(local, near) if np.any(local > 0) else period)
    smoothed = _median_filter(np.asarray(estimates), 5)
    return tempo, np.interp(np.arange(envelope.size), centres, smoothed)


def _median_filter(values: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


# ----- beats ----------------------------------------------------------------------------


def _track(envelope: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """Dynamic-programming beat tracker (Ellis 2007) with a per-frame beat period.

    Returns beat positions in frames.
    """
    count = envelope.size
    # Smooth the onsets with a Gaussian 1/32 of a period wide, as librosa's tracker does.
    mean_period = float(np.mean(periods))
    half = max(1, round(mean_period))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * 32.0 / mean_period) ** 2)
    local = np.convolve(envelope, kernel, mode="same")

    # Penalty for each candidate distance back to the previous beat, from 2 periods
    # down to half a period, cached per period (rounded to 1/100 frame).
    penalties: dict[float, np.ndarray] = {}
    rounded = np.round(periods, 2)

    score = np.zeros(count)
    backlink = np.full(count, -1, dtype=np.int64)
    for frame in range(count):
        period = float(rounded[frame])
        penalty = penalties.get(period)
        if penalty is None:
            distances = np.arange(round(2 * period), round(period / 2) - 1, -1)
            penalty = -TIGHTNESS * np.log(distances / period) ** 2
            penalties[period] = penalty
        latest = frame - round(period / 2)
        best_score = 0.0
        if latest >= 0:
            earliest = latest - penalty.size + 1
            skip = max(0, -earliest)
            candidates = score[earliest + skip : latest + 1] + penalty[skip:]
            best = int(candidates.argmax())
            # A chain whose best link costs more than it earned starts afresh here, so
            # the first beat of the music is not tied to noise before it.
            if candidates[best] > 0:
                best_score = float(candidates[best])
                backlink[frame] = earliest + skip + best
        score[frame] = local[frame] + best_score

    last = _last_beat(score, periods)
    frames: list[int] = []
    while last >= 0:
        frames.append(last)
        last = int(backlink[last])
    frames.reverse()
    return _trim_weak_ends(np.asarray(frames, dtype=np.int64), local)


def _trim_weak_ends(frames: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Drop leading and trailing beats with a weak onset (under 25 % of the median).

    The dynamic program extends a chain over silence at no cost, so without this the grid
    would run a beat or two past the end of the music.
    """
    if frames.size < 3:
        return frames
    strength = local[frames]
    floor = 0.25 * float(np.median(strength))
    strong = np.flatnonzero(strength >= floor)
    if strong.size < 2:
        return frames
    return frames[strong[0] : strong[-1] + 1]


def _last_beat(score: np.ndarray, periods: np.ndarray) -> int:
    """Frame of the highest cumulative score within the last two beat periods.

    Two periods, not one, so a final on-beat hit just before the end is preferred over an
    off-beat sound in the fading tail.
    """
    if score.size == 0:
        return -1
    first = max(0, score.size - round(2 * float(periods[-1])))
    return first + int(np.argmax(score[first:]))


def _fallback_beats(start: float, stop: float, duration: float) -> np.ndarray:
    """Return a 120 BPM grid over the music, for music too short or sparse to track.

    Raises
    ------
    MediaRejected
        Not even two beats at 120 BPM fit in the audio.
    """
    period = 60.0 / FALLBACK_BPM
    count = int((max(stop, start + period) - start) / period) + 1
    beats = start + period * np.arange(count)
    beats = beats[beats <= duration]
    if beats.size < 2:
        raise MediaRejected(
            f"The song is too short to cut to: {duration:.2f} s with music from "
            f"{start:.2f} s. Send at least {2 * period:.0f} s of music."
        )
    return beats


# ----- energy and downbeats -------------------------------------------------------------


def _beat_energy(samples: np.ndarray, sample_rate: int, beats: np.ndarray) -> np.ndarray:
    """RMS level of each beat's span (to the next beat), mapped to 0..1 over the song.

    The quietest 5 % of beats map to 0 and the loudest 5 % to 1 (linear in dB).
    """
    edges = np.append(beats, beats[-1] + (beats[-1] - beats[-2]))
    bounds = np.clip(np.round(edges * sample_rate).astype(np.int64), 0, samples.size)
    power = np.zeros(beats.size)
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        span = samples[start:stop].astype(np.float64)
        if span.size:
            power[index] = float(np.dot(span, span)) / span.size
    level = 10.0 * np.log10(np.maximum(power, 1e-12))
    low, high = np.percentile(level, [5, 95])
    if high - low < 1.0:
        return np.full(beats.size, 0.5)
    return np.clip((level - low) / (high - low), 0.0, 1.0)


def _downbeats(
    beats: np.ndarray, bass: np.ndarray, frame_rate: float, energy: np.ndarray
) -> np.ndarray:
    """Pick every 4th beat, starting at the phase with the most bass onset energy.

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
