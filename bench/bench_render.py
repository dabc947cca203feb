"""Benchmark the montage renderer against a bare ffmpeg encode and against moviepy 2.x.

Run from the repository root:

    .venv/bin/python bench/bench_render.py [--work DIR] [--moviepy-python PATH]

The untimed preparation writes four 10 s 1920x1080 30 fps clips: testsrc2, mandelbrot,
gradients and life, in H.264 with a keyframe every second, as phones record. It also writes
a 32 s beat track at 96 BPM and a 12-segment plan that cuts every 4 beats (2.5 s) into a
30 s 1080x1920 montage. Each timed part then runs in a fresh Python process:

- `bare`: one ffmpeg run that encodes 30 s of 1080x1920 testsrc2 and the song with the
  renderer's x264 and AAC settings and `+faststart`;
- `render`: `render_montage` with a poster and a storyboard, default workers;
- `render-1`: the same with one worker, for comparison;
- `graph`: the alternative design, one ffmpeg run with one filter graph: every clip an
  input seeked to its segment, the renderer's per-segment filter chain on each, `concat`,
  the song under it;
- `reencode`: an ffmpeg encode of the montage's own frames, read from a raw file decoded
  before the clock starts, which is the cost of encoding exactly this output;
- `moviepy`: moviepy 2.x making the same edit (subclips, centre crop, resize, song with a
  1 s fade-out, libx264 with the same preset and CRF). moviepy is not a project
  dependency: the part is skipped unless `import moviepy` works in the interpreter given by
  `--moviepy-python` (default: this one).

For each part the report gives the wall time of the timed section, the CPU time (user +
system, the process and every ffmpeg it waited for) and the peak memory: the largest sum
of resident set sizes over the process tree, sampled from /proc every 20 ms, next to the
largest single process (`ru_maxrss`). The ratios at the end come from the same run, each
with its target:

- render / `reencode` at most 1.25x: the render against an encode of the same output;
- render / `bare` at most 1.25x as well, shown for comparison: testsrc2 costs x264 less than
  the montage's pictures, so this ratio includes the difference in content;
- peak memory of the render at most 800 MB;
- moviepy / render at least 5x. The line after it divides the moviepy time by the
  `reencode` time: a renderer must still encode the montage's frames, so on this machine
  no renderer with these x264 settings gets much above that ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecliptic.models import MontagePlan

FPS = 30
WIDTH, HEIGHT = 1080, 1920
BPM = 96.0
BEATS_PER_SEGMENT = 4
SEGMENTS = 12
CLIP_SECONDS = 10
SONG_SECONDS = 32.0
DURATION = SEGMENTS * BEATS_PER_SEGMENT * 60.0 / BPM  # 30 s
CLIP_SOURCES = (
    ("testsrc2", f"testsrc2=size=1920x1080:rate={FPS}:duration={CLIP_SECONDS}"),
    # mandelbrot is slow to generate at full size, so a half-size render is scaled up.
    ("mandelbrot", f"mandelbrot=size=960x540:rate={FPS},scale=1920:1080,"
                   f"trim=duration={CLIP_SECONDS}"),
    ("gradients", f"gradients=size=1920x1080:rate={FPS}:duration={CLIP_SECONDS}:speed=0.02"),
    ("life", f"life=size=480x270:rate={FPS}:mold=10:ratio=0.1:death_color=#203040:"
             f"life_color=#f0c040,scale=1920:1080:flags=neighbor,trim=duration={CLIP_SECONDS}"),
)  # fmt: skip
SAMPLE_SECONDS = 0.02
PARTS = ("bare", "render", "render-1", "graph", "reencode", "moviepy")


def _print(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201 (a command-line report)


# ----- preparation (untimed) -------------------------------------------------------------


def prepare(work: Path) -> Path:
    """Write the clips, the song and the plan into `work` (kept if present); return the spec.

    The spec is a JSON file with plain paths and numbers, so the moviepy part can read it
    without importing the ecliptic package.
    """
    from ecliptic.local.samples import make_song
    from ecliptic.media.ffmpeg import ffmpeg_exe

    work.mkdir(parents=True, exist_ok=True)
    clips = []
    for name, source in CLIP_SOURCES:
        path = work / f"{name}.mp4"
        if not path.is_file():
            _print(f"  generating {path.name}")
            _run([
                ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "20", "-g", str(FPS), "-pix_fmt", "yuv420p", str(path),
            ])  # fmt: skip
        clips.append(path)
    song = work / "song-96bpm.mp3"
    if not song.is_file():
        make_song(song, bpm=BPM, seconds=SONG_SECONDS)

    plan = _build_plan(clips, song)
    spec = {
        "clips": [str(path) for path in clips],
        "song": str(song),
        "plan": plan.model_dump(mode="json"),
        "ffmpeg": ffmpeg_exe(),
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return spec_path


def _build_plan(clips: list[Path], song: Path) -> MontagePlan:
    """Cut every 4 beats of a 96 BPM grid. Clips take turns, each continuing where it stopped."""
    from ecliptic.media.probe import probe_media
    from ecliptic.models import Analysis, BeatGrid, ClipFacts, MontagePlan
    from ecliptic.planner import BeatSpan, segments_from_beat_spans

    period = 60.0 / BPM
    beat_count = int(SONG_SECONDS / period)
    beats = [index * period for index in range(beat_count)]
    grid = BeatGrid(
        duration=SONG_SECONDS,
        tempo=BPM,
        beats=beats,
        downbeats=beats[::4],
        energy=[0.5] * beat_count,
        first_beat=0.0,
        last_beat=beats[-1],
    )
    facts = [
        ClipFacts(index=index, asset_id=f"vid_{index}", key=path.name, info=probe_media(path))
        for index, path in enumerate(clips)
    ]
    analysis = Analysis(
        job_id="job_bench",
        audio_asset_id="aud_bench",
        audio_key=song.name,
        audio=probe_media(song),
        beat_grid=grid,
        clips=facts,
    )
    segment_seconds = BEATS_PER_SEGMENT * period
    cursors = [0.0] * len(clips)
    spans = []
    for number in range(SEGMENTS):
        clip = number % len(clips)
        first = number * BEATS_PER_SEGMENT
        spans.append(BeatSpan(clip, cursors[clip], first, first + BEATS_PER_SEGMENT))
        cursors[clip] += segment_seconds
    segments = segments_from_beat_spans(spans, analysis, FPS, 0.0, DURATION)
    return MontagePlan(
        job_id="job_bench",
        planner="beat-grid",
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        audio_start=0.0,
        total_frames=segments[-1].end_frame,
        segments=segments,
    )


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=600)


# ----- timed parts (each in its own process) --------------------------------------------


def run_part(part: str, spec_path: Path, out: Path) -> None:
    """Run one part and print one JSON line with its timed wall and CPU seconds.

    Imports, probing the clips and decoding the raw frames happen before the clock starts.
    In the service the probe facts come from the analyze step.
    """
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if part == "bare":
        timed = _bare_encode(spec, out)
    elif part in ("render", "render-1"):
        timed = _render(spec, out, workers=1 if part == "render-1" else None)
    elif part == "graph":
        timed = _one_graph(spec, out)
    elif part == "reencode":
        timed = _encode_raw(spec, out)
    elif part == "moviepy":
        timed = _moviepy_edit(spec, out)
    else:
        raise SystemExit(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")

    started_self, started_children = _cpu_seconds()
    started = time.perf_counter()
    timed()
    seconds = time.perf_counter() - started
    ended_self, ended_children = _cpu_seconds()
    _print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": ended_self + ended_children - started_self - started_children,
                "cpu_python": ended_self - started_self,
                "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "maxrss_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def _cpu_seconds() -> tuple[float, float]:
    """Return the user + system seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _x264_args() -> list[str]:
    from ecliptic.media.render import CRF, PRESET

    return [
        "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-profile:v", "high",
        "-pix_fmt", "yuv420p", "-g", str(2 * FPS),
    ]  # fmt: skip


def _aac_args() -> list[str]:
    from ecliptic.media.render import AUDIO_BITRATE, AUDIO_SAMPLE_RATE, FADE_OUT_SECONDS

    fade = f"afade=t=out:st={DURATION - FADE_OUT_SECONDS}:d={FADE_OUT_SECONDS}"
    return [
        "-af", f"aresample={AUDIO_SAMPLE_RATE},{fade}", "-c:a", "aac", "-b:a", AUDIO_BITRATE,
        "-ar", str(AUDIO_SAMPLE_RATE), "-ac", "2",
    ]  # fmt: skip


def _bare_encode(spec: dict, out: Path) -> Callable[[], None]:
    source = f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={DURATION}"
    argv = [
        spec["ffmpeg"], "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", source, "-i", spec["song"], "-map", "0:v", "-map", "1:a",
        *_x264_args(), *_aac_args(), "-t", str(DURATION), "-movflags", "+faststart", str(out),
    ]  # fmt: skip
    return lambda: _run(argv)


def _render(spec: dict, out: Path, workers: int | None) -> Callable[[], None]:
    from ecliptic.media.probe import probe_media
    from ecliptic.media.render import render_montage
    from ecliptic.models import MontagePlan

    plan = MontagePlan.model_validate(spec["plan"])
    paths = [Path(path) for path in spec["clips"]]
    clips = {index: (path, probe_media(path)) for index, path in enumerate(paths)}

    def timed() -> None:
        render_montage(
            plan,
            audio_path=Path(spec["song"]),
            clips=clips,
            out_path=out,
            poster_path=out.with_suffix(".poster.jpg"),
            storyboard_path=out.with_suffix(".storyboard.jpg"),
            workers=workers,
        )

    return timed


def _one_graph(spec: dict, out: Path) -> Callable[[], None]:
    """Build the one-graph command from the renderer's own per-segment filter chain."""
    from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD
    from ecliptic.media.probe import probe_media
    from ecliptic.media.render import _segment_filter  # the chain under comparison
    from ecliptic.models import MontagePlan

    plan = MontagePlan.model_validate(spec["plan"])
    infos = [probe_media(Path(path)) for path in spec["clips"]]
    argv = [spec["ffmpeg"], "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    chains = []
    for number, segment in enumerate(plan.segments):
        info = infos[segment.clip]
        argv += [*FFMPEG_INPUT_GUARD, "-ss", f"{segment.source_start:.6f}"]
        argv += ["-i", spec["clips"][segment.clip]]
        chain = _segment_filter(plan, info, segment.frames / plan.fps, 0.0)
        chains.append(
            f"[{number}:{info.video_index}]{chain},"
            f"trim=end_frame={segment.frames},setpts=PTS-STARTPTS[v{number}]"
        )
    song_input = len(plan.segments)
    argv += ["-i", spec["song"]]
    inputs = "".join(f"[v{number}]" for number in range(len(plan.segments)))
    graph = ";".join([*chains, f"{inputs}concat=n={len(plan.segments)}:v=1:a=0[v]"])
    argv += ["-filter_complex", graph, "-map", "[v]", "-map", f"{song_input}:a"]
    argv += [*_x264_args(), *_aac_args(), "-t", str(DURATION), "-movflags", "+faststart"]
    argv.append(str(out))
    return lambda: _run(argv)


def _encode_raw(spec: dict, out: Path) -> Callable[[], None]:
    """Decode the rendered montage to a raw file now; the timed call encodes it."""
    raw = out.with_suffix(".yuv")
    _run([
        spec["ffmpeg"], "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-i", str(out.with_name("render.mp4")), "-map", "0:v",
        "-f", "rawvideo", "-pix_fmt", "yuv420p", str(raw),
    ])  # fmt: skip
    argv = [
        spec["ffmpeg"], "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS),
        "-i", str(raw), "-i", spec["song"], "-map", "0:v", "-map", "1:a",
        *_x264_args(), *_aac_args(), "-t", str(DURATION), "-movflags", "+faststart", str(out),
    ]  # fmt: skip

    def timed() -> None:
        try:
            _run(argv)
        finally:
            raw.unlink()

    return timed


def _moviepy_edit(spec: dict, out: Path) -> Callable[[], None]:
    """The same edit in moviepy 2.x: this function imports only moviepy and the stdlib."""
    from moviepy import AudioFileClip, VideoFileClip, concatenate_videoclips
    from moviepy.audio.fx import AudioFadeOut

    plan = spec["plan"]
    width, height, fps = plan["width"], plan["height"], plan["fps"]

    def timed() -> None:
        sources: dict[int, VideoFileClip] = {}
        parts = []
        for segment in plan["segments"]:
            clip = segment["clip"]
            if clip not in sources:
                sources[clip] = VideoFileClip(spec["clips"][clip], audio=False)
            start = segment["source_start"]
            seconds = (segment["end_frame"] - segment["start_frame"]) / fps
            part = sources[clip].subclipped(start, start + seconds)
            # Cover the frame: centre-crop to the output aspect, then resize.
            scale = max(width / part.w, height / part.h)
            part = part.cropped(
                x_center=part.w / 2,
                y_center=part.h / 2,
                width=round(width / scale),
                height=round(height / scale),
            ).resized((width, height))
            parts.append(part)
        video = concatenate_videoclips(parts)
        duration = plan["total_frames"] / fps
        start = plan["audio_start"]
        song = AudioFileClip(spec["song"]).subclipped(start, start + duration)
        video = video.with_audio(song.with_effects([AudioFadeOut(1.0)])).with_duration(duration)
        video.write_videofile(
            str(out),
            fps=fps,
            codec="libx264",
            preset="veryfast",
            audio_codec="aac",
            audio_bitrate="192k",
            audio_fps=48000,
            ffmpeg_params=["-crf", "20", "-profile:v", "high", "-g", str(2 * fps)],
            pixel_format="yuv420p",
            logger=None,
        )
        for source in sources.values():
            source.close()

    return timed


# ----- the driver -------------------------------------------------------------------------


class TreeMemory:
    """Sample the summed resident memory of a process and all its descendants from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_bytes())
            time.sleep(SAMPLE_SECONDS)

    def _tree_bytes(self) -> int:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
        total = 0
        stack = [self.pid]
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            try:
                with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                    total += int(handle.read().split()[1]) * self._page
            except OSError:
                continue
        return total

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def measure(part: str, python: str, spec_path: Path, out: Path) -> dict[str, float]:
    """Run one part in a fresh process and return its timings and memory peaks."""
    argv = [python, str(Path(__file__).resolve()), "--part", part]
    argv += ["--spec", str(spec_path), "--out", str(out)]
    env = dict(os.environ)
    # moviepy runs the same ffmpeg binary as the renderer.
    env["FFMPEG_BINARY"] = json.loads(spec_path.read_text(encoding="utf-8"))["ffmpeg"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    with TreeMemory(process.pid) as memory:
        stdout, _ = process.communicate(timeout=3600)
    if process.returncode != 0:
        raise SystemExit(f"part {part} failed with exit status {process.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_tree_mb"] = memory.peak_bytes / 1024 / 1024
    return result


def _has_moviepy(python: str) -> str | None:
    """Return the moviepy version that `python` imports, or None."""
    # moviepy 2.2.1 still reports 2.1.2 as moviepy.__version__, so ask the package metadata.
    code = "import importlib.metadata, moviepy; print(importlib.metadata.version('moviepy'))"
    probe = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def machine_lines(moviepy_version: str | None) -> list[str]:
    import av

    from ecliptic.media.ffmpeg import ffmpeg_exe

    cpu_model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        mem_kb = int(handle.readline().split()[1])
    version = subprocess.run(
        [ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return [
        f"date: {datetime.date.today().isoformat()}",
        f"cpus: {os.cpu_count()} ({cpu_model}), memory {mem_kb / 1024 / 1024:.1f} GiB",
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"ffmpeg: {version}",
        f"python {platform.python_version()}, PyAV {av.__version__}, "
        f"moviepy {moviepy_version or 'not installed'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for media and outputs (kept)")
    parser.add_argument(
        "--moviepy-python", default=sys.executable, help="interpreter that can import moviepy"
    )
    parser.add_argument("--skip", action="append", default=[], choices=PARTS, help="part to skip")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of all parts; the report takes the fastest"
    )
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        run_part(args.part, args.spec, args.out)
        return

    moviepy_version = _has_moviepy(args.moviepy_python)
    for line in machine_lines(moviepy_version):
        _print(line)

    temporary = None
    work = args.work
    if work is None:
        temporary = tempfile.mkdtemp(prefix="bench-render-")
        work = Path(temporary)
    try:
        _print(f"preparing media in {work}")
        spec_path = prepare(work)
        parts = [part for part in PARTS if part not in args.skip]
        if "moviepy" in parts and moviepy_version is None:
            parts.remove("moviepy")
            _print(
                f"moviepy: skipped, `import moviepy` fails in {args.moviepy_python} "
                "(make bench installs moviepy>=2,<3 into .venv-bench)"
            )
        if "reencode" in parts and "render" not in parts:
            parts.remove("reencode")  # it encodes the frames that the render part wrote
        runs: dict[str, list[dict[str, float]]] = {part: [] for part in parts}
        for round_number in range(1, args.repeat + 1):
            for part in parts:
                python = args.moviepy_python if part == "moviepy" else sys.executable
                result = measure(part, python, spec_path, work / f"{part}.mp4")
                runs[part].append(result)
                _print(
                    f"round {round_number} {part:<9} wall {result['seconds']:7.2f} s  "
                    f"cpu {result['cpu']:7.2f} s (python {result['cpu_python']:5.2f} s)  "
                    f"peak {result['peak_tree_mb']:5.0f} MB tree, "
                    f"{result['maxrss_child_mb']:4.0f} MB largest child"
                )
        _report(runs)
        _print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _report(runs: dict[str, list[dict[str, float]]]) -> None:
    """Print the fastest wall and CPU time of each part, the largest peak, and the ratios."""
    results = {
        part: {
            "seconds": min(run["seconds"] for run in part_runs),
            "cpu": min(run["cpu"] for run in part_runs),
            "cpu_python": min(run["cpu_python"] for run in part_runs),
            "peak_tree_mb": max(run["peak_tree_mb"] for run in part_runs),
        }
        for part, part_runs in runs.items()
    }
    rounds = max(len(part_runs) for part_runs in runs.values())

    _print()
    _print(f"{'part':<9} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    _print(f"(wall and cpu: fastest of {rounds} rounds; peak: highest)")
    for part, result in results.items():
        _print(
            f"{part:<9} {result['seconds']:8.2f} {result['cpu']:8.2f} {result['peak_tree_mb']:8.0f}"
        )
    render = results.get("render")
    if render is None:
        return

    _print()
    for base, label, target in (
        ("reencode", "encode of its own frames", 1.25),
        ("bare", "bare testsrc2 encode", 1.25),
        ("graph", "one filter graph", None),
    ):
        if base in results:
            wall = render["seconds"] / results[base]["seconds"]
            cpu = render["cpu"] / results[base]["cpu"]
            verdict = "" if target is None else f" (target <= {target}x: {_met(wall <= target)})"
            _print(f"render / {label}: wall {wall:.2f}x, cpu {cpu:.2f}x{verdict}")
    if "render-1" in results:
        gain = results["render-1"]["seconds"] / render["seconds"]
        _print(f"render with one worker / default: wall {gain:.2f}x")
    peak = render["peak_tree_mb"]
    _print(f"render peak memory: {peak:.0f} MB (target <= 800 MB: {_met(peak <= 800)})")
    if "moviepy" in results:
        moviepy = results["moviepy"]
        speedup = moviepy["seconds"] / render["seconds"]
        _print(
            f"moviepy / render: wall {speedup:.2f}x, render {speedup:.1f}x faster "
            f"(target >= 5x: {_met(speedup >= 5)})"
        )
        if "reencode" in results:
            # Every renderer encodes these frames with these settings, so its wall time is at
            # least about that of `reencode`, which keeps both CPUs busy.
            bound = moviepy["seconds"] / results["reencode"]["seconds"]
            _print(
                f"moviepy / encode of the render's frames: wall {bound:.2f}x, about the most "
                "that any renderer with these x264 settings can reach on this machine"
            )
        _print(f"moviepy's own Python process: {moviepy['cpu_python']:.1f} s of CPU")


def _met(ok: bool) -> str:
    return "met" if ok else "not met"

if __name__ == "__main__":
    main()
