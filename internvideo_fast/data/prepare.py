"""`ivf-prepare`: pre-resize a video dataset for fast random access.

Usage: ``ivf-prepare LIST --root ROOT --out OUT [--short-side 320] [--gop 16] [--jobs N] [--crf 23]
[--timeout S]`` (also ``python -m internvideo_fast.data.prepare``).

Every video of a list file is re-encoded with the ffmpeg command line tool so that

- its short side is ``short_side`` pixels (aspect kept, both sides even; videos already smaller keep
  their size: nothing is upscaled),
- it has a keyframe every ``gop`` frames exactly (``-g gop -keyint_min gop -sc_threshold 0``), so a seek
  decodes at most ``gop - 1`` frames before the one asked for,
- it is yuv420p H.264 (or HEVC) in MP4 with the index at the front (``-movflags +faststart``), at the
  source's frame rate as a constant frame rate, with no audio.

Outputs go to ``out_root/<the list's relative path, suffix .mp4>``, written to a temporary file in the same
folder and renamed, so an interrupted run never leaves a half file under the final name. A rerun skips the
outputs that exist, are newer than their source and probe as a video with frames (re-encoding everything
when the encoding parameters changed), so it resumes an interrupted run. ``jobs`` ffmpeg processes run at
once (driven by a thread pool: the work is in the subprocesses), each with ``cpu_count // jobs`` threads.
Progress (videos done, elapsed time, ETA) goes to stderr: a bar on a terminal, a line every 30 s otherwise
(:mod:`internvideo_fast.progress`).

Bad inputs (missing, empty, unreadable, truncated, ffmpeg failures and timeouts) are skipped, each listed
once with its reason in the returned summary and in ``out_root/bad_videos.txt`` (``path<TAB>reason`` lines).
A new list file (``out_root/<list file name>`` by default) holds the same lines pointing at the new relative
paths, without the bad videos: train with ``--root out_root`` and that list.

List formats are those of :mod:`internvideo_fast.data.lists`: ``path label [...]`` lines, CSV with a
``path,label`` header, and video-text ``path<TAB>caption`` lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path, PurePosixPath

from internvideo_fast.data.lists import _looks_like_csv, read_video_list, read_video_text_list
from internvideo_fast.errors import UserError, run_cli
from internvideo_fast.progress import Progress

__all__ = ["prepare_dataset", "prepare_video", "main", "BAD_LIST_NAME"]

BAD_LIST_NAME = "bad_videos.txt"
_PARAMS_NAME = ".ivf_prepare.json"
_CODECS = ("h264", "hevc")
_TMP_MARK = ".tmp"


# ----------------------------------------------------------------------------------------------- ffmpeg


@lru_cache(maxsize=1)
def _fps_mode_flag() -> str:
    """``-fps_mode`` (ffmpeg >= 5.1) or the older ``-vsync``."""
    try:
        text = subprocess.run(["ffmpeg", "-hide_banner", "-h", "long"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "-vsync"
    return "-fps_mode" if "-fps_mode" in text else "-vsync"


def _last_lines(text: str, count: int = 2) -> str:
    """ffmpeg's last messages, without the ``[demuxer @ 0x...]`` prefixes (so reruns give the same text)."""
    lines = [re.sub(r"\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return " | ".join(lines[-count:])[:300] if lines else "no message"


def _rate(text: str | None) -> Fraction | None:
    try:
        rate = Fraction(text) if text else None
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate is not None and 0 < rate <= 1000 else None


def _probe(path: str, timeout_s: float, count_packets: bool = False) -> dict:
    """The first video stream's fields (raises RuntimeError with ffprobe's message when there is none)."""
    command = ["ffprobe", "-v", "error", "-select_streams", "v:0"]
    if count_packets:
        command.append("-count_packets")
    command += ["-show_entries", "stream=codec_type,width,height,avg_frame_rate,r_frame_rate,nb_frames"
                + (",nb_read_packets" if count_packets else ""), "-of", "json", path]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ffprobe timed out after {timeout_s:g}s") from None
    if result.returncode != 0:
        raise RuntimeError(f"unreadable ({_last_lines(result.stderr)})")
    try:
        streams = json.loads(result.stdout or "{}").get("streams") or []
    except ValueError:
        streams = []
    if not streams:
        detail = f" ({_last_lines(result.stderr)})" if result.stderr.strip() else ""
        raise RuntimeError("no video stream" + detail)
    return streams[0]


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _output_frames(path: str, timeout_s: float) -> int:
    """Frames of an output (its packet count: one per frame in our encodes); 0 when unreadable."""
    try:
        return _int(_probe(path, timeout_s, count_packets=True).get("nb_read_packets")) or 0
    except RuntimeError:
        return 0


def _scale_filter(short_side: int) -> str:
    # Works on the (auto-rotated) input size: the short side becomes min(short_side, short side), rounded
    # down to even; the other side keeps the aspect ratio, rounded to even (-2).
    s = int(short_side)
    width = f"if(lte(iw\\,ih)\\,trunc(min({s}\\,iw)/2)*2\\,-2)"
    height = f"if(lte(iw\\,ih)\\,-2\\,trunc(min({s}\\,ih)/2)*2)"
    return f"scale=w={width}:h={height},format=yuv420p"


def _codec_options(codec: str, gop: int, crf: int, preset: str, threads: int) -> list[str]:
    if codec == "h264":
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf),
                "-g", str(gop), "-keyint_min", str(gop),
                "-sc_threshold", "0", "-threads", str(threads)]
    if codec == "hevc":
        return ["-c:v", "libx265", "-preset", preset, "-crf", str(crf), "-tag:v", "hvc1",
                "-threads", str(threads),
                "-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:log-level=error"]
    raise ValueError(f"unknown codec {codec!r}; expected one of {_CODECS}")


@dataclass(frozen=True)
class _Settings:
    short_side: int
    gop: int
    codec: str
    crf: int
    preset: str
    threads: int
    timeout_s: float
    force: bool


def _tmp_name(out: Path) -> Path:
    return out.with_name(f"{out.name}{_TMP_MARK}{os.getpid()}-{time.monotonic_ns() % 10**9}")


def _remove_stale_tmp(out: Path) -> None:
    if not out.parent.is_dir():
        return
    for stale in out.parent.glob(_glob_escape(out.name) + _TMP_MARK + "*"):
        try:
            stale.unlink()
        except OSError:
            pass


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _is_done(src: Path, out: Path, settings: _Settings) -> bool:
    try:
        if settings.force or not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
            return False
    except OSError:
        return False
    return _output_frames(str(out), min(settings.timeout_s, 120.0)) > 0


def prepare_video(src: str | os.PathLike, out: str | os.PathLike, settings: _Settings) -> tuple[str, str]:
    """Re-encodes one video; returns ``(status, detail)``: ("encoded", ""), ("skipped", "") when the output
    is already done, or ("bad", reason)."""
    src, out = Path(src), Path(out)
    if not src.exists():
        return "bad", "missing file"
    if not src.is_file():
        return "bad", "not a file"
    if src.stat().st_size == 0:
        return "bad", "empty file"
    if _is_done(src, out, settings):
        return "skipped", ""
    probe_timeout = min(settings.timeout_s, 120.0)
    try:
        info = _probe(str(src), probe_timeout)
    except RuntimeError as error:
        return "bad", str(error)
    declared = _int(info.get("nb_frames"))
    rate = _rate(info.get("avg_frame_rate")) or _rate(info.get("r_frame_rate"))

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = _tmp_name(out)
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-threads", str(settings.threads),
               "-i", str(src), "-map", "0:v:0", "-an", "-sn", "-dn",
               "-vf", _scale_filter(settings.short_side),
               _fps_mode_flag(), "cfr"]
    if rate is not None:
        command += ["-r", f"{rate.numerator}/{rate.denominator}"]
    command += _codec_options(settings.codec, settings.gop, settings.crf, settings.preset, settings.threads)
    command += ["-pix_fmt", "yuv420p", "-movflags", "+faststart", "-max_muxing_queue_size", "4096",
                "-f", "mp4", str(tmp)]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                    timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            return "bad", f"timeout: ffmpeg ran over {settings.timeout_s:g}s"
        if result.returncode != 0:
            if "partial file" in result.stderr or "after EOF" in result.stderr:  # the data ends before its frames
                return "bad", f"truncated: ffmpeg stopped at the end of the data ({_last_lines(result.stderr)})"
            return "bad", f"ffmpeg failed (exit {result.returncode}): {_last_lines(result.stderr)}"
        frames = _output_frames(str(tmp), probe_timeout)
        if "partial file" in result.stderr:
            return "bad", f"truncated: partial file, {frames} of {declared or '?'} frames decoded"
        if frames == 0:
            return "bad", f"no frames decoded ({_last_lines(result.stderr)})"
        if declared and frames < declared - max(2, declared // 50):
            return "bad", f"truncated: {frames} of {declared} frames decoded ({_last_lines(result.stderr)})"
        os.replace(tmp, out)
        return "encoded", ""
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------------ lists


def _detect_format(text: str) -> str:
    lines = (line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    first = next(lines, None)
    if first is None:
        return "video"
    if _looks_like_csv(first):
        return "csv"
    if "\t" in first and not re.fullmatch(r"[+-]?\d+(\s.*)?", first.split("\t", 1)[1].strip(), re.S):
        return "text"
    return "video"


def _read_list(list_file: Path, list_format: str) -> tuple[str, str, list[str]]:
    """Returns (format, text, record paths in order)."""
    if not list_file.exists():
        raise FileNotFoundError(f"video list {list_file} does not exist")
    text = list_file.read_text(encoding="utf-8-sig")
    fmt = _detect_format(text) if list_format == "auto" else list_format
    if fmt == "text":
        paths = [record.path for record in read_video_text_list(list_file)]
    elif fmt in ("video", "csv"):
        paths = [record.path for record in read_video_list(list_file, allow_extra=True)]
        fmt = "csv" if _detect_format(text) == "csv" else "video"
    else:
        raise ValueError(f"unknown list format {list_format!r}; expected auto, video or text")
    return fmt, text, paths


def _rewrite_list(fmt: str, text: str, mapping: dict[str, str | None]) -> tuple[str, int]:
    """The list's text with every record's path replaced by ``mapping[path]``; records mapped to None are
    dropped. Returns (text, records written)."""
    written = 0
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        path_col = None
        for row in csv.reader(io.StringIO(text)):
            if not row or not "".join(row).strip():
                continue
            if path_col is None:
                path_col = [cell.strip().lower() for cell in row].index("path")
                writer.writerow(row)
                continue
            new = mapping[row[path_col].strip()]
            if new is not None:
                writer.writerow(row[:path_col] + [new] + row[path_col + 1:])
                written += 1
        return out.getvalue(), written
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            lines.append(line + "\n")
            continue
        if fmt == "text":
            path, caption = line.split("\t")
            new = mapping[path.strip()]
            if new is not None:
                lines.append(f"{new}\t{caption.strip()}\n")
                written += 1
        else:
            path = stripped.split()[0]
            new = mapping[path]
            if new is not None:
                lines.append(new + stripped[len(path):] + "\n")
                written += 1
    return "".join(lines), written


def _output_relpath(path: str, root: Path | None) -> str:
    """Where a list path goes under the output root (a posix relative path with suffix .mp4)."""
    p = Path(path)
    if p.is_absolute():
        if root is not None and p.is_relative_to(root):
            p = p.relative_to(root)
        elif root is not None and p.resolve().is_relative_to(root.resolve()):
            p = p.resolve().relative_to(root.resolve())
        else:
            p = Path("_absolute") / p.relative_to(p.anchor)
    parts = [("__" if part == ".." else part) for part in PurePosixPath(p.as_posix()).parts
             if part not in ("", ".")]
    rel = PurePosixPath(*parts) if parts else PurePosixPath("video")
    return rel.with_suffix(".mp4").as_posix() if rel.suffix else (rel.as_posix() + ".mp4")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- the run


def prepare_dataset(list_file: str | os.PathLike, root: str | os.PathLike | None, out_root: str | os.PathLike,
                    short_side: int = 320, gop: int = 16, codec: str = "h264", crf: int = 23,
                    jobs: int | None = None,
                    timeout_s: float = 600.0, out_list: str | os.PathLike | None = None, preset: str = "fast",
                    list_format: str = "auto", force: bool = False, verbose: bool = False) -> dict:
    """Re-encodes every video of ``list_file`` (paths relative to ``root``) under ``out_root`` (see the module
    docstring) and writes the new list. Returns a summary dict: ``total`` (distinct videos), ``encoded``,
    ``skipped`` (already done), ``bad`` (a list of ``(path, reason)``, each path once, in list order),
    ``records`` (lines written to the new list), ``out_list``, ``bad_list``, ``seconds``."""
    start = time.monotonic()
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise RuntimeError("ivf-prepare needs the ffmpeg and ffprobe command line tools")
    if short_side < 2:
        raise ValueError(f"short_side must be >= 2, got {short_side}")
    if gop < 1:
        raise ValueError(f"gop must be >= 1, got {gop}")
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {_CODECS}")
    cpus = os.cpu_count() or 1
    jobs = max(1, int(jobs) if jobs else cpus)
    list_file = Path(list_file)
    root = Path(root) if root is not None else None
    out_root = Path(out_root)
    out_list = Path(out_list) if out_list is not None else out_root / list_file.name
    if root is not None and out_root.resolve() == root.resolve():
        raise ValueError(f"the output root {out_root} is the dataset root: outputs would replace the sources")
    if out_list.resolve() == list_file.resolve():
        raise ValueError(f"the new list {out_list} would overwrite the input list")
    fmt, text, paths = _read_list(list_file, list_format)
    out_root.mkdir(parents=True, exist_ok=True)

    # Encoding parameters: when they changed since the last run, its outputs are stale.
    params = {"short_side": int(short_side), "gop": int(gop), "codec": codec, "crf": int(crf),
              "preset": preset}
    params_file = out_root / _PARAMS_NAME
    try:
        previous = json.loads(params_file.read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous != params:
        if verbose:
            print(f"ivf-prepare: parameters changed since the last run ({previous} -> {params}): re-encoding",
                  file=sys.stderr)
        force = True
    _write_atomic(params_file, json.dumps(params) + "\n")
    settings = _Settings(int(short_side), int(gop), codec, int(crf), preset, max(1, cpus // jobs),
                         float(timeout_s), bool(force))

    # One job per distinct source; two sources that would land on the same output name: the later is bad.
    mapping: dict[str, str | None] = {}
    tasks: dict[str, tuple[Path, Path]] = {}  # list path -> (source, output)
    owner: dict[str, str] = {}  # output relpath -> list path
    bad: dict[str, str] = {}
    source_of: dict[str, str] = {}  # normalised source -> first list path naming it
    alias: dict[str, str] = {}  # another spelling of a source -> the first list path naming it
    for path in paths:
        if path in mapping or path in alias:
            continue
        rel = _output_relpath(path, root)
        src = Path(path) if root is None or os.path.isabs(path) else root / path
        key = os.path.normpath(os.path.abspath(src))
        if key in source_of:
            alias[path] = source_of[key]
            continue
        source_of[key] = path
        if rel in owner:
            bad[path] = f"output name {rel} collides with {owner[rel]}"
            mapping[path] = None
            continue
        owner[rel] = path
        mapping[path] = rel
        tasks[path] = (src, out_root / rel)

    counts = {"encoded": 0, "skipped": 0}
    progress = Progress(len(tasks), "ivf-prepare", unit="videos", stream=sys.stderr, enabled=verbose)
    with progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(prepare_video, src, out, settings): path for path, (src, out) in tasks.items()}
        for future in as_completed(futures):
            path = futures[future]
            try:
                status, detail = future.result()
            except Exception as error:  # noqa: BLE001 - one bad file must not stop the run
                status, detail = "bad", f"{type(error).__name__}: {error}"
            if status == "bad":
                bad[path] = " ".join(detail.split())
                mapping[path] = None
            else:
                counts[status] += 1
            progress.update(note=f"{counts['encoded']} encoded, {counts['skipped']} already done, "
                                 f"{len(bad)} bad")
    for path, first in alias.items():
        mapping[path] = mapping[first]

    new_text, written = _rewrite_list(fmt, text, mapping)
    _write_atomic(out_list, new_text)
    bad_items = [(path, bad[path]) for path in dict.fromkeys(paths) if path in bad]
    bad_list = out_root / BAD_LIST_NAME
    _write_atomic(bad_list, "".join(f"{path}\t{reason}\n" for path, reason in bad_items))
    return {"total": len(source_of), "encoded": counts["encoded"],
            "skipped": counts["skipped"], "bad": bad_items, "records": written, "out_list": str(out_list),
            "bad_list": str(bad_list), "seconds": round(time.monotonic() - start, 3)}


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ivf-prepare",
        description="Re-encode a dataset's videos for fast random access: short side --short-side "
                    "(never upscaled), a keyframe every --gop frames, constant frame rate, no audio. "
                    "Multi-process and resumable; bad videos are skipped and listed in OUT/bad_videos.txt. "
                    "Writes OUT/<list name> (or --out-list) pointing at the new files: use it with "
                    "--root OUT.")
    parser.add_argument("list_file",
                        help="video list: 'path label' lines, CSV with path,label, or path<TAB>caption lines")
    parser.add_argument("--root", default=None,
                        help="folder the list's paths are relative to (default: the list's folder)")
    parser.add_argument("--out", required=True, help="output root folder")
    parser.add_argument("--out-list", default=None, help="new list file (default: OUT/<list file name>)")
    parser.add_argument("--short-side", type=int, default=320, help="short side in pixels (default 320)")
    parser.add_argument("--gop", type=int, default=16, help="keyframe interval in frames (default 16)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="ffmpeg processes at once (default: CPU count)")
    parser.add_argument("--crf", type=int, default=23, help="encoder quality, lower is better (default 23)")
    parser.add_argument("--codec", choices=_CODECS, default="h264", help="output codec (default h264)")
    parser.add_argument("--preset", default="fast", help="encoder preset (default fast)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per video before it counts as bad (default 600)")
    parser.add_argument("--format", dest="list_format", choices=("auto", "video", "text"), default="auto",
                        help="list format (default: detected)")
    parser.add_argument("--force", action="store_true", help="re-encode outputs that are already done")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else str(Path(args.list_file).parent)
    try:
        summary = prepare_dataset(args.list_file, root, args.out, short_side=args.short_side, gop=args.gop,
                                  codec=args.codec, crf=args.crf, jobs=args.jobs, timeout_s=args.timeout,
                                  out_list=args.out_list, preset=args.preset, list_format=args.list_format,
                                  force=args.force, verbose=not args.quiet)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise UserError(str(error)) from error
    for path, reason in summary["bad"]:
        print(f"ivf-prepare: bad video {path}: {reason}", file=sys.stderr)
    print(f"{summary['total']} videos: {summary['encoded']} encoded, {summary['skipped']} already done, "
          f"{len(summary['bad'])} bad (listed in {summary['bad_list']}); {summary['records']} records in "
          f"{summary['out_list']} ({summary['seconds']:.1f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("ivf-prepare", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
