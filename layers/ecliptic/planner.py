"""The deterministic beat-grid planner, and the beat-to-frame math any planner reuses.

A plan starts at the song's first musical beat (`audio_start`) and cuts on beats: a cut at
song time `t` lands on output frame `round((t - audio_start) * fps)`. Every frame number
comes from a beat time this way, never from a sum of rounded segment lengths, so rounding
never accumulates into drift against the music.

`segments_from_beat_spans` turns raw choices (clip, source start, first and last beat) into
segments that tile the output exactly. The beat-grid planner uses it, and a model-driven
planner can pass its own choices through it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from ecliptic.errors import PlanFailed
from ecliptic.models import Analysis, ClipFacts, MontagePlan, Segment

logger = logging.getLogger(__name__)

PLANNER_NAME = "beat-grid"
# No segment is shorter than this, except when the whole plan is.
MIN_SEGMENT_SECONDS = 0.5
# Target segment lengths at the loudest and the quietest beats of the song.
SHORT_SEGMENT_SECONDS = 1.0
LONG_SEGMENT_SECONDS = 2.5
# Beats per segment to choose from. A group that lasts longer than MAX_GROUP_SECONDS is
# skipped.
BEAT_GROUPS = (2, 4, 8)
MAX_GROUP_SECONDS = 3.0
BEATS_PER_BAR = 4
# The summary on the job record lists at most this many segments.
SUMMARY_MAX_SEGMENTS = 200


class BeatSpan(NamedTuple):
    """One planner choice: show `clip` from `source_start` between two beats.

    `beat_start` and `beat_end` index `beat_grid.beats`. The last span of a plan runs to
    the plan's end time instead of `beats[beat_end]`. Its `beat_end` is the first beat at
    or after that time, or the last beat (then it may equal `beat_start`).
    """

    clip: int
    source_start: float
    beat_start: int
    beat_end: int


def beat_frame(time: float, audio_start: float, fps: int) -> int:
    """Output frame at which song time `time` plays."""
    return round((time - audio_start) * fps)


def plan_length(
    analysis: Analysis, fps: int, max_duration: float, duration_seconds: float | None
) -> tuple[float, float, int]:
    """Return the song time at output 0, the song time where the plan ends, and its frames.

    Raises
    ------
    PlanFailed
        The song leaves less than one frame to show.
    """
    audio_start = analysis.beat_grid.first_beat
    end_time = plan_end_time(analysis, max_duration, duration_seconds)
    total_frames = beat_frame(end_time, audio_start, fps)
    if total_frames < 1:
        raise PlanFailed(
            "The song has no music after its first beat to cut a montage to; send a longer song."
        )
    return audio_start, end_time, total_frames


def plan_beat_grid(
    analysis: Analysis,
    *,
    width: int,
    height: int,
    fps: int,
    max_duration: float,
    duration_seconds: float | None = None,
    note: str | None = None,
) -> MontagePlan:
    """Make a montage plan that cuts on the song's beats and rotates through the clips.

    The montage runs from the first musical beat to one beat after the last beat (at most
    to the end of the song), capped by `max_duration` and by `duration_seconds` when given.
    Segments last 2, 4 or 8 beats, whichever comes closest to a target of 1 s on the
    loudest beats and 2.5 s on the quietest. The first segment may instead run to the
    first downbeat. Clips take turns in request order, and each
    clip continues from where its previous segment stopped, wrapping to its start.

    Raises
    ------
    PlanFailed
        The song leaves less than one frame to show.
    """
    grid = analysis.beat_grid
    beats = grid.beats
    audio_start, end_time, total_frames = plan_length(
        analysis, fps, max_duration, duration_seconds
    )

    cuts = _choose_cuts(analysis, audio_start, end_time, fps)
    bounds = [beat_frame(beats[index], audio_start, fps) for index in cuts[1:]]
    lengths = [
        (end - start) / fps
        for start, end in zip([0, *bounds], [*bounds, total_frames], strict=True)
    ]
    clips = _assign_clips(analysis.clips, lengths)
    beat_ends = [*cuts[1:], beat_at_or_after(beats, end_time, cuts[-1])]
    spans = [
        BeatSpan(clip, source_start, first, end)
        for (clip, source_start), first, end in zip(clips, cuts, beat_ends, strict=True)
    ]

    segments = segments_from_beat_spans(spans, analysis, fps, audio_start, end_time)
    plan = MontagePlan(
        job_id=analysis.job_id,
        planner=PLANNER_NAME,
        planner_note=note,
        width=width,
        height=height,
        fps=fps,
        audio_start=audio_start,
        total_frames=total_frames,
        segments=segments,
    )
    logger.debug(
        "beat-grid plan: job %s, %d segments, %d frames from %.3f s",
        analysis.job_id, len(segments), total_frames, audio_start,
    )  # fmt: skip
    return plan


def segments_from_beat_spans(
    spans: Sequence[BeatSpan],
    analysis: Analysis,
    fps: int,
    audio_start: float,
    end_time: float,
) -> list[Segment]:
    """Turn beat spans into segments that tile frames [0, total_frames) exactly.

    `total_frames` is `round((end_time - audio_start) * fps)`. Each span ends on the frame
    of `beats[beat_end]` and the next span starts there. The last span ends at
    `total_frames`. A span that would get no frames is dropped and the next one starts
    where the dropped one would have. Source windows are kept inside the clip: a source
    start too close to the clip's end moves back, and a clip shorter than its segment
    starts at 0 (the renderer then freezes on its last frame).

    Raises
    ------
    ValueError
        A span names a clip or beat that does not exist, or no span gets a frame.
    """
    beats = analysis.beat_grid.beats
    durations = {clip.index: clip.info.duration for clip in analysis.clips}
    total_frames = beat_frame(end_time, audio_start, fps)

    segments: list[Segment] = []
    start_frame = 0
    beat_start = spans[0].beat_start if spans else 0
    for number, span in enumerate(spans):
        if span.clip not in durations:
            raise ValueError(f"span {number} names clip {span.clip}, which is not in the request")
        is_last = number == len(spans) - 1
        # Only the last span may start and end on the same beat: the one it starts on
        # when it runs on past the last beat.
        in_order = span.beat_start <= span.beat_end if is_last else span.beat_start < span.beat_end
        if not (span.beat_start >= 0 and span.beat_end < len(beats) and in_order):
            raise ValueError(
                f"span {number} has beats {span.beat_start}..{span.beat_end}, "
                f"outside 0..{len(beats) - 1} or not increasing"
            )
        end_frame = total_frames
        if not is_last:
            end_frame = min(beat_frame(beats[span.beat_end], audio_start, fps), total_frames)
        if end_frame <= start_frame:
            logger.debug("span %d gets no frames and is dropped", number)
            continue

        seconds = (end_frame - start_frame) / fps
        segments.append(
            Segment(
                clip=span.clip,
                source_start=fit_source_start(span.source_start, seconds, durations[span.clip]),
                start_frame=start_frame,
                end_frame=end_frame,
                beat_start=beat_start,
                beat_end=span.beat_end,
            )
        )
        start_frame = end_frame
        beat_start = span.beat_end

    if not segments:
        raise ValueError("no span covers any output frame")
    # A dropped last span leaves the previous segment short of the end: extend it.
    if segments[-1].end_frame != total_frames:
        segments[-1] = segments[-1].model_copy(update={"end_frame": total_frames})
    return segments


def summarize_plan(plan: MontagePlan) -> dict[str, Any]:
    """Return a small JSON-able summary of the plan for the job record.

    Times are seconds of output (`start`, `end`) and of the clip (`source`), rounded to
    milliseconds. At most SUMMARY_MAX_SEGMENTS segments are listed.
    """
    listed = [
        {
            "clip": segment.clip,
            "source": round(segment.source_start, 3),
            "start": round(segment.start_frame / plan.fps, 3),
            "end": round(segment.end_frame / plan.fps, 3),
        }
        for segment in plan.segments[:SUMMARY_MAX_SEGMENTS]
    ]
    summary: dict[str, Any] = {
        "planner": plan.planner,
        "note": plan.planner_note,
        "segmentCount": len(plan.segments),
        "durationSeconds": round(plan.duration, 3),
        "fps": plan.fps,
        "width": plan.width,
        "height": plan.height,
        "audioStart": round(plan.audio_start, 3),
        "segments": listed,
    }
    if len(plan.segments) > SUMMARY_MAX_SEGMENTS:
        summary["segmentsTruncated"] = True
    return summary


# ----- length and cuts ------------------------------------------------------------------


def plan_end_time(analysis: Analysis, max_duration: float, duration_seconds: float | None) -> float:
    """Song time at which the montage ends.

    It is one beat after the last beat, so the final hit rings instead of being cut off.
    The song's end, `max_duration` and `duration_seconds` cap it.
    """
    grid = analysis.beat_grid
    period = 60.0 / grid.tempo
    natural = min(grid.duration, grid.last_beat + period)
    if natural <= grid.first_beat:
        natural = grid.duration
    length = min(natural - grid.first_beat, max_duration)
    if duration_seconds is not None:
        if duration_seconds > length:
            logger.info(
                "job %s requested %.1f s but the song has %.1f s from its first beat",
                analysis.job_id, duration_seconds, length,
            )  # fmt: skip
        length = min(length, duration_seconds)
    return grid.first_beat + length


def _choose_cuts(analysis: Analysis, audio_start: float, end_time: float, fps: int) -> list[int]:
    """Choose the beat indexes where segments start, from the first beat at `audio_start`.

    The first segment runs to the first downbeat when that leaves it long enough, so later
    cuts fall on bar lines and every second beat.
    """
    grid = analysis.beat_grid
    beats = grid.beats
    first = beat_at_or_after(beats, audio_start, 0)
    latest_cut = end_time - MIN_SEGMENT_SECONDS
    cuts = [first]

    downbeat_index = _first_downbeat_index(analysis, first)
    if (
        downbeat_index is not None
        and downbeat_index > first
        and beats[downbeat_index] - beats[first] >= MIN_SEGMENT_SECONDS
        and beats[downbeat_index] <= latest_cut
    ):
        cuts.append(downbeat_index)

    while True:
        current = cuts[-1]
        target = target_segment_seconds(grid.energy, current)
        options = [
            current + count
            for count in BEAT_GROUPS
            if current + count < len(beats) and beats[current + count] <= latest_cut
        ]
        options = [
            index
            for index in options
            if beats[index] - beats[current] >= MIN_SEGMENT_SECONDS
            and beat_frame(beats[index], audio_start, fps)
            > beat_frame(beats[current], audio_start, fps)
        ]
        if not options:
            break
        short_enough = [i for i in options if beats[i] - beats[current] <= MAX_GROUP_SECONDS]
        choices = short_enough or options[:1]
        cuts.append(
            min(choices, key=lambda index: abs(math.log((beats[index] - beats[current]) / target)))
        )
    return cuts


def target_segment_seconds(energy: Sequence[float], beat: int) -> float:
    """Target segment length for a segment starting at `beat`, from the next bar's energy."""
    window = energy[beat : beat + BEATS_PER_BAR]
    level = sum(window) / len(window) if window else 0.5
    return LONG_SEGMENT_SECONDS - (LONG_SEGMENT_SECONDS - SHORT_SEGMENT_SECONDS) * level


def _first_downbeat_index(analysis: Analysis, first: int) -> int | None:
    beats = analysis.beat_grid.beats
    for downbeat in analysis.beat_grid.downbeats:
        index = beat_at_or_after(beats, downbeat - 1e-3, first)
        if index < len(beats) and abs(beats[index] - downbeat) < 1e-3:
            return index
    return None


def beat_at_or_after(beats: Sequence[float], time: float, start: int) -> int:
    """Index of the first beat at or after `time` from `start`, or the last beat."""
    for index in range(start, len(beats)):
        if beats[index] >= time - 1e-6:
            return index
    return len(beats) - 1


# ----- clips ----------------------------------------------------------------------------


def _assign_clips(clips: Sequence[ClipFacts], lengths: Sequence[float]) -> list[tuple[int, float]]:
    """Pick (clip index, source start) for each segment length, in order.

    Clips take turns in request order. A segment longer than the clip whose turn it is goes
    to the next clip in turn that is long enough. When no clip is long enough, the segment
    starts the clip whose turn it is at 0. Each clip keeps a cursor that advances by what
    it showed and wraps to 0 when the rest of the clip is too short.
    """
    ordered = sorted(clips, key=lambda clip: clip.index)
    cursors = {clip.index: 0.0 for clip in ordered}
    turn = 0
    frozen_segments: list[int] = []
    choices: list[tuple[int, float]] = []
    for number, seconds in enumerate(lengths):
        rotation = [ordered[(turn + step) % len(ordered)] for step in range(len(ordered))]
        fitting = [clip for clip in rotation if clip.info.duration >= seconds]
        clip = fitting[0] if fitting else rotation[0]
        turn = (ordered.index(clip) + 1) % len(ordered)

        duration = clip.info.duration
        if duration < seconds:
            frozen_segments.append(number)
            choices.append((clip.index, 0.0))
            continue
        start = cursors[clip.index]
        if start + seconds > duration:
            start = 0.0
        cursors[clip.index] = start + seconds
        choices.append((clip.index, start))

    if frozen_segments:
        logger.warning(
            "%d of %d segments are longer than every clip; the renderer freezes those clips "
            "on their last frame",
            len(frozen_segments), len(lengths),
        )  # fmt: skip
    return choices


def fit_source_start(source_start: float, seconds: float, duration: float) -> float:
    """Move `source_start` so `seconds` of the clip follow it, or to 0 if the clip is short."""
    if duration <= seconds:
        return 0.0
    return min(max(0.0, source_start), duration - seconds)
