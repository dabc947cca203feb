"""The plan request: instructions, media parts, the cut-point table and the response schema."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from google.genai import types

from ecliptic.gemini.files import AttachedMedia
from ecliptic.models import Analysis, ClipFacts
from ecliptic.plan_normalizer import ProposedPlan, Timeline

SYSTEM_INSTRUCTION = """\
You are a music video editor. You cut a montage of the given video clips to the given song.
Choose the best moments of the clips, put them in an order that follows the brief and the
music, and cut only on the song's cut points (its beats).

Rules for the response:
- Answer with JSON only: {"segments": [...]}, the shots in the order they play.
- Each shot has `clip` (a clip index), `clip_start` (seconds into that clip where the shot
  starts), `start_beat` and `end_beat` (cut point indexes from the table).
- The first shot starts at cut point 0. Each next shot starts at the previous `end_beat`.
  The last shot ends at the final cut point, the end of the montage.
- A shot lasts time(end_beat) - time(start_beat) seconds, and `clip_start` plus that length
  must not pass the end of the clip. Clips may be reused, preferably from other moments.
- Make shots last at least 0.5 s; 2, 4 or 8 beats work well. Use shorter shots where the
  energy is high and longer ones where it is low. Cut on downbeats (D) where you can, and
  change the pace where the music changes.
"""


def response_schema(clip_count: int, last_point: int) -> dict[str, Any]:
    """Return the JSON Schema of the response, bounded to this request's clips and cut points.

    The response is validated with ProposedPlan, which has no bounds, because the
    normalizer repairs values out of range instead of rejecting the whole plan.
    """
    schema = ProposedPlan.model_json_schema()
    segment = schema.pop("$defs")["ProposedSegment"]
    properties = segment["properties"]
    properties["clip"].update(minimum=0, maximum=max(0, clip_count - 1))
    properties["clip_start"].update(minimum=0)
    properties["start_beat"].update(minimum=0, maximum=max(0, last_point - 1))
    properties["end_beat"].update(minimum=1, maximum=max(1, last_point))
    schema["properties"]["segments"] = {
        "type": "array",
        "description": "the shots in the order they play",
        "items": segment,
        "minItems": 1,
    }
    return schema


def build_contents(
    analysis: Analysis,
    timeline: Timeline,
    media: AttachedMedia,
    brief: str | None,
) -> list[types.Part]:
    """Return the request parts: the brief, the song, each clip, then the cut-point table."""
    parts: list[types.Part] = [
        types.Part.from_text(text=f"Brief: {brief.strip()}" if brief and brief.strip() else
                             "Brief: none given; make an engaging montage of the clips.")
    ]  # fmt: skip

    song = media.files.get(analysis.audio_asset_id)
    if song is not None:
        parts.append(types.Part.from_text(text="The song:"))
        parts.append(types.Part.from_uri(file_uri=song.uri, mime_type=song.mime_type))
    else:
        parts.append(types.Part.from_text(text="The song is not attached; use the table below."))

    for clip in sorted(analysis.clips, key=lambda item: item.index):
        attached = media.files.get(clip.asset_id)
        facts = _clip_facts(clip)
        if attached is None:
            reason = media.skipped.get(clip.asset_id)
            note = f"video not attached: {reason}" if reason else "video not attached"
            parts.append(types.Part.from_text(text=f"{facts} ({note})"))
            continue
        parts.append(types.Part.from_text(text=f"{facts}:"))
        parts.append(types.Part.from_uri(file_uri=attached.uri, mime_type=attached.mime_type))

    parts.append(types.Part.from_text(text=cut_point_table(analysis, timeline)))
    return parts


def cut_point_table(analysis: Analysis, timeline: Timeline) -> str:
    """Describe the tempo and list every cut point: index, song time, beat energy, downbeat."""
    grid = analysis.beat_grid
    lines = [
        f"The song runs at about {grid.tempo:.1f} BPM. The montage plays the song from "
        f"{timeline.audio_start:.3f} s to {timeline.end_time:.3f} s "
        f"({timeline.end_time - timeline.audio_start:.2f} s).",
        f"Cut points 0 to {timeline.last} (index, song time in seconds, beat energy from 0 "
        "to 1, D for a downbeat). The last one is the end of the montage:",
    ]
    for point in range(timeline.last):
        downbeat = " D" if point in timeline.downbeats else ""
        lines.append(f"{point} {timeline.times[point]:.3f} {timeline.energy[point]:.2f}{downbeat}")
    lines.append(f"{timeline.last} {timeline.times[timeline.last]:.3f} end")
    return "\n".join(lines)


def _clip_facts(clip: ClipFacts) -> str:
    info = clip.info
    name = PurePosixPath(clip.key).name
    size = f"{info.width}x{info.height}" if info.width and info.height else "unknown size"
    rate = f", {info.fps:.2f} fps" if info.fps else ""
    return f"Clip {clip.index} ({name}): {info.duration:.2f} s, {size}{rate}"
