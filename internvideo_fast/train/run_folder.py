"""A training run's folder (``train.output_dir``): what a run may do to it, its checkpoints and its metrics.

Layout::

    config.yaml            the resolved config of the latest run in the folder (also inside every checkpoint)
    checkpoint-<step>.pth  the last ``train.keep_checkpoints`` saves (null: all)
    checkpoint.pth         the latest of them (a hard link, or a copy where links are not supported)
    checkpoint-best.pth    the save with the best validation top-1, when validation runs during training
    metrics.csv, eval.csv  one row per log line / validation, of this run's lineage only
    tensorboard/           the same scalars, when TensorBoard is installed

Rules, checked before anything runs:

- ``train.resume: PATH`` must exist (a checkpoint, or a run folder holding ``checkpoint.pth``);
- a new run (no resume) into a folder that holds a checkpoint refuses, unless ``train.overwrite`` (which
  deletes the old run's checkpoints, metrics and TensorBoard events first); ``resume: auto`` continues the
  run there, or starts one when there is none;
- a resumed run drops the rows of ``metrics.csv`` / ``eval.csv`` past its step (a run that went further
  before it was stopped, or another branch), so the files describe one run; a new run starts them empty.

Every file is written to a temporary name in the folder and renamed: a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from internvideo_fast.errors import ConfigError, UserError

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "checkpoint-best.pth"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
EVAL_NAME = "eval.csv"
_STEP_FILE = re.compile(r"checkpoint-(\d+)\.pth")


def step_checkpoint(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}.pth"


def _step_checkpoints(output_dir: Path) -> dict[int, Path]:
    found = {}
    for path in Path(output_dir).glob("checkpoint-*.pth"):
        match = _STEP_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _checkpoints(output_dir: Path) -> list[Path]:
    output_dir = Path(output_dir)
    named = [output_dir / CHECKPOINT_NAME, output_dir / BEST_NAME]
    return [path for path in named if path.is_file()] + sorted(_step_checkpoints(output_dir).values())


def resolve_resume(train_cfg: dict) -> Path | None:
    """The checkpoint this run continues from, or None for a new run (see the module docstring)."""
    resume, output_dir = train_cfg.get("resume"), Path(train_cfg["output_dir"])
    if train_cfg.get("overwrite"):
        if resume not in (None, "auto"):
            raise ConfigError(f"train.overwrite starts a new run, but train.resume={resume} asks to "
                              "continue one", hint="drop --overwrite or --resume")
        return None
    if not resume:
        return None
    if resume == "auto":  # checkpoint.pth, or the newest step checkpoint if a crash came before its link
        path = output_dir / CHECKPOINT_NAME
        steps = _step_checkpoints(output_dir) if output_dir.is_dir() else {}
        return path if path.is_file() else steps[max(steps)] if steps else None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"train.resume: {path} does not exist",
                          hint=f"--resume auto continues the run in {output_dir} when there is one")
    return path


def check_output_dir(train_cfg: dict, resume_from: Path | None) -> None:
    """A new run refuses a folder that holds another run's checkpoint (unless ``train.overwrite``)."""
    if resume_from is not None or train_cfg.get("overwrite"):
        return
    output_dir = Path(train_cfg["output_dir"])
    existing = _checkpoints(output_dir) if output_dir.is_dir() else []
    if existing:
        raise UserError(f"train.output_dir {output_dir} already holds a run ({existing[0].name}); "
                        "refusing to overwrite it", hint="--resume auto continues it, --overwrite starts afresh")


def prepare_output_dir(config: dict, to_yaml) -> None:
    """Rank 0, before training: clears the folder for ``train.overwrite`` and writes ``config.yaml``."""
    output_dir = Path(config["train"]["output_dir"])
    if config["train"].get("overwrite") and output_dir.is_dir():
        removed = _checkpoints(output_dir)
        for path in removed:
            path.unlink()
        for name in (METRICS_NAME, EVAL_NAME, "config.json"):
            (output_dir / name).unlink(missing_ok=True)
        shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        if removed:
            print(f"overwriting {output_dir}: removed {len(removed)} checkpoint file(s) of the previous run")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(output_dir / CONFIG_NAME, to_yaml(config).encode())


def write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def link_atomically(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` (a hard link; a copy where links fail), atomically."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def keep_as_best(output_dir: Path, step: int) -> None:
    """``checkpoint-best.pth`` becomes the checkpoint saved at ``step``."""
    link_atomically(step_checkpoint(output_dir, step), Path(output_dir) / BEST_NAME)


def retain_checkpoints(output_dir: Path, step: int, keep: int | None) -> None:
    """After a save at ``step``: drop step checkpoints past it (an abandoned branch's) and all but the
    ``keep`` newest up to it."""
    found = _step_checkpoints(output_dir)
    stale = [path for saved, path in found.items() if saved > step]
    lineage = sorted(saved for saved in found if saved <= step)
    if keep is not None:
        stale += [found[saved] for saved in lineage[:-keep]]
    for path in stale:
        path.unlink(missing_ok=True)


def truncate_rows(path: Path, last_step: int) -> None:
    """Keeps the rows of a metrics CSV whose ``step`` is at most ``last_step`` (none: the file goes)."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = [row for row in reader if _int(row.get("step")) is not None and _int(row["step"]) <= last_step]
    if not rows or not fields:
        path.unlink()
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, out.getvalue().encode())


def best_value(path: Path, column: str) -> float | None:
    """The largest ``column`` of a metrics CSV (None when there is no such file or row)."""
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        values = [float(row[column]) for row in csv.DictReader(handle) if row.get(column) not in (None, "")]
    return max(values) if values else None


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


class MetricsLog:
    """A CSV of metrics (appended: a resumed run continues it after :func:`truncate_rows`) and TensorBoard
    scalars when TensorBoard is installed (``purge_step`` hides the events past the resumed step)."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = path
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                self.writer = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
