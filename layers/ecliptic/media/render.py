"""Render a montage plan to an H.264/AAC MP4, a poster and a storyboard with ffmpeg.

Each segment is encoded on its own to a video-only MP4 with identical encoder settings, two
segments at a time, while the song is encoded to AAC beside them. The final mux joins the
parts and the audio by stream copy (concat demuxer on our own list) and moves the index to
the front. The segment runs also write the poster and the storyboard thumbnails, so no run
decodes the finished montage again.

Why per segment: one ffmpeg run with one filter graph for the whole montage opens every
clip at once, so its memory grows with the segment count and the source frame size. It
took about 35 MB per 1080p input, 700 to 760 MB for 12 segments, and plans may have
hundreds of segments. The per-segment render stays near 610 MB with two workers and 1080p
clips whatever the plan (1150 MB with 4K clips). On the benchmark it took 0.95 to 0.97x
the CPU time of the one graph (ffmpeg 9.0.2, 2 CPUs). `bench/bench_render.py` measures
both designs, and `docs/benchmarks.md` records the results.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error

from ecliptic.errors import RenderFailed

# Re-exported: the frame size functions live in a module without PyAV for the plan step.
from ecliptic.frame import choose_frame_size as choose_frame_size
from ecliptic.frame import scale_frame as scale_frame
from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD, run_ffmpeg
from ecliptic.media.probe import probe_media
from ecliptic.models import MediaInfo, MontagePlan, Segment

logger = logging.getLogger(__name__)

CRF = 20
PRESET = "veryfast"
AUDIO_BITRATE = "192k"
AUDIO_SAMPLE_RATE = 48000
FADE_OUT_SECONDS = 1.0
# Segment encodes that run at once. At 1080x1920 from 1080p clips one encode peaked at
# 240 MB with one thread and 320 MB with x264's own thread count, and the whole render with
# two workers at about 615 MB, Python included.
MAX_WORKERS = 2
# Storyboard: thumbnails of this width (at most the output width), up to this many per row
# and in total. Segments beyond the cap are skipped evenly.
STORYBOARD_THUMB_WIDTH = 240
STORYBOARD_COLUMNS = 6
STORYBOARD_MAX_THUMBS = 48
# mjpeg -q:v scale, 2 (best) to 31. At 6, 48 portrait thumbnails of the benchmark clips
# took 460 KB. A storyboard above STORYBOARD_MAX_BYTES is encoded again at the next
# quality in the list.
POSTER_QUALITY = 3
STORYBOARD_QUALITIES = (6, 10, 16)
STORYBOARD_MAX_BYTES = 1_000_000
_THUMB_QUALITY = 2  # the thumbnails are encoded again in the grid
_STORYBOARD_PADDING = 4
# Container families with a keyframe index (MP4/MOV sample tables, Matroska cues) that
# input seeking can use. Other inputs are decoded from the start: ffmpeg 9.0 seeks MPEG-TS
# by byte position and can land past the only keyframe of a clip.
_INDEXED_FORMATS = ("mov,", "matroska,")
# Share of the progress range that the segment encodes take; the mux and storyboard take
# the rest.
_SEGMENTS_PROGRESS_SHARE = 0.97


@dataclass(frozen=True)
class _Still:
    """A JPEG taken from one frame of a segment while it is encoded."""

    frame: int
    path: Path
    width: int | None
    quality: int


@dataclass
class _SegmentJob:
    number: int
    segment: Segment
    path: Path
    info: MediaInfo
    part: Path
    # ffmpeg -threads for the decoder and the encoder; 0 lets ffmpeg choose.
    threads: int = 0
    stills: list[_Still] = field(default_factory=list)


def render_montage(
    plan: MontagePlan,
    *,
    audio_path: Path,
    clips: dict[int, tuple[Path, MediaInfo]],
    out_path: Path,
    poster_path: Path | None = None,
    storyboard_path: Path | None = None,
    on_progress: Callable[[float], None] | None = None,
    timeout: float = 840.0,
    workers: int | None = None,
) -> None:
    """Render `plan` to `out_path`, with the song at `audio_path` under it.

    Parameters
    ----------
    clips
        The clip file and its probe facts, keyed by `Segment.clip`.
    poster_path
        Where to write a JPEG of the middle frame, if given.
    storyboard_path
        Where to write a JPEG grid with the middle frame of each segment, if given.
    on_progress
        Called with the done fraction (0..1), at most every 2 s and once with 1.0 at the end.
    timeout
        Seconds for the whole render, shared by all ffmpeg runs.
    workers
        Segment encodes that run at once; the default is the usable CPU count, at most
        `MAX_WORKERS`. With more than one, each encode but the last few runs with an equal
        share of the CPUs as its thread count. x264's frame threads took about 10 % more
        CPU time than one thread, and the other encodes keep the other CPUs busy anyway.

    Raises
    ------
    RenderFailed
        When the plan cannot be rendered with these clips, ffmpeg fails or time runs out.
    MediaRejected
        When the song file is not decodable audio.
    """
    started = time.monotonic()
    deadline = started + timeout
    _check_plan(plan, clips)
    song = probe_media(audio_path)
    if not song.has_audio or song.audio_index is None:
        raise RenderFailed(f"The song {audio_path.name} has no audio stream.")
    cpus = _usable_cpus()
    if workers is None:
        workers = min(MAX_WORKERS, cpus)
    workers = max(1, workers)
    threads = max(1, cpus // workers) if workers > 1 else 0

    logger.info(
        "render started: job %s, %d segments, %dx%d at %d fps, %d frames (%.2f s), "
        "%d workers",
        plan.job_id, len(plan.segments), plan.width, plan.height, plan.fps,
        plan.total_frames, plan.duration, workers,
    )  # fmt: skip
    progress = _ProgressReporter(on_progress)
    token = uuid.uuid4().hex[:12]
    finals = [path for path in (out_path, poster_path, storyboard_path) if path is not None]
    partials = {
        path: path.with_name(f".{path.stem}.{token}.partial{path.suffix}") for path in finals
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ecliptic-render-") as work_name:
            work = Path(work_name)
            jobs = _segment_jobs(plan, clips, work, threads)
            if poster_path is not None:
                _add_poster(plan, jobs, partials[poster_path])
            thumbs = _add_thumbnails(plan, jobs, work) if storyboard_path else []
            audio = work / "audio.m4a"
            _run_encodes(plan, jobs, audio_path, song, audio, workers, deadline, progress)

            list_path = _write_concat_list(work, [job.part for job in jobs])
            _mux_final(plan, list_path, audio, partials[out_path], deadline)
            if storyboard_path is not None:
                _tile_storyboard(plan, thumbs, partials[storyboard_path], deadline)

        for path in finals:
            os.replace(partials[path], path)
    finally:
        for partial in partials.values():
            partial.unlink(missing_ok=True)

    progress.finish()
    logger.info(
        "render finished: job %s, %d segments in %.1f s, %d bytes",
        plan.job_id, len(plan.segments), time.monotonic() - started, out_path.stat().st_size,
    )  # fmt: skip


def _check_plan(plan: MontagePlan, clips: dict[int, tuple[Path, MediaInfo]]) -> None:
    if plan.width % 2 or plan.height % 2:
        raise RenderFailed(
            f"The output size {plan.width}x{plan.height} is invalid: "
            "H.264 4:2:0 needs even width and height."
        )
    for number, segment in enumerate(plan.segments, start=1):
        entry = clips.get(segment.clip)
        if entry is None:
            raise RenderFailed(f"Segment {number} uses clip {segment.clip}, which is missing.")
        if not entry[1].has_video or entry[1].video_index is None:
            raise RenderFailed(
                f"Segment {number} uses clip {segment.clip}, which has no video stream."
            )


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RenderFailed("Rendering timed out before all steps finished.")
    return remaining


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _segment_jobs(
    plan: MontagePlan, clips: dict[int, tuple[Path, MediaInfo]], work: Path, threads: int
) -> list[_SegmentJob]:
    jobs = []
    for number, segment in enumerate(plan.segments, start=1):
        path, info = clips[segment.clip]
        part = work / f"part_{number:04d}.mp4"
        jobs.append(_SegmentJob(number, segment, path, info, part, threads))
    return jobs


def _add_poster(plan: MontagePlan, jobs: list[_SegmentJob], poster: Path) -> None:
    """Take the poster from the montage's middle frame, in the segment that shows it."""
    middle = plan.total_frames // 2
    job = next(job for job in jobs if job.segment.start_frame <= middle < job.segment.end_frame)
    job.stills.append(_Still(middle - job.segment.start_frame, poster, None, POSTER_QUALITY))


def storyboard_segments(count: int, limit: int = STORYBOARD_MAX_THUMBS) -> list[int]:
    """Return the indexes of the segments the storyboard shows: all, or `limit` spread evenly.

    The first and the last segment are always shown.
    """
    if count <= limit:
        return list(range(count))
    if limit == 1:
        return [0]
    # The step is above 1, so rounding never maps two positions to one index.
    return [round(position * (count - 1) / (limit - 1)) for position in range(limit)]


def _add_thumbnails(plan: MontagePlan, jobs: list[_SegmentJob], work: Path) -> list[Path]:
    """Take a thumbnail of the middle frame of each chosen segment, in storyboard order."""
    width = min(STORYBOARD_THUMB_WIDTH, plan.width)
    thumbs = []
    for order, index in enumerate(storyboard_segments(len(jobs))):
        job = jobs[index]
        thumb = work / f"thumb_{order:04d}.jpg"
        job.stills.append(_Still(job.segment.frames // 2, thumb, width, _THUMB_QUALITY))
        thumbs.append(thumb)
    return thumbs


# ----- encodes --------------------------------------------------------------------------


def _run_encodes(
    plan: MontagePlan,
    jobs: list[_SegmentJob],
    audio_path: Path,
    song: MediaInfo,
    audio_out: Path,
    workers: int,
    deadline: float,
    progress: _ProgressReporter,
) -> None:
    """Encode the song and every segment with `workers` ffmpeg processes at a time.

    The first failure cancels the encodes that have not started and is raised once the
    running ones end. Segment failures name the segment.
    """
    done = [0.0] * len(jobs)
    lock = threading.Lock()

    def report(index: int, fraction: float) -> None:
        with lock:
            done[index] = fraction * jobs[index].segment.frames
            total = sum(done) / plan.total_frames
        progress.report(total * _SEGMENTS_PROGRESS_SHARE)

    # Longest segments first, so the last encode to finish is a short one and the other
    # workers do not wait long for it. The last encodes to start may use every CPU: once
    # the queue is empty, a worker that finishes leaves its CPU to the encodes still
    # running.
    order = sorted(range(len(jobs)), key=lambda index: -jobs[index].segment.frames)
    for index in order[-workers:]:
        jobs[index].threads = 0
    # The song has its own thread, because it is light and single-threaded; its file must
    # exist before the mux. Keys order the errors: the song's, then the segments' in
    # output order.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-audio") as audio_pool,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render") as pool,
    ):
        futures: dict[Future[None], int] = {
            audio_pool.submit(_encode_audio, plan, audio_path, song, audio_out, deadline): -1
        }
        for index in order:

            def on_progress(fraction: float, index: int = index) -> None:
                report(index, fraction)

            future = pool.submit(_encode_job, plan, len(jobs), jobs[index], deadline, on_progress)
            futures[future] = index
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()

    # Leaving the pool waited for the encodes that were running.
    errors = {
        rank: error
        for future, rank in futures.items()
        if not future.cancelled() and (error := future.exception()) is not None
    }
    if errors:
        raise errors[min(errors)]


def _encode_job(
    plan: MontagePlan,
    count: int,
    job: _SegmentJob,
    deadline: float,
    on_progress: Callable[[float], None],
) -> None:
    try:
        _encode_segment_checked(plan, job, deadline, on_progress)
    except RenderFailed as exc:
        raise RenderFailed(
            f"Rendering segment {job.number} of {count} "
            f"(clip {job.segment.clip}) failed: {exc.message}",
            detail=exc.detail,
        ) from exc
    on_progress(1.0)


def _encode_segment_checked(
    plan: MontagePlan,
    job: _SegmentJob,
    deadline: float,
    on_progress: Callable[[float], None],
) -> None:
    """Encode one segment, seeking by index when that is safe, and check its frame count.

    Some files mark frames as keyframes that do not decode on their own (the corpus cockatoo
    MP4 decodes to grey blocks after any seek), and an MPEG-TS seek can land past the only
    keyframe. So the seeking run stops at the first corrupt frame (`-xerror`) and a run
    that fails or yields no frames is repeated with the clip decoded from its start.
    """
    segment, info = job.segment, job.info
    slot_seconds = segment.frames / plan.fps
    source_start = _clamped_start(job.number, segment, info)
    available = info.duration - source_start
    if available < slot_seconds:
        logger.info(
            "segment %d: clip %d has %.3f s from %.3f s for a %.3f s slot; "
            "holding its last frame",
            job.number, segment.clip, max(0.0, available), source_start, slot_seconds,
        )  # fmt: skip

    if source_start > 0 and info.format_name.startswith(_INDEXED_FORMATS):
        try:
            _encode_segment(plan, job, source_start, deadline, on_progress, input_seek=True)
            frames = _count_frames(job.part)
        except RenderFailed as exc:
            logger.debug("segment %d: seeking run failed: %s", job.number, exc.detail)
            frames = 0
        if frames == segment.frames:
            return
        logger.warning(
            "segment %d: seeking in clip %d gave %d of %d frames; decoding it from the start",
            job.number, segment.clip, frames, segment.frames,
        )  # fmt: skip

    _encode_segment(plan, job, source_start, deadline, on_progress, input_seek=False)
    frames = _count_frames(job.part)
    if frames != segment.frames:
        raise RenderFailed(f"it has {frames} frames, expected {segment.frames}.")


def _encode_segment(
    plan: MontagePlan,
    job: _SegmentJob,
    source_start: float,
    deadline: float,
    on_progress: Callable[[float], None],
    *,
    input_seek: bool,
) -> None:
    """Encode one segment to `job.part`, and its stills to their JPEG files.

    With `input_seek`, ffmpeg seeks to the keyframe before `source_start`, decodes from
    there and stops at the first corrupt frame. Without it, the clip is decoded from its
    start and the `trim` filter drops the frames before `source_start`, which is slower but
    does not depend on the keyframe index.
    """
    slot_seconds = job.segment.frames / plan.fps
    args: list[str] = ["-y"]
    if input_seek:
        args.append("-xerror")
    # input: -ss and trim both count from the container start_time, which ffmpeg maps to 0
    args += FFMPEG_INPUT_GUARD
    if input_seek:
        args += ["-ss", f"{source_start:.6f}"]
    args += ["-threads", str(job.threads), "-i", f"file:{job.path.resolve()}"]
    # filters: only the picture stream enters the graph, so audio, data tracks and cover
    # art never reach a muxer
    trim_start = 0.0 if input_seek else source_start
    chain = _segment_filter(plan, job.info, slot_seconds, trim_start)
    args += ["-filter_complex", _segment_graph(job, chain)]
    # the part
    args += ["-map", "[main]", "-map_metadata", "-1", "-map_chapters", "-1"]
    args += _video_codec_args(plan.fps)
    args += ["-threads", str(job.threads), "-frames:v", str(job.segment.frames)]
    args += ["-f", "mp4", str(job.part)]
    # the stills, one JPEG each
    for number, still in enumerate(job.stills):
        args += ["-map", f"[still{number}]", "-frames:v", "1"]
        args += ["-c:v", "mjpeg", "-q:v", str(still.quality)]
        args += ["-update", "1", "-f", "image2", str(still.path)]

    run_ffmpeg(
        args,
        timeout=_remaining(deadline),
        on_progress=on_progress,
        total_seconds=slot_seconds,
    )
    missing = [still.path.name for still in job.stills if not still.path.is_file()]
    if missing:
        raise RenderFailed(f"the still frames {', '.join(missing)} were not written.")


def _segment_graph(job: _SegmentJob, chain: str) -> str:
    """Feed the clip's picture through `chain` to `[main]` and split off one branch per still.

    Each still branch keeps one frame, counted from the segment's first output frame.
    """
    graph = f"[0:{job.info.video_index}]{chain}"
    if not job.stills:
        return graph + "[main]"
    branches = "".join(f"[s{number}]" for number in range(len(job.stills)))
    graph += f",split={len(job.stills) + 1}[main]{branches}"
    for number, still in enumerate(job.stills):
        graph += f";[s{number}]select=eq(n\\,{still.frame})"
        if still.width is not None:
            graph += f",scale={still.width}:-2"
        graph += f"[still{number}]"
    return graph


def _clamped_start(number: int, segment: Segment, info: MediaInfo) -> float:
    """Keep the seek point inside the clip so that at least one frame is decoded."""
    frame_seconds = 1 / info.fps if info.fps else 0.1
    latest = max(0.0, info.duration - 2 * frame_seconds)
    if segment.source_start <= latest:
        return segment.source_start
    logger.warning(
        "segment %d: source_start %.3f s is too close to the end of clip %d (%.3f s); "
        "using %.3f s",
        number, segment.source_start, segment.clip, info.duration, latest,
    )  # fmt: skip
    return latest


def _segment_filter(
    plan: MontagePlan, info: MediaInfo, slot_seconds: float, trim_start: float
) -> str:
    """Build the per-segment filter chain (ffmpeg has already applied the rotation).

    The chain drops frames before `trim_start` and converts to a constant frame rate. It
    centre-crops and scales to cover the frame in square pixels, and tone-maps clips tagged
    HDR. It ends with 8-bit 4:2:0 and BT.709 tags, then clones the last frame when the
    clip ends before the slot does.
    """
    width, height = plan.width, plan.height
    # Cover the frame: centre-crop the input to the output's display aspect, measured with
    # the pixel aspect (dar = iw*sar/ih), then scale to the exact output size with square
    # pixels. Cropping first keeps the scaler from upscaling picture that the crop drops.
    target = f"({width}/{height})"
    crop_width = f"if(gte(dar,{target}),min(iw,ih*{target}/sar),iw)"
    crop_height = f"if(gte(dar,{target}),ih,min(ih,iw*sar/{target}))"

    filters: list[str] = []
    if trim_start > 0:
        filters += [f"trim=start={trim_start:.6f}", "setpts=PTS-STARTPTS"]
    filters.append(f"fps={plan.fps}")
    filters.append(f"crop=w='{crop_width}':h='{crop_height}'")
    if info.is_hdr:
        filters.append(f"scale={width}:{height}")
    else:
        matrix = _input_matrix(info)
        filters.append(
            f"scale={width}:{height}:in_color_matrix={matrix}:out_color_matrix=bt709:out_range=tv"
        )
    filters.append("setsar=1")
    if info.is_hdr:
        filters += _tonemap_filters(info)
    filters.append("format=yuv420p")
    # ffmpeg 9 takes the encoder's colour tags from the frames and ignores -color_trc and
    # -color_primaries, so the frames carry the BT.709 tags.
    filters.append("setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709")
    # tpad only acts at end of input; -frames:v cuts the output to the slot.
    filters.append(f"tpad=stop_mode=clone:stop_duration={slot_seconds + 1:.3f}")
    return ",".join(filters)


# The scale filter's names for the YUV matrices that the probe reports.
_SCALE_MATRICES = {
    "bt709": "bt709",
    "bt470bg": "smpte170m",
    "smpte170m": "smpte170m",
    "fcc": "fcc",
    "smpte240m": "smpte240m",
    "bt2020nc": "bt2020",
    "bt2020c": "bt2020",
}


def _input_matrix(info: MediaInfo) -> str:
    """Return the YUV matrix the scaler reads the clip with.

    A tagged matrix is used as tagged. For an untagged clip the coded size decides, as in
    RetroArch's ffmpeg core: BT.709 from 1280 pixels wide or more than 576 lines high,
    BT.601 below. Left to itself the scaler reads every untagged clip as BT.601, which
    shifts the colours of untagged HD video when it converts them to BT.709.
    """
    if info.color_space in _SCALE_MATRICES:
        return _SCALE_MATRICES[info.color_space]
    if info.color_space is not None:
        return "auto"  # RGB or a rarer matrix: the scaler reads the frame's own tag
    width = info.coded_width or info.width or 0
    height = info.coded_height or info.height or 0
    return "bt709" if width >= 1280 or height > 576 else "smpte170m"


def _tonemap_filters(info: MediaInfo) -> list[str]:
    """Map PQ or HLG BT.2020 to SDR BT.709 (zscale to linear light, Hable curve, back).

    The input transfer and primaries come from the probe, because some files carry them
    only in the bitstream. The matrix is assumed to be BT.2020 non-constant luminance,
    which HDR10 and HLG video use.
    """
    primaries = info.color_primaries or "bt2020"
    return [
        f"zscale=tin={info.color_transfer}:pin={primaries}:min=bt2020nc:t=linear:npl=100",
        "format=gbrpf32le",
        "zscale=p=bt709",
        "tonemap=tonemap=hable:desat=0",
        "zscale=t=bt709:m=bt709:r=tv",
    ]


def _video_codec_args(fps: int) -> list[str]:
    """Encoder settings that every part shares, so the parts join without re-encoding."""
    return [
        "-c:v", "libx264",
        "-preset", PRESET,
        "-crf", str(CRF),
        "-profile:v", "high",
        "-pix_fmt", "yuv420p",
        "-g", str(2 * fps),
        "-fps_mode", "cfr",
        "-r", str(fps),
        # 512 ticks per frame, ffmpeg's own choice for 30 fps; set so every part matches.
        "-video_track_timescale", str(512 * fps),
    ]  # fmt: skip


def _count_frames(part: Path) -> int:
    """Return the video frame count of an encoded part; 0 when it has no video stream."""
    try:
        with av.open(str(part)) as container:
            if not container.streams.video:
                return 0
            return container.streams.video[0].frames
    except (av.error.FFmpegError, OSError) as exc:
        raise RenderFailed("its output is unreadable.", detail=str(exc)) from exc


def _encode_audio(
    plan: MontagePlan, audio_path: Path, song: MediaInfo, out: Path, deadline: float
) -> None:
    """Encode the song from `audio_start` to AAC in an MP4, exactly as long as the plan."""
    duration = plan.duration
    fade = min(FADE_OUT_SECONDS, duration)
    audio_filter = ",".join(
        [
            "asetpts=PTS-STARTPTS",
            f"aresample={AUDIO_SAMPLE_RATE}",
            # Silence after a song that ends early, so the audio lasts as long as the video.
            "apad",
            f"afade=t=out:st={duration - fade:.6f}:d={fade:.6f}",
        ]
    )
    args: list[str] = ["-y"]
    # input: the song, read from audio_start (seconds after its first sample)
    args += [*FFMPEG_INPUT_GUARD, "-ss", f"{plan.audio_start:.6f}"]
    args += ["-i", f"file:{audio_path.resolve()}"]
    # streams: the sound only, so cover art never reaches the muxer
    args += ["-map", f"0:{song.audio_index}", "-map_metadata", "-1", "-map_chapters", "-1"]
    args += ["-af", audio_filter, "-c:a", "aac", "-b:a", AUDIO_BITRATE]
    args += ["-ar", str(AUDIO_SAMPLE_RATE), "-ac", "2"]
    # an exact length, because apad makes the stream endless
    args += ["-t", f"{duration:.6f}", "-f", "mp4", str(out)]
    try:
        run_ffmpeg(args, timeout=_remaining(deadline))
    except RenderFailed as exc:
        raise RenderFailed(f"Encoding the song failed: {exc.message}", detail=exc.detail) from exc


# ----- join, storyboard -----------------------------------------------------------------


def _write_concat_list(work: Path, parts: list[Path]) -> Path:
    """Write an ffconcat list of the parts by relative name, which `-safe 1` accepts."""
    lines = ["ffconcat version 1.0"]
    lines += [f"file {part.name}" for part in parts]
    list_path = work / "parts.ffconcat"
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_path


def _mux_final(plan: MontagePlan, list_path: Path, audio: Path, out: Path, deadline: float) -> None:
    """Join the parts and the encoded song by stream copy, with the index in front."""
    args: list[str] = ["-y"]
    # input 0: our own parts; the list may name only local files of the mov family
    args += ["-protocol_whitelist", "file", "-format_whitelist", "concat,mov"]
    args += ["-f", "concat", "-safe", "1", "-i", f"file:{list_path}"]
    # input 1: our own AAC encode of the song
    args += ["-protocol_whitelist", "file", "-format_whitelist", "mov"]
    args += ["-i", f"file:{audio}"]
    # streams
    args += ["-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "-1", "-map_chapters", "-1"]
    args += ["-c", "copy"]
    # output: +faststart rewrites the file once to put the index first, for playback
    # before the download ends
    args += ["-t", f"{plan.duration:.6f}", "-movflags", "+faststart", "-f", "mp4", str(out)]
    run_ffmpeg(args, timeout=_remaining(deadline))


def _tile_storyboard(plan: MontagePlan, thumbs: list[Path], out: Path, deadline: float) -> None:
    """Tile the thumbnails (our own JPEGs, named in order) into one JPEG grid."""
    columns = min(STORYBOARD_COLUMNS, len(thumbs))
    rows = math.ceil(len(thumbs) / columns)
    pattern = thumbs[0].with_name("thumb_%04d.jpg")
    args: list[str] = ["-y"]
    # input: the numbered thumbnails in the render's own work folder
    args += ["-protocol_whitelist", "file", "-format_whitelist", "image2"]
    args += ["-f", "image2", "-start_number", "0", "-i", f"file:{pattern}"]
    # filters: a missing cell at the end of the last row stays background
    tile = f"tile={columns}x{rows}:padding={_STORYBOARD_PADDING}:margin={_STORYBOARD_PADDING}"
    args += ["-vf", f"{tile}:color=0x101010", "-frames:v", "1", "-c:v", "mjpeg"]
    for quality in STORYBOARD_QUALITIES:
        run_ffmpeg(
            [*args, "-q:v", str(quality), "-update", "1", "-f", "image2", str(out)],
            timeout=_remaining(deadline),
        )
        size = out.stat().st_size
        if size <= STORYBOARD_MAX_BYTES:
            break
    else:
        logger.warning(
            "storyboard: job %s, %d bytes at the lowest quality, above %d",
            plan.job_id, size, STORYBOARD_MAX_BYTES,
        )  # fmt: skip
    logger.debug(
        "storyboard: job %s, %d thumbnails in %dx%d at quality %d, %d bytes",
        plan.job_id, len(thumbs), columns, rows, quality, size,
    )  # fmt: skip


class _ProgressReporter:
    """Forward a rising done fraction to the caller at most every 2 s, from any thread."""

    interval = 2.0

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self._callback = callback
        self._last_time = -math.inf
        self._last_value = 0.0
        self._lock = threading.Lock()

    def report(self, fraction: float) -> None:
        if self._callback is None:
            return
        with self._lock:
            fraction = min(1.0, max(self._last_value, fraction))
            now = time.monotonic()
            if now - self._last_time < self.interval:
                return
            self._last_time = now
            self._last_value = fraction
            self._callback(fraction)

    def finish(self) -> None:
        if self._callback is not None:
            with self._lock:
                self._last_value = 1.0
                self._callback(1.0)
