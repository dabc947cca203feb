"""Turn a proposed edit, such as a model's response, into a renderable beat-aligned plan.

A proposal lists shots: a clip, a start time in that clip and a span of cut points. Cut
points are the plan's timeline: cut point 0 is the first musical beat, each next one is the
next beat, and the last one is the end of the montage. `normalize_proposal` repairs the
proposal in this order:

1. A shot naming a clip that is not in the request is dropped.
2. Cut points are clamped to the timeline. A shot left without a span is dropped.
3. Shots are sorted by start. A shot that starts inside the previous one starts where that
   one ends, and its clip start moves on by the same time. A shot covered entirely by
   earlier ones is dropped.
4. A shot shorter than MIN_SEGMENT_SECONDS runs on over the next cut points until it is
   long enough, when its clip has the footage, and the shots it now covers are trimmed.
   Otherwise the shot before it runs on over it, or else it becomes a gap.
5. A shot longer than the rest of its clip moves its clip start back. When the whole clip
   is shorter than the shot, the shot ends on the last cut point the clip still covers and
   the rest becomes a gap.
6. A gap shorter than MIN_SEGMENT_SECONDS is absorbed by the shot before it, or else the one
   after it, when that shot's clip has the footage. Otherwise that neighbour becomes part of
   the gap. Longer gaps are filled with 2, 4 or 8 beat segments, clips taking turns.

Frames come from `segments_from_beat_spans`, so every cut lands on the frame of a beat time
and the plan is exactly as long as the timeline. The result is always a valid MontagePlan.
The only exception is a proposal with no usable shot at all, which raises EmptyProposal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecliptic.models import Analysis, ClipFacts, MontagePlan
from ecliptic.planner import (
    BEAT_GROUPS,
    MAX_GROUP_SECONDS,
    MIN_SEGMENT_SECONDS,
    BeatSpan,
    beat_at_or_after,
    beat_frame,
    fit_source_start,
    plan_length,
    segments_from_beat_spans,
    target_segment_seconds,
)

# Clip starts that move by less than this are not reported as repaired.
_SOURCE_TOLERANCE_SECONDS = 1e-3
# Note phrases for each kind of repair, in the order the note lists them.
_FIX_PHRASES = {
    "unknown_clip": "shots naming an unknown clip dropped: {n}",
    "empty_span": "shots without a beat span dropped: {n}",
    "out_of_range": "beat spans clamped to the timeline: {n}",
    "covered": "shots covered by earlier shots dropped: {n}",
    "overlap": "overlaps trimmed: {n}",
    "clip_start": "clip starts moved inside the clip: {n}",
    "clip_short": "shots cut to their clip's length: {n}",
    "too_short": "shots under {min} s merged: {n}",
    "gap": "gaps filled: {n}",
}


class EmptyProposal(ValueError):
    """No shot of the proposal survives normalization."""


class ProposedSegment(BaseModel):
    """One shot of a proposal: `clip` from `clip_start` over cut points [start_beat, end_beat)."""

    model_config = ConfigDict(allow_inf_nan=False)

    clip: int = Field(description="index of the clip in the clip list")
    clip_start: float = Field(description="seconds into the clip where the shot starts")
    start_beat: int = Field(description="cut point where the shot starts")
    end_beat: int = Field(description="cut point where the shot ends and the next one starts")


class ProposedPlan(BaseModel):
    """A proposed edit: the shots in the order they play."""

    segments: list[ProposedSegment]


@dataclass(frozen=True)
class Timeline:
    """The cut points a plan may use.

    `times[k]` is the song time of cut point k: the first musical beat, then every beat that
    starts a later output frame, then the end of the montage. `beat_indexes[k]` indexes
    `beat_grid.beats`. The last one is the beat at or after the end, as BeatSpan expects.
    """

    audio_start: float
    end_time: float
    fps: int
    times: tuple[float, ...]
    beat_indexes: tuple[int, ...]
    energy: tuple[float, ...]
    downbeats: frozenset[int]

    @property
    def last(self) -> int:
        """Index of the final cut point, the end of the montage."""
        return len(self.times) - 1

    @property
    def total_frames(self) -> int:
        return self.frame(self.last)

    def frame(self, point: int) -> int:
        """Output frame at which cut point `point` plays."""
        return beat_frame(self.times[point], self.audio_start, self.fps)

    def seconds(self, start: int, end: int) -> float:
        """Output length of cut points [start, end) in whole frames, in seconds."""
        return (self.frame(end) - self.frame(start)) / self.fps


def build_timeline(
    analysis: Analysis,
    *,
    fps: int,
    max_duration: float,
    duration_seconds: float | None = None,
) -> Timeline:
    """Build the cut points of a plan, with the length rules of `plan_beat_grid`.

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

    first = beat_at_or_after(beats, audio_start, 0)
    times = [audio_start]
    indexes = [first]
    last_frame = 0
    for index in range(first + 1, len(beats)):
        frame = beat_frame(beats[index], audio_start, fps)
        if frame >= total_frames:
            break
        # Beats closer than one frame would make empty segments.
        if frame > last_frame:
            times.append(beats[index])
            indexes.append(index)
            last_frame = frame
    times.append(end_time)
    indexes.append(beat_at_or_after(beats, end_time, indexes[-1]))

    energy = tuple(grid.energy[index] if index < len(grid.energy) else 0.5 for index in indexes)
    downbeat_indexes = set()
    for downbeat in grid.downbeats:
        index = beat_at_or_after(beats, downbeat - 1e-3, 0)
        if abs(beats[index] - downbeat) < 1e-3:
            downbeat_indexes.add(index)
    downbeats = frozenset(
        point for point, index in enumerate(indexes[:-1]) if index in downbeat_indexes
    )
    return Timeline(
        audio_start=audio_start,
        end_time=end_time,
        fps=fps,
        times=tuple(times),
        beat_indexes=tuple(indexes),
        energy=energy,
        downbeats=downbeats,
    )


@dataclass
class _Piece:
    """A stretch of cut points [start, end): a shot of `clip`, or a gap when `clip` is None."""

    start: int
    end: int
    clip: int | None = None
    source: float = 0.0
    proposed: bool = False


def normalize_proposal(
    proposal: ProposedPlan,
    analysis: Analysis,
    timeline: Timeline,
    *,
    width: int,
    height: int,
    planner: Literal["gemini", "beat-grid"],
    note: str,
) -> MontagePlan:
    """Repair `proposal` into a plan on `timeline` (see the module docstring for the rules).

    The plan's `planner_note` is `note` followed by the repairs made.

    Raises
    ------
    EmptyProposal
        No shot of the proposal survives the rules.
    """
    durations = {clip.index: clip.info.duration for clip in analysis.clips}
    fixes: Counter[str] = Counter()
    # The length rules only apply when the whole montage can hold a minimum-length segment.
    min_seconds = MIN_SEGMENT_SECONDS
    if timeline.seconds(0, timeline.last) < MIN_SEGMENT_SECONDS:
        min_seconds = 0.0

    shots = _valid_shots(proposal, timeline, durations, fixes)
    pieces = _tile(shots, timeline, fixes)
    pieces = _lengthen_short_shots(pieces, timeline, durations, min_seconds, fixes)
    pieces = _fit_clips(pieces, timeline, durations, min_seconds, fixes)
    pieces = _absorb_short_gaps(pieces, timeline, durations, min_seconds)
    if not any(piece.clip is not None for piece in pieces):
        raise EmptyProposal(f"none of the {len(proposal.segments)} proposed shots is usable")
    pieces = _fill_gaps(pieces, timeline, analysis.clips, min_seconds, fixes)

    spans = [
        BeatSpan(
            clip=piece.clip if piece.clip is not None else 0,
            source_start=piece.source,
            beat_start=timeline.beat_indexes[piece.start],
            beat_end=timeline.beat_indexes[piece.end],
        )
        for piece in pieces
    ]
    segments = segments_from_beat_spans(
        spans, analysis, timeline.fps, timeline.audio_start, timeline.end_time
    )
    used = sum(1 for piece in pieces if piece.proposed)
    return MontagePlan(
        job_id=analysis.job_id,
        planner=planner,
        planner_note=f"{note}; {describe_fixes(fixes, used, len(proposal.segments))}",
        width=width,
        height=height,
        fps=timeline.fps,
        audio_start=timeline.audio_start,
        total_frames=timeline.total_frames,
        segments=segments,
    )


def describe_fixes(fixes: Counter[str], used: int, proposed: int) -> str:
    """Return the note text for the repairs: `12 of 14 proposed shots used; gaps filled: 2`."""
    parts = [f"{used} of {proposed} proposed shots used"]
    for key, phrase in _FIX_PHRASES.items():
        if fixes[key]:
            parts.append(phrase.format(n=fixes[key], min=MIN_SEGMENT_SECONDS))
    return "; ".join(parts)


# ----- repair steps ---------------------------------------------------------------------


def _valid_shots(
    proposal: ProposedPlan,
    timeline: Timeline,
    durations: dict[int, float],
    fixes: Counter[str],
) -> list[_Piece]:
    """Apply rules 1 and 2: drop unknown clips, clamp spans, drop empty spans."""
    shots: list[_Piece] = []
    for segment in proposal.segments:
        if segment.clip not in durations:
            fixes["unknown_clip"] += 1
            continue
        start = min(max(segment.start_beat, 0), timeline.last)
        end = min(max(segment.end_beat, 0), timeline.last)
        if end <= start:
            fixes["empty_span"] += 1
            continue
        if (start, end) != (segment.start_beat, segment.end_beat):
            fixes["out_of_range"] += 1
        shots.append(_Piece(start, end, segment.clip, segment.clip_start, proposed=True))
    return shots


def _tile(shots: list[_Piece], timeline: Timeline, fixes: Counter[str]) -> list[_Piece]:
    """Apply rule 3 and return pieces that tile the timeline, gaps included."""
    pieces: list[_Piece] = []
    cursor = 0
    for shot in sorted(shots, key=lambda piece: piece.start):
        if shot.end <= cursor:
            fixes["covered"] += 1
            continue
        if shot.start < cursor:
            fixes["overlap"] += 1
            shot.source += timeline.times[cursor] - timeline.times[shot.start]
            shot.start = cursor
        if shot.start > cursor:
            pieces.append(_Piece(cursor, shot.start))
        pieces.append(shot)
        cursor = shot.end
    if cursor < timeline.last:
        pieces.append(_Piece(cursor, timeline.last))
    return pieces


def _lengthen_short_shots(
    pieces: list[_Piece],
    timeline: Timeline,
    durations: dict[int, float],
    min_seconds: float,
    fixes: Counter[str],
) -> list[_Piece]:
    """Apply rule 4 to each shot under `min_seconds`, where a clip has the footage.

    The shot runs on over the next cut points until it is long enough, and the pieces it
    now covers are trimmed or dropped, so a run of one-beat shots becomes two-beat shots.
    Failing that, the shot before it runs on over it. A shot neither can fix is left for
    `_fit_clips`, which turns it into a gap.
    """
    pieces = list(pieces)
    number = 0
    while number < len(pieces):
        piece = pieces[number]
        if piece.clip is None or timeline.seconds(piece.start, piece.end) >= min_seconds:
            number += 1
            continue
        end = piece.end
        while end < timeline.last and timeline.seconds(piece.start, end) < min_seconds:
            end += 1
        seconds = timeline.seconds(piece.start, end)
        if seconds >= min_seconds and durations[piece.clip] >= seconds:
            fixes["too_short"] += 1
            piece.end = end
            while number + 1 < len(pieces) and pieces[number + 1].start < end:
                following = pieces[number + 1]
                if following.end <= end:
                    del pieces[number + 1]
                    continue
                following.source += timeline.times[end] - timeline.times[following.start]
                following.start = end
            number += 1
            continue
        before = pieces[number - 1] if number > 0 else None
        if before is not None and _can_cover(before, before.start, piece.end, timeline, durations):
            fixes["too_short"] += 1
            before.end = piece.end
            del pieces[number]
            continue
        number += 1
    return pieces


def _fit_clips(
    pieces: list[_Piece],
    timeline: Timeline,
    durations: dict[int, float],
    min_seconds: float,
    fixes: Counter[str],
) -> list[_Piece]:
    """Apply rule 5, and the last resort of rule 4: shots still too short become gaps."""
    fitted: list[_Piece] = []
    for piece in pieces:
        if piece.clip is None:
            fitted.append(piece)
            continue
        duration = durations[piece.clip]
        seconds = timeline.seconds(piece.start, piece.end)
        if duration < seconds:
            fixes["clip_short"] += 1
            end = piece.start
            for point in range(piece.start + 1, piece.end):
                if timeline.seconds(piece.start, point) > duration:
                    break
                end = point
            if end == piece.start or timeline.seconds(piece.start, end) < min_seconds:
                fitted.append(_Piece(piece.start, piece.end))
                continue
            fitted.append(_Piece(piece.start, end, piece.clip, 0.0, proposed=True))
            fitted.append(_Piece(end, piece.end))
            continue
        if seconds < min_seconds:
            fixes["too_short"] += 1
            fitted.append(_Piece(piece.start, piece.end))
            continue
        source = fit_source_start(piece.source, seconds, duration)
        if abs(source - piece.source) > _SOURCE_TOLERANCE_SECONDS:
            fixes["clip_start"] += 1
        fitted.append(_Piece(piece.start, piece.end, piece.clip, source, proposed=True))
    return _merge_gaps(fitted)


def _absorb_short_gaps(
    pieces: list[_Piece],
    timeline: Timeline,
    durations: dict[int, float],
    min_seconds: float,
) -> list[_Piece]:
    """Apply the first half of rule 6: no gap shorter than `min_seconds` remains."""
    pieces = list(pieces)
    while True:
        short = next(
            (
                number
                for number, piece in enumerate(pieces)
                if piece.clip is None and timeline.seconds(piece.start, piece.end) < min_seconds
            ),
            None,
        )
        if short is None:
            return pieces
        gap = pieces[short]
        before = pieces[short - 1] if short > 0 else None
        after = pieces[short + 1] if short + 1 < len(pieces) else None
        if before is not None and _can_cover(before, before.start, gap.end, timeline, durations):
            assert before.clip is not None
            seconds = timeline.seconds(before.start, gap.end)
            before.source = fit_source_start(before.source, seconds, durations[before.clip])
            before.end = gap.end
            del pieces[short]
        elif after is not None and _can_cover(after, gap.start, after.end, timeline, durations):
            assert after.clip is not None
            seconds = timeline.seconds(gap.start, after.end)
            shift = timeline.times[after.start] - timeline.times[gap.start]
            after.source = fit_source_start(after.source - shift, seconds, durations[after.clip])
            after.start = gap.start
            del pieces[short]
        elif before is not None:
            # Neither neighbour's clip has the footage: the shot before joins the gap, which
            # is then at least as long as that shot, so at least `min_seconds`.
            pieces[short - 1] = _Piece(before.start, before.end)
            pieces = _merge_gaps(pieces)
        elif after is not None:
            pieces[short + 1] = _Piece(after.start, after.end)
            pieces = _merge_gaps(pieces)
        else:
            return pieces


def _can_cover(
    piece: _Piece, start: int, end: int, timeline: Timeline, durations: dict[int, float]
) -> bool:
    """Return whether `piece` is a shot whose clip has footage for cut points [start, end)."""
    if piece.clip is None:
        return False
    return durations[piece.clip] >= timeline.seconds(start, end)


def _fill_gaps(
    pieces: list[_Piece],
    timeline: Timeline,
    clips: Sequence[ClipFacts],
    min_seconds: float,
    fixes: Counter[str],
) -> list[_Piece]:
    """Apply the second half of rule 6: fill each gap with beat-grid segments.

    Clips take turns in request order after the clip shown before the gap, each from where
    it was last shown (wrapping to its start when the rest is too short). A clip long
    enough for the segment is preferred, then one that differs from the shot before.
    """
    ordered = sorted(clips, key=lambda clip: clip.index)
    durations = {clip.index: clip.info.duration for clip in ordered}
    longest = max(durations.values())
    cursors = dict.fromkeys(durations, 0.0)
    filled: list[_Piece] = []
    previous: int | None = None
    for piece in pieces:
        if piece.clip is not None:
            seconds = timeline.seconds(piece.start, piece.end)
            cursors[piece.clip] = piece.source + seconds
            previous = piece.clip
            filled.append(piece)
            continue

        fixes["gap"] += 1
        cuts = _gap_cuts(timeline, piece.start, piece.end, min_seconds, longest)
        for start, end in zip(cuts, [*cuts[1:], piece.end], strict=True):
            seconds = timeline.seconds(start, end)
            clip = _next_clip(ordered, previous, seconds)
            cursor = cursors[clip.index]
            source = cursor if cursor + seconds <= clip.info.duration else 0.0
            cursors[clip.index] = source + seconds
            previous = clip.index
            filled.append(_Piece(start, end, clip.index, source))
    return filled


def _gap_cuts(
    timeline: Timeline, start: int, end: int, min_seconds: float, longest: float
) -> list[int]:
    """Choose the cut points that split a gap: groups of 2, 4 or 8 beats near the target.

    The target length follows the energy of the beats, as in the beat-grid planner. Both
    sides of every cut keep `min_seconds`, and groups longer than the longest clip are
    avoided when a shorter one fits.
    """
    cuts = [start]
    while True:
        current = cuts[-1]
        options = [
            current + count
            for count in BEAT_GROUPS
            if current + count < end
            and timeline.seconds(current, current + count) >= min_seconds
            and timeline.seconds(current + count, end) >= min_seconds
        ]
        if not options:
            return cuts
        fitting = [point for point in options if timeline.seconds(current, point) <= longest]
        short_enough = [
            point
            for point in fitting or options
            if timeline.seconds(current, point) <= MAX_GROUP_SECONDS
        ]
        choices = short_enough or (fitting or options)[:1]
        target = target_segment_seconds(timeline.energy, current)
        cuts.append(
            min(
                choices,
                key=lambda point: abs(math.log(timeline.seconds(current, point) / target)),
            )
        )


def _next_clip(ordered: Sequence[ClipFacts], previous: int | None, seconds: float) -> ClipFacts:
    """Pick the clip for a fill segment (see `_fill_gaps`)."""
    first = 0
    if previous is not None:
        first = next(
            (number + 1 for number, clip in enumerate(ordered) if clip.index == previous), 0
        )
    rotation = [ordered[(first + step) % len(ordered)] for step in range(len(ordered))]
    fitting = [clip for clip in rotation if clip.info.duration >= seconds] or rotation
    different = [clip for clip in fitting if clip.index != previous]
    return (different or fitting)[0]


def _merge_gaps(pieces: list[_Piece]) -> list[_Piece]:
    merged: list[_Piece] = []
    for piece in pieces:
        if piece.clip is None and merged and merged[-1].clip is None:
            merged[-1] = _Piece(merged[-1].start, piece.end)
        else:
            merged.append(piece)
    return merged
