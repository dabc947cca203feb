"""Output frame size: the frame each format requests, scaled to fit a maximum side.

Pure functions without media dependencies, so the plan step can import them without PyAV.
"""

from __future__ import annotations

from ecliptic.models import FRAME_SIZES, MediaInfo, OutputFormat

# A clip whose display aspect is within this ratio of 1:1 counts as square.
SQUARE_TOLERANCE = 1.1


def choose_frame_size(fmt: OutputFormat, clips: list[MediaInfo]) -> tuple[int, int]:
    """Return the output (width, height) for a requested format.

    `auto` follows the clips' display orientation: portrait when portrait clips outnumber
    landscape ones, square when every clip is square within 10 %, landscape otherwise (ties
    included). Clips without a video size are not counted.
    """
    if fmt is not OutputFormat.AUTO:
        return FRAME_SIZES[fmt]

    portrait = landscape = square = 0
    for info in clips:
        if not info.has_video or not info.width or not info.height:
            continue
        ratio = info.width / info.height
        if ratio > SQUARE_TOLERANCE:
            landscape += 1
        elif ratio < 1 / SQUARE_TOLERANCE:
            portrait += 1
        else:
            square += 1

    if portrait > landscape:
        return FRAME_SIZES[OutputFormat.PORTRAIT]
    if square and not portrait and not landscape:
        return FRAME_SIZES[OutputFormat.SQUARE]
    return FRAME_SIZES[OutputFormat.LANDSCAPE]


def scale_frame(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Scale a frame size down so its longer side fits `max_side`, keeping both sides even.

    Sizes that already fit are returned unchanged.
    """
    width, height = size
    if max_side < 2:
        raise ValueError(f"max_side must be at least 2, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    factor = max_side / longest
    return _even(width * factor, max_side), _even(height * factor, max_side)


def _even(value: float, limit: int) -> int:
    """Round to the nearest even number in [2, limit]."""
    return max(2, min(limit - limit % 2, round(value / 2) * 2))
