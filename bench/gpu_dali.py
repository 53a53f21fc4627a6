"""The DALI-on-the-GPU run, in one command that ends within 6.5 minutes on a GPU machine.

``python bench/gpu_dali.py [--parts build/device-kit/parts] [--kit-target build/device-kit/installed]
[--budget-s 390] [--dry-run]``

For a machine without DALI, PyAV or network, whose parts of the device kit (``make device-kit``,
``bench/device_kit.py``) have been sent into ``--parts`` one at a time. Stages, each a subprocess with a
timeout taken from what is left of the budget:

1. ``install``: ``device_kit.py join`` verifies the parts (a missing or corrupted one is named), joins and
   installs them into ``--kit-target`` (skipped when a previous call installed the same build there);
   later stages run with its ``site`` folder first on ``PYTHONPATH`` and its clips as ``--clips-dir``;
2. ``tests``: ``pytest -m gpu`` over the DALI loader's and the prefetcher's tests (NVDEC H.264 and HEVC,
   ``fn.readers.video`` frame numbers, the torch loader's samples and pixels, the bad-video corpus);
3. ``loader``: ``bench/loader.py`` on the kit's clips: DALI GPU (both decoders) against the CPU loader over
   0..16 worker processes, with repeated augmentation;
4. ``train``: ``bench/loader_train.py``: the ViT-B pretraining step fed by each loader against synthetic
   device tensors.

Our ``_C`` is not built here: run it after ``make gpu-check`` on the same machine (which builds it in the
source tree) for the training step's CUDA ops; without it those ops run their PyTorch references, the same
for every feed (``machine.ops_extension`` in the JSON says which).

Writes ``gpu-dali.json`` (card, versions, each stage's status, time and output tail, and the two
benchmarks' JSON) into ``$OUT`` (else ``bench/results/``) and prints a summary. ``--dry-run`` proves the
script on CPU: the install stage on whatever ``--parts`` holds (skipped when empty), the tests collected
only, both benchmarks in their ``--dry-run`` modes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
from common import run_stage  # noqa: E402  (bench/ is a folder of scripts, not a package)
GPU_TESTS = ("tests/test_data_dali.py", "tests/test_data_prefetch.py")
# Seconds each stage may take at most, and the time it leaves for the stages after it.
STAGE_BUDGET_S = {"install": 60, "tests": 90, "loader": 130, "train": 110}
RESERVE_S = {"install": 330, "tests": 240, "loader": 110, "train": 0}


class Stages:
    def __init__(self, budget_s: float, env: dict[str, str]):
        self.deadline = time.monotonic() + budget_s
        self.budget_s = budget_s
        self.env = env
        self.results: dict[str, dict] = {}

    def run(self, name: str, command: list[str]) -> dict:
        left = self.deadline - time.monotonic()
        timeout = max(5.0, min(STAGE_BUDGET_S[name], left - min(RESERVE_S[name], 0.45 * self.budget_s)))
        start = time.monotonic()
        print(f"[gpu-dali] {name}: {' '.join(command)} (timeout {timeout:.0f} s)", flush=True)
        status, output = run_stage(command, ROOT, self.env, timeout)
        result = {"status": status, "seconds": round(time.monotonic() - start, 1), "tail": output[-3000:]}
        self.results[name] = result
        print(f"[gpu-dali] {name}: {status} in {result['seconds']} s", flush=True)
        return result

    def skip(self, name: str, why: str) -> None:
        self.results[name] = {"status": f"skipped ({why})", "seconds": 0.0, "tail": ""}
        print(f"[gpu-dali] {name}: skipped ({why})", flush=True)


def _installed_build(target: Path) -> str | None:
    stamp = target / "installed-sha256"
    return stamp.read_text().strip() if stamp.is_file() else None


def _kit_sha(parts: Path) -> str | None:
    manifest = parts / "manifest.json"
    return json.loads(manifest.read_text()).get("sha256") if manifest.is_file() else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _machine(python: str, env: dict[str, str]) -> dict:
    code = ("import json, torch, platform\n"
            "gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
            "try:\n import nvidia.dali as d; dali = d.__version__\nexcept Exception as e: dali = repr(e)[:200]\n"
            "try:\n import av; pyav = av.__version__\nexcept Exception as e: pyav = None\n"
            "try:\n import internvideo_fast._C; ext = True\nexcept Exception: ext = False\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'gpu': gpu,"
            " 'dali': dali, 'pyav': pyav, 'ops_extension': ext, 'cpus': __import__('os').cpu_count()}))\n")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": done.stderr[-500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=Path, default=ROOT / "build" / "device-kit" / "parts")
    parser.add_argument("--kit-target", type=Path, default=ROOT / "build" / "device-kit" / "installed")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("IVF_GPU_DALI_BUDGET_S", 390)))
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu-dali.json (default: $OUT, else "
                                                               "bench/results)")
    parser.add_argument("--dry-run", action="store_true", help="prove the script on CPU")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or (ROOT / "build" / "gpu-dali-dry-run" if args.dry_run
                                                      else BENCH / "results"))
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    site, clips = args.kit_target / "site", args.kit_target / "clips"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    stages = Stages(args.budget_s, env)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    # 1. the kit
    sha = _kit_sha(args.parts)
    if not (args.parts / "SHA256SUMS").is_file():
        stages.skip("install", f"no parts in {args.parts}")
    elif sha is not None and sha == _installed_build(args.kit_target):
        stages.skip("install", f"this build is installed in {args.kit_target}")
    else:
        result = stages.run("install", [python, str(BENCH / "device_kit.py"), "join", "--parts", str(args.parts),
                                        "--target", str(args.kit_target)])
        if result["status"] == "ok" and sha:
            (args.kit_target / "installed-sha256").write_text(sha + "\n")
    clips_args = ["--clips-dir", str(clips)] if clips.is_dir() and not args.dry_run else []
    if clips.is_dir():
        env["IVF_KIT_CLIPS"] = str(clips)  # the GPU tests' clips where the machine has no ffmpeg

    # 2. the GPU tests
    marker = ["-m", "gpu"]
    tests = [python, "-m", "pytest", *GPU_TESTS, *marker, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             "-o", "addopts=-ra", "--junitxml", str(out / "gpu-dali-tests.xml")]
    stages.run("tests", tests + (["--collect-only"] if args.dry_run else []))

    # 3. loader throughput, 4. training fed by the loaders
    loader_json, train_json = out / "loader.json", out / "loader-train.json"
    if args.dry_run:
        loader = ["--dry-run"]
        train = ["--dry-run"]
    else:
        # 320p first (the goal's set), then raw 1080p H.264 and 720p HEVC; rows past the budget are listed
        loader = ["--device", "cuda", "--workers", "0", "4", "16", "--repeated-aug", "1", "2", "--batch-size", "16",
                  "--batches", "40", "--seconds", "2.5", "--budget-s", "115", "--dali-threads", "4"]
        loader += [*clips_args, "--sets", "prepared_320p", "h264_1080p", "hevc_720p"] if clips_args else \
            ["--clips", "32", "--frames", "96", "--size", "568", "320"]  # no kit clips: a 320p sample dataset
        train = ["--device", "cuda", "--seconds", "8", "--budget-s", "95", *clips_args]
        train += ["--sets", "prepared_320p"] if clips_args else []
    stages.run("loader", [python, str(BENCH / "loader.py"), *loader, "--out", str(loader_json)])
    stages.run("train", [python, str(BENCH / "loader_train.py"), *train, "--out", str(train_json)])

    result = {"date": started, "dry_run": args.dry_run, "machine": _machine(python, env),
              "kit": {"parts": str(args.parts), "sha256": sha, "target": str(args.kit_target)},
              "stages": stages.results, "loader": _read_json(loader_json), "train": _read_json(train_json)}
    path = out / "gpu-dali.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"[gpu-dali] written: {path}")
    for name, stage in stages.results.items():
        print(f"  {name:<8} {stage['status']:<28} {stage['seconds']:>6.1f} s")
    for row in (result["train"] or {}).get("rows", []):
        print(f"  train {row['feed']:<12} {str(row.get('set')):<14} {row.get('clips_per_s', row.get('error', '-'))}"
              f" clips/s" + (f" ({row['of_synthetic']:.0%} of synthetic)" if "of_synthetic" in row else ""))
    for name, entry in ((result["loader"] or {}).get("summary") or {}).items():
        print(f"  loader {name:<14} {json.dumps(entry)}")
    failed = [name for name, stage in stages.results.items()
              if not stage["status"].startswith(("ok", "skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
