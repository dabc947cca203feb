"""The beat-grid planner: tiling, beat-aligned cuts, length caps and clip windows."""

from __future__ import annotations

import json
import logging

import pytest

from ecliptic.errors import PlanFailed
from ecliptic.models import Analysis, BeatGrid, ClipFacts, MediaInfo, MontagePlan
from ecliptic.planner import (
    MIN_SEGMENT_SECONDS,
    BeatSpan,
    plan_beat_grid,
    segments_from_beat_spans,
    summarize_plan,
)

FPS = 30


def make_grid(
    bpm: float,
    *,
    first_beat: float = 0.5,
    music_seconds: float = 30.0,
    tail_seconds: float = 1.0,
    energy: list[float] | None = None,
) -> BeatGrid:
    """A steady grid from `first_beat`, with the song ending `tail_seconds` after the music."""
    period = 60.0 / bpm
    count = int(music_seconds / period) + 1
    beats = [first_beat + index * period for index in range(count)]
    levels = energy or [0.5] * count
    return BeatGrid(
        duration=beats[-1] + tail_seconds,
        tempo=bpm,
        beats=beats,
        downbeats=beats[::4],
        energy=[levels[index % len(levels)] for index in range(count)],
        first_beat=beats[0],
        last_beat=beats[-1],
    )


def make_analysis(grid: BeatGrid, clip_seconds: list[float]) -> Analysis:
    audio = MediaInfo(format_name="mp3", duration=grid.duration, has_video=False, has_audio=True)
    clips = [
        ClipFacts(
            index=index,
            asset_id=f"asset-{index}",
            key=f"media/asset-{index}.mp4",
            info=MediaInfo(
                format_name="mov,mp4,m4a,3gp,3g2,mj2",
                duration=seconds,
                has_video=True,
                has_audio=False,
                width=1280,
                height=720,
                fps=30.0,
            ),
        )
        for index, seconds in enumerate(clip_seconds)
    ]
    return Analysis(
        job_id="job-test",
        audio_asset_id="asset-song",
        audio_key="media/asset-song.mp3",
        audio=audio,
        beat_grid=grid,
        clips=clips,
    )


def plan(analysis: Analysis, **options: object) -> MontagePlan:
    settings: dict[str, object] = {"width": 1280, "height": 720, "fps": FPS, "max_duration": 180.0}
    settings.update(options)
    return plan_beat_grid(analysis, **settings)  # type: ignore[arg-type]


# ----- tiling and beat alignment --------------------------------------------------------


PLAN_CASES = [
    pytest.param(97.0, 30, [10.0, 12.0, 8.0], id="97bpm-30fps"),
    pytest.param(128.0, 30, [20.0], id="128bpm-one-clip"),
    pytest.param(174.0, 24, [5.0, 40.0], id="174bpm-24fps"),
    pytest.param(62.0, 60, [7.0, 7.0, 7.0, 7.0], id="62bpm-60fps"),
    pytest.param(118.5, 25, [3.3, 9.1], id="118.5bpm-25fps"),
]


@pytest.mark.parametrize(("bpm", "fps", "clips"), PLAN_CASES)
def test_plan_tiles_output(bpm: float, fps: int, clips: list[float]) -> None:
    """Segments cover [0, total_frames) in order with no gap or overlap."""
    analysis = make_analysis(make_grid(bpm), clips)

    result = plan(analysis, fps=fps)

    assert result.segments[0].start_frame == 0
    for previous, segment in zip(result.segments, result.segments[1:], strict=False):
        assert segment.start_frame == previous.end_frame
        assert segment.beat_start == previous.beat_end
    assert result.segments[-1].end_frame == result.total_frames
    assert MontagePlan.model_validate(result.model_dump()) == result


@pytest.mark.parametrize(("bpm", "fps", "clips"), PLAN_CASES)
def test_plan_cuts_on_beat_frames(bpm: float, fps: int, clips: list[float]) -> None:
    """Every cut is at round((beat - audio_start) * fps) of the beat it names."""
    analysis = make_analysis(make_grid(bpm), clips)
    beats = analysis.beat_grid.beats

    result = plan(analysis, fps=fps)

    assert result.audio_start == analysis.beat_grid.first_beat
    for segment in result.segments:
        expected = round((beats[segment.beat_start] - result.audio_start) * fps)
        assert segment.start_frame == expected
    for segment in result.segments[:-1]:
        assert segment.end_frame == round((beats[segment.beat_end] - result.audio_start) * fps)


@pytest.mark.parametrize(("bpm", "fps", "clips"), PLAN_CASES)
def test_plan_segment_lengths(bpm: float, fps: int, clips: list[float]) -> None:
    """Segments span 2, 4 or 8 beats of 0.5 to 3 s, with a median of 1 to 2.5 s."""
    analysis = make_analysis(make_grid(bpm), clips)

    result = plan(analysis, fps=fps)

    inner = result.segments[1:-1]  # the first may run to a downbeat, the last to the end
    assert {segment.beat_end - segment.beat_start for segment in inner} <= {2, 4, 8}
    seconds = sorted(segment.frames / fps for segment in result.segments)
    assert seconds[0] >= MIN_SEGMENT_SECONDS - 1 / fps
    assert all(segment.frames / fps <= 3.0 + 1 / fps for segment in inner)
    assert 1.0 <= seconds[len(seconds) // 2] <= 2.5


def test_plan_no_drift_three_minutes() -> None:
    """Over 3 minutes at 97 BPM, every cut stays within half a frame of its beat."""
    analysis = make_analysis(make_grid(97.0, music_seconds=185.0), [30.0, 45.0])
    beats = analysis.beat_grid.beats

    result = plan(analysis, max_duration=180.0)

    assert result.total_frames == 180 * FPS
    assert len(result.segments) > 60
    for segment in result.segments:
        song_time = beats[segment.beat_start] - result.audio_start
        assert abs(segment.start_frame / FPS - song_time) <= 0.5 / FPS + 1e-9
    # Adding rounded segment lengths would drift; the last cut must still sit on its beat.
    last = result.segments[-1]
    assert last.start_frame == round((beats[last.beat_start] - result.audio_start) * FPS)


def test_plan_length_is_song_from_first_beat() -> None:
    """Without caps the plan runs from the first beat to one beat after the last one."""
    grid = make_grid(120.0, first_beat=8.9, music_seconds=20.0, tail_seconds=3.0)
    analysis = make_analysis(grid, [10.0])

    result = plan(analysis)

    assert result.audio_start == pytest.approx(8.9)
    expected = grid.last_beat + 0.5 - grid.first_beat
    assert result.total_frames == round(expected * FPS)


def test_plan_length_stops_at_song_end() -> None:
    """A song that ends on its last beat ends the plan there."""
    grid = make_grid(120.0, music_seconds=20.0, tail_seconds=0.1)
    analysis = make_analysis(grid, [10.0])

    result = plan(analysis)

    assert result.total_frames == round((grid.duration - grid.first_beat) * FPS)


def test_plan_respects_max_duration() -> None:
    """A song longer than the cap is cut at the cap."""
    analysis = make_analysis(make_grid(128.0, music_seconds=300.0), [12.0, 9.0])

    result = plan(analysis, max_duration=60.0)

    assert result.total_frames == 60 * FPS
    assert result.duration == pytest.approx(60.0)


@pytest.mark.parametrize("seconds", [3.0, 7.5, 15.0, 29.0])
def test_plan_respects_duration_seconds(seconds: float) -> None:
    """durationSeconds sets the length when the song is long enough."""
    analysis = make_analysis(make_grid(100.0, music_seconds=40.0), [6.0, 8.0])

    result = plan(analysis, duration_seconds=seconds)

    assert result.total_frames == round(seconds * FPS)
    assert result.segments[-1].end_frame == result.total_frames


def test_plan_duration_seconds_beyond_song() -> None:
    """Asking for more than the song has gives the whole song, not more."""
    grid = make_grid(100.0, music_seconds=20.0, tail_seconds=2.0)
    analysis = make_analysis(grid, [6.0])

    result = plan(analysis, duration_seconds=120.0)

    assert result.duration <= grid.duration - grid.first_beat
    assert result.duration == pytest.approx(grid.last_beat + 0.6 - grid.first_beat, abs=0.05)


def test_plan_short_song_single_segment() -> None:
    """A song with two beats still gets a plan."""
    grid = BeatGrid(duration=1.5, tempo=120.0, beats=[0.2, 0.7], first_beat=0.2, last_beat=0.7)
    analysis = make_analysis(grid, [4.0])

    result = plan(analysis)

    assert result.total_frames == round(1.0 * FPS)
    assert result.segments[-1].end_frame == result.total_frames


def test_plan_rejects_empty_song() -> None:
    """A grid whose first beat is the end of the song leaves nothing to plan."""
    grid = BeatGrid(duration=1.0, tempo=120.0, beats=[0.5, 1.0], first_beat=1.0, last_beat=1.0)
    analysis = make_analysis(grid, [4.0])

    with pytest.raises(PlanFailed, match="no music"):
        plan(analysis)


def test_plan_energy_sets_segment_length() -> None:
    """Loud passages get shorter segments than quiet ones."""
    quiet = plan(make_analysis(make_grid(120.0, energy=[0.0]), [30.0]))
    loud = plan(make_analysis(make_grid(120.0, energy=[1.0]), [30.0]))

    assert len(loud.segments) > len(quiet.segments)
    assert max(s.frames for s in loud.segments[1:-1]) <= 1.0 * FPS
    assert min(s.frames for s in quiet.segments[1:-1]) >= 2.0 * FPS


def test_plan_first_cut_on_downbeat() -> None:
    """When the first downbeat comes a beat late, the first cut waits for it."""
    grid = make_grid(120.0)
    grid = grid.model_copy(update={"downbeats": grid.beats[1::4]})
    analysis = make_analysis(grid, [30.0])

    result = plan(analysis)

    assert result.segments[0].beat_end == 1
    assert all((segment.beat_start - 1) % 2 == 0 for segment in result.segments[1:])


# ----- clips ----------------------------------------------------------------------------


def test_plan_rotates_clips_in_request_order() -> None:
    """Clips of equal length take turns 0, 1, 2, 0, 1, 2..."""
    analysis = make_analysis(make_grid(120.0), [20.0, 20.0, 20.0])

    result = plan(analysis)

    clips = [segment.clip for segment in result.segments]
    assert clips == [index % 3 for index in range(len(clips))]


def test_plan_source_windows_inside_clips() -> None:
    """No segment requests frames past the end of its clip."""
    durations = [2.4, 5.0, 11.0, 3.1]
    analysis = make_analysis(make_grid(97.0, music_seconds=90.0), durations)

    result = plan(analysis)

    for segment in result.segments:
        seconds = segment.frames / FPS
        assert segment.source_start >= 0
        assert segment.source_start + seconds <= durations[segment.clip] + 1e-9


def test_plan_reused_clip_advances() -> None:
    """A clip used again shows the next moment, then wraps to its start."""
    analysis = make_analysis(make_grid(120.0, energy=[0.5]), [6.0])

    result = plan(analysis)

    starts = [segment.source_start for segment in result.segments]
    assert starts[0] == 0.0
    assert starts[1] == pytest.approx(result.segments[0].frames / FPS)
    assert starts[2] == pytest.approx(starts[1] + result.segments[1].frames / FPS)
    assert 0.0 in starts[1:]  # wrapped
    for segment in result.segments:
        assert segment.source_start + segment.frames / FPS <= 6.0 + 1e-9


def test_plan_long_segment_prefers_long_clip() -> None:
    """Segments longer than a short clip go to a clip that fits; short ones still rotate."""
    loud_then_quiet = [1.0] * 4 + [0.0] * 4
    analysis = make_analysis(make_grid(160.0, energy=loud_then_quiet), [0.8, 20.0])

    result = plan(analysis)

    for segment in result.segments:
        if segment.frames / FPS > 0.8:
            assert segment.clip == 1
    assert any(segment.clip == 0 for segment in result.segments)


def test_plan_clip_shorter_than_every_segment(caplog: pytest.LogCaptureFixture) -> None:
    """A clip too short for any segment starts at 0, and the planner logs it once."""
    analysis = make_analysis(make_grid(120.0, music_seconds=10.0), [0.107])

    with caplog.at_level(logging.WARNING, logger="ecliptic.planner"):
        result = plan(analysis)

    assert all(segment.clip == 0 for segment in result.segments)
    assert all(segment.source_start == 0.0 for segment in result.segments)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "longer than every clip" in warnings[0].getMessage()


def test_plan_is_deterministic() -> None:
    """The same analysis gives the same plan."""
    analysis = make_analysis(make_grid(97.0, energy=[0.2, 0.9, 0.4]), [4.0, 9.0, 2.0])

    assert plan(analysis) == plan(analysis)


# ----- spans and summary ----------------------------------------------------------------


def test_spans_tile_and_clamp() -> None:
    """Raw spans become tiled segments with source windows moved inside the clips."""
    analysis = make_analysis(make_grid(120.0), [3.0, 10.0])
    audio_start = analysis.beat_grid.first_beat
    spans = [
        BeatSpan(clip=0, source_start=2.5, beat_start=0, beat_end=4),  # 2 s from 2.5 of 3
        BeatSpan(clip=1, source_start=-1.0, beat_start=4, beat_end=6),
        BeatSpan(clip=0, source_start=0.0, beat_start=6, beat_end=14),  # 4 s of a 3 s clip
    ]

    segments = segments_from_beat_spans(spans, analysis, FPS, audio_start, audio_start + 6.5)

    assert [(s.start_frame, s.end_frame) for s in segments] == [(0, 60), (60, 90), (90, 195)]
    assert segments[0].source_start == pytest.approx(1.0)
    assert segments[1].source_start == 0.0
    assert segments[2].source_start == 0.0


def test_spans_drop_empty_span() -> None:
    """A span that rounds to no frames is dropped and the next one starts in its place."""
    analysis = make_analysis(make_grid(120.0), [10.0])
    audio_start = analysis.beat_grid.first_beat
    spans = [
        BeatSpan(clip=0, source_start=0.0, beat_start=0, beat_end=1),  # 0.5 s: frame 0 at 1 fps
        BeatSpan(clip=0, source_start=1.0, beat_start=1, beat_end=2),
        BeatSpan(clip=0, source_start=2.0, beat_start=2, beat_end=4),
    ]

    segments = segments_from_beat_spans(spans, analysis, 1, audio_start, audio_start + 3.0)

    assert [(s.start_frame, s.end_frame) for s in segments] == [(0, 1), (1, 3)]
    assert [(s.beat_start, s.beat_end) for s in segments] == [(0, 2), (2, 4)]
    assert segments[0].source_start == 1.0


@pytest.mark.parametrize(
    ("span", "message"),
    [
        pytest.param(BeatSpan(7, 0.0, 0, 2), "clip 7", id="unknown-clip"),
        pytest.param(BeatSpan(0, 0.0, 0, 999), "outside", id="beat-out-of-range"),
        pytest.param(BeatSpan(0, 0.0, 3, 1), "not increasing", id="reversed-beats"),
    ],
)
def test_spans_reject_invalid(span: BeatSpan, message: str) -> None:
    """Spans naming missing clips or beats raise ValueError."""
    analysis = make_analysis(make_grid(120.0), [10.0])

    with pytest.raises(ValueError, match=message):
        segments_from_beat_spans([span, BeatSpan(0, 0.0, 4, 6)], analysis, FPS, 0.5, 5.0)


def test_summarize_plan_small_and_json() -> None:
    """The summary names the planner and lists each segment's clip and times."""
    analysis = make_analysis(make_grid(120.0), [8.0, 8.0])
    result = plan(analysis, note="fallback", duration_seconds=12.0)

    summary = summarize_plan(result)

    assert summary["planner"] == "beat-grid"
    assert summary["note"] == "fallback"
    assert summary["segmentCount"] == len(result.segments)
    assert summary["durationSeconds"] == pytest.approx(12.0)
    assert (summary["fps"], summary["width"], summary["height"]) == (FPS, 1280, 720)
    first = summary["segments"][0]
    assert first == {"clip": 0, "source": 0.0, "start": 0.0, "end": first["end"]}
    assert summary["segments"][-1]["end"] == pytest.approx(12.0)
    assert "segmentsTruncated" not in summary
    assert len(json.dumps(summary)) < 2000
