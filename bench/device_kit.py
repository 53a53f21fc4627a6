"""The device kit: what a run on an offline GPU machine needs that its image lacks, in parts of a fixed size.

``python bench/device_kit.py build [--out build/device-kit] [--part-mib 56]`` (``make device-kit``) gathers

- ``dali.tar.xz``: NVIDIA DALI's package folder (``nvidia/dali`` and its dist-info, taken from this Python's
  installation) without the other Python versions' extension modules (only ``cpython-<tag>``, default 312,
  stays) and without ``nvimgcodec`` / ``libnvcomp`` (image and compression codecs: video decoding runs
  without them), plus an ``nvidia/__init__.py`` that extends its path, so the image's own ``nvidia.*``
  packages (cuDNN, NCCL) stay importable behind it;
- ``wheels/``: DALI's small dependencies and PyAV (which bundles FFmpeg: the CPU decoder of the baseline)
  for that Python, from ``pip download`` (``--wheel-cache`` keeps them between builds);
- ``clips/``: encoded test clips made here with ffmpeg (:data:`CLIP_SETS`: H.264, HEVC and VP9 at 1080p,
  720p and 320p short side, and ``ivf-prepare``'s 320p output of the 1080p H.264 clips), each set with a
  ``list.txt`` (``path label`` lines);

into one uncompressed tar, split into ``kit.tar.partNNN`` files of at most ``--part-mib`` MiB, with
``SHA256SUMS`` (``sha256sum -c`` format, one line per part), ``manifest.json`` (contents, sizes, the whole
tar's SHA-256) and a copy of this script, all in ``OUT/parts/``. Our ``_C`` is not in the kit: it needs the
target's torch, so the GPU run builds it from the source tree (``setup.py build_ext --inplace``) or runs
the ops that need no extension.

``python device_kit.py join --parts DIR --target DIR`` (stdlib only, so it runs on the bare target) checks
every part listed in ``SHA256SUMS`` (a missing or corrupted part fails by name), joins them, checks the
whole, unpacks the DALI folder into ``TARGET/site``, installs the wheels there (``pip install --no-deps
--no-index --target``, or unzipped where the target has no pip), leaves the clips in ``TARGET/clips``
and prints the ``PYTHONPATH`` to use (also written to ``TARGET/env.sh``). Parts may arrive one at a time
(``SHA256SUMS``, ``manifest.json`` and this script travel with the first; a 56 MiB part leaves room for a
few MiB of source tree in a 64 MiB transfer): ``join`` runs once the last is there, and
``device_kit.py verify --parts DIR`` says which parts are still missing or damaged before that.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PART_PREFIX = "kit.tar.part"
CHECKSUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
DEFAULT_PART_MIB = 56
CHUNK = 1 << 20

# DALI's small dependencies (versions as requirements/test.txt's DALI 2.4 resolves them) and PyAV.
WHEELS = ("astunparse==1.6.3", "gast==0.7.0", "six==1.17.0", "makefun==1.16.0", "libcst==1.9.0", "nvtx==0.2.17",
          "optree==0.20.0", "packaging==26.3", "pyyaml==6.0.4", "av==18.1.0")
# Package folders of DALI's requirements that video decoding does not use.
DALI_DROPPED = ("nvimgcodec", "libnvcomp")
# name -> (codec, short side, source): the encoded clips. "prepared" sets are ivf-prepare's output of the
# named set (short side 320, a keyframe every 16 frames, H.264).
CLIP_SETS = {
    "h264_1080p": ("h264", 1080, None),
    "h264_720p": ("h264", 720, None),
    "hevc_720p": ("hevc", 720, None),
    "hevc_320p": ("hevc", 320, None),
    "vp9_720p": ("vp9", 720, None),
    "vp9_320p": ("vp9", 320, None),
    "prepared_320p": ("h264", 320, "h264_1080p"),
}
_ENCODERS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "26"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "28", "-tag:v", "hvc1",
             "-x265-params", "log-level=error"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "36"],
}


class KitError(RuntimeError):
    """A part missing or corrupted, or a step of the build failing: the message names it."""


# ---------------------------------------------------------------------------------------------------------
# split, checksums, join (stdlib only: this half runs on the target)
# ---------------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_file(path: Path, parts_dir: Path, part_bytes: int) -> list[Path]:
    """Cuts ``path`` into ``parts_dir/kit.tar.part000, ...`` of at most ``part_bytes`` bytes each and
    writes ``SHA256SUMS`` beside them. Returns the parts in order."""
    if part_bytes < 1:
        raise KitError(f"part size must be positive, got {part_bytes} bytes")
    parts_dir.mkdir(parents=True, exist_ok=True)
    for stale in parts_dir.glob(f"{PART_PREFIX}*"):
        stale.unlink()
    parts: list[Path] = []
    with open(path, "rb") as source:
        while True:
            part = parts_dir / f"{PART_PREFIX}{len(parts):03d}"
            left = part_bytes
            with open(part, "wb") as sink:
                while left and (block := source.read(min(CHUNK, left))):
                    sink.write(block)
                    left -= len(block)
            if left == part_bytes and parts:  # nothing left for this part
                part.unlink()
                break
            parts.append(part)
            if left:
                break
    (parts_dir / CHECKSUMS).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in parts))
    return parts


def read_checksums(parts_dir: Path) -> list[tuple[str, str]]:
    """``(sha256, name)`` of every part, in order, from ``parts_dir/SHA256SUMS``."""
    listing = parts_dir / CHECKSUMS
    if not listing.is_file():
        raise KitError(f"{listing}: checksum list missing (it comes with the first part)")
    entries = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *]?(\S+)", line.strip())
        if match is None:
            raise KitError(f"{listing}:{number}: not a '<sha256>  <name>' line: {line!r}")
        entries.append((match.group(1), match.group(2)))
    if not entries:
        raise KitError(f"{listing}: lists no part")
    return entries


def verify_parts(parts_dir: Path) -> list[Path]:
    """Checks every listed part; raises :class:`KitError` naming each missing or corrupted one."""
    problems, parts = [], []
    for expected, name in read_checksums(parts_dir):
        part = parts_dir / name
        if not part.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256_file(part)) != expected:
            problems.append(f"{name}: SHA-256 {actual[:12]}... is not the listed {expected[:12]}... (corrupted "
                            "or cut in transfer: send it again)")
        parts.append(part)
    if problems:
        raise KitError(f"device kit in {parts_dir}: " + "; ".join(problems))
    return parts


def join_parts(parts_dir: Path, out: Path) -> Path:
    """Verifies the parts and concatenates them into ``out``; checks the whole against the manifest."""
    parts = verify_parts(parts_dir)
    with open(out, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, CHUNK)
    manifest = parts_dir / MANIFEST
    if manifest.is_file():
        expected = json.loads(manifest.read_text()).get("sha256")
        if expected and sha256_file(out) != expected:
            raise KitError(f"{out}: the joined kit's SHA-256 is not the manifest's (parts from different builds?)")
    return out


def _safe_members(archive: tarfile.TarFile, where: str):
    for member in archive.getmembers():
        name = os.path.normpath(member.name)
        if name.startswith(("..", "/")) or member.issym() and os.path.isabs(member.linkname):
            raise KitError(f"{where}: unsafe member {member.name!r}")
        yield member


def _extract(archive: tarfile.TarFile, target: Path, where: str) -> None:
    members = list(_safe_members(archive, where))
    if hasattr(tarfile, "data_filter"):
        archive.extractall(target, members=members, filter="tar")
    else:  # Python < 3.11.4
        archive.extractall(target, members=members)


def _install_wheels(wheels: list[Path], site: Path, use_pip: bool) -> dict[str, str]:
    """Installs ``wheels`` into ``site``: one ``pip install --no-deps --no-index --target`` or, without pip,
    each unzipped (a wheel is a zip of its site-packages layout). Returns wheel name -> how."""
    if not wheels:
        return {}
    if use_pip:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                   "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, wheels)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise KitError(f"pip install of {[w.name for w in wheels]} failed: {' '.join(done.stderr.split())[-300:]}")
        return {wheel.name: "pip" for wheel in wheels}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise KitError(f"{wheel.name}: unsafe member {name!r}")
            archive.extractall(site)
    return {wheel.name: "unzip" for wheel in wheels}


def install_kit(parts_dir: Path, target: Path, use_pip: bool | None = None) -> dict:
    """Joins and verifies the parts, then installs the kit under ``target`` (see the module docstring).
    Returns ``{"site", "clips", "pythonpath", "wheels", "dali", "seconds"}``."""
    start = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    site, clips = target / "site", target / "clips"
    site.mkdir(exist_ok=True)
    if use_pip is None:
        use_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    joined = join_parts(parts_dir, target / "kit.tar")
    unpacked = target / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(joined) as archive:
        _extract(archive, unpacked, str(joined))
    joined.unlink()
    dali = unpacked / "dali.tar.xz"
    if dali.is_file():
        with tarfile.open(dali) as archive:
            _extract(archive, site, str(dali))
    wheels = _install_wheels(sorted((unpacked / "wheels").glob("*.whl")), site, use_pip)
    if (unpacked / "clips").is_dir():
        shutil.rmtree(clips, ignore_errors=True)
        shutil.move(str(unpacked / "clips"), clips)
    shutil.rmtree(unpacked, ignore_errors=True)
    (target / "env.sh").write_text(f"export PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                                   f"export IVF_KIT_CLIPS={clips}\n")
    return {"site": str(site), "clips": str(clips) if clips.is_dir() else None, "pythonpath": str(site),
            "wheels": wheels, "dali": dali.is_file(), "seconds": round(time.monotonic() - start, 1)}


# ---------------------------------------------------------------------------------------------------------
# build (here, with network and ffmpeg)
# ---------------------------------------------------------------------------------------------------------
def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        output = " ".join((done.stderr or done.stdout).split())
        raise KitError(f"{what} failed (exit {done.returncode}): {output[-400:]}")
    return done


def dali_package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nvidia.dali")
    if spec is None or not spec.submodule_search_locations:
        raise KitError("NVIDIA DALI is not installed in this Python (pip install nvidia-dali-cuda130)")
    return Path(list(spec.submodule_search_locations)[0])


def _keeps(name: str, python_tag: str) -> bool:
    """False for another Python version's extension module (``*.cpython-311-*.so``, ``*.cpython-314t-*``)."""
    match = re.search(r"\.cpython-(\d+t?)-", name)
    return match is None or match.group(1) == python_tag


def pack_dali(out: Path, python_tag: str, xz_preset: int = 6) -> dict:
    """``dali.tar.xz`` of the DALI folder for one Python (see the module docstring)."""
    package = dali_package_dir()
    site = package.parent.parent
    dist_infos = sorted(site.glob("nvidia_dali_cuda*.dist-info"))
    dropped = []

    def keep(info: tarfile.TarInfo):
        if not _keeps(info.name, python_tag) or "__pycache__" in info.name.split("/"):
            dropped.append(info.name)
            return None
        return info

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "dali.tar"
        with tarfile.open(plain, "w") as archive:
            init = b"__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
            info = tarfile.TarInfo("nvidia/__init__.py")
            info.size, info.mode = len(init), 0o644
            archive.addfile(info, io.BytesIO(init))
            archive.add(package, arcname="nvidia/dali", filter=keep)
            for dist_info in dist_infos:
                archive.add(dist_info, arcname=dist_info.name)
        if shutil.which("xz"):
            _run(["xz", f"-{xz_preset}", "-T0", "-k", "-f", str(plain)], "xz")
            shutil.move(str(plain) + ".xz", out)
        else:
            import lzma

            with open(plain, "rb") as source, lzma.open(out, "wb", preset=xz_preset) as sink:
                shutil.copyfileobj(source, sink, CHUNK)
    version = dist_infos[-1].name.removesuffix(".dist-info").split("-")[1] if dist_infos else "unknown"
    return {"version": version, "python": python_tag, "bytes": out.stat().st_size, "dropped_files": len(dropped),
            "dropped_packages": list(DALI_DROPPED)}


def download_wheels(dest: Path, cache: Path, python_tag: str, requirements=WHEELS) -> list[str]:
    """``pip download`` of ``requirements`` as binary wheels for CPython ``python_tag`` on manylinux x86-64."""
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    version = f"{python_tag[0]}.{python_tag[1:]}"
    platforms = [arg for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
                 for arg in ("--platform", p)]
    abis = [arg for abi in (f"cp{python_tag}", "abi3", "none") for arg in ("--abi", abi)]
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
          "--no-deps", "--python-version", version, "--implementation", "cp", *abis, *platforms, "-d", str(cache),
          *requirements], "pip download of the kit's wheels")
    names = []
    for requirement in requirements:
        project, _, pinned = requirement.partition("==")
        stem = re.sub(r"[-_.]+", "_", project).lower()
        found = [w for w in cache.glob("*.whl")
                 if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == stem
                 and (not pinned or w.name.split("-")[1] == pinned)]
        if not found:
            raise KitError(f"no wheel of {requirement} in {cache} after pip download")
        shutil.copy2(found[0], dest / found[0].name)
        names.append(found[0].name)
    return names


def _scale(short_side: int) -> str:
    return f"scale=-2:{short_side}"  # the clips are landscape: the height is the short side


def make_clips(dest: Path, clips_per_set: int = 4, seconds: float = 4.0, fps: int = 30,
               sets: dict = CLIP_SETS) -> dict:
    """Encodes :data:`CLIP_SETS` into ``dest/<set>/clip<N>.<ext>`` with a ``list.txt`` per set."""
    if shutil.which("ffmpeg") is None:
        raise KitError("making the kit's clips needs the ffmpeg command line tool")
    summary = {}
    frames = int(round(seconds * fps))
    for name, (codec, short_side, source) in sets.items():
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        if source is not None:
            from internvideo_fast.data.prepare import prepare_dataset

            result = prepare_dataset(dest / source / "list.txt", dest / source, folder, short_side=short_side,
                                     gop=16, codec=codec, out_list=folder / "list.txt")
            if result["bad"]:
                raise KitError(f"ivf-prepare failed on {result['bad']}")
        else:
            extension = "webm" if codec == "vp9" else "mp4"
            lines = []
            for clip in range(clips_per_set):
                path = folder / f"clip{clip}.{extension}"
                # testsrc2 with light temporal noise: moving content at a realistic bitrate; a keyframe every
                # 2 s, as common web videos have
                pattern = f"testsrc2=size={short_side * 16 // 9 // 2 * 2}x{short_side}:rate={fps}"
                _run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", pattern, "-vf",
                      f"hue=h={40 * clip},noise=alls=6:allf=t", "-frames:v", str(frames), *_ENCODERS[codec],
                      "-g", str(2 * fps), "-pix_fmt", "yuv420p", str(path)], f"ffmpeg encoding {path.name}")
                lines.append(f"{path.name} {clip % 2}\n")
            (folder / "list.txt").write_text("".join(lines))
        summary[name] = {"codec": codec, "short_side": short_side, "frames": frames, "fps": fps,
                         "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.suffix != ".txt")}
    return summary


def build_kit(out: Path, part_mib: float = DEFAULT_PART_MIB, python_tag: str = "312", dali: bool = True,
              wheels: bool = True, clips: bool = True, wheel_cache: Path | None = None, clips_per_set: int = 4,
              seconds: float = 4.0, extra_files: dict[str, Path] | None = None, xz_preset: int = 6) -> dict:
    """Builds the kit into ``out/parts`` (see the module docstring); returns the manifest."""
    start = time.monotonic()
    stage = out / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    manifest: dict = {"python": python_tag, "part_mib": part_mib, "contents": {}}
    if dali:
        manifest["contents"]["dali"] = pack_dali(stage / "dali.tar.xz", python_tag, xz_preset)
    if wheels:
        cache = wheel_cache or out / "wheel-cache"
        manifest["contents"]["wheels"] = download_wheels(stage / "wheels", cache, python_tag)
    if clips:
        manifest["contents"]["clips"] = make_clips(stage / "clips", clips_per_set, seconds)
    for name, path in (extra_files or {}).items():
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        manifest["contents"].setdefault("files", []).append(name)
    kit = out / "kit.tar"
    with tarfile.open(kit, "w") as archive:
        for child in sorted(stage.iterdir()):
            archive.add(child, arcname=child.name)
    shutil.rmtree(stage)
    parts_dir = out / "parts"
    parts = split_file(kit, parts_dir, int(part_mib * 2**20))
    manifest.update(sha256=sha256_file(kit), bytes=kit.stat().st_size,
                    parts=[{"name": p.name, "bytes": p.stat().st_size} for p in parts],
                    seconds=round(time.monotonic() - start, 1))
    kit.unlink()
    (parts_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.copy2(Path(__file__), parts_dir / Path(__file__).name)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the kit's parts (here: network, ffmpeg, DALI installed)")
    build.add_argument("--out", type=Path, default=ROOT / "build" / "device-kit")
    build.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB, help="largest part, MiB")
    build.add_argument("--python-tag", default="312", help="the target's CPython version without the dot")
    build.add_argument("--wheel-cache", type=Path, default=None)
    build.add_argument("--clips-per-set", type=int, default=4)
    build.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    build.add_argument("--xz-preset", type=int, default=6, choices=range(10),
                       help="DALI folder's compression (9: about 5%% smaller, several times slower)")
    for component in ("dali", "wheels", "clips"):
        build.add_argument(f"--no-{component}", action="store_true", help=f"leave out the {component}")
    join = commands.add_parser("join", help="verify, join and install the parts (on the target)")
    join.add_argument("--parts", type=Path, required=True, help="the folder holding the parts and SHA256SUMS")
    join.add_argument("--target", type=Path, required=True, help="where to install (site/, clips/, env.sh)")
    join.add_argument("--no-pip", action="store_true", help="unzip the wheels instead of pip install --target")
    verify = commands.add_parser("verify", help="check the parts present against SHA256SUMS")
    verify.add_argument("--parts", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            manifest = build_kit(args.out, args.part_mib, args.python_tag, dali=not args.no_dali,
                                 wheels=not args.no_wheels, clips=not args.no_clips, wheel_cache=args.wheel_cache,
                                 clips_per_set=args.clips_per_set, seconds=args.seconds, xz_preset=args.xz_preset)
            for part in manifest["parts"]:
                print(f"{args.out / 'parts' / part['name']}  {part['bytes'] / 2**20:.1f} MiB")
            print(f"{len(manifest['parts'])} parts, {manifest['bytes'] / 2**20:.1f} MiB in all, "
                  f"{manifest['seconds']} s; on the target: python device_kit.py join --parts DIR --target DIR")
        elif args.command == "verify":
            parts = verify_parts(args.parts)
            print(f"{len(parts)} parts verified")
        else:
            result = install_kit(args.parts, args.target, use_pip=False if args.no_pip else None)
            print(json.dumps(result))
            print(f"PYTHONPATH={result['pythonpath']}")
    except KitError as error:
        print(f"device_kit: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
