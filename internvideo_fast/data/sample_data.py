"""A small synthetic, labelled video dataset: learnable, not trivial, deterministic, a few seconds to make.

Each clip shows a shaded, dark-outlined square (random colours, shading, size, speed and start) moving
in one of ``num_classes`` directions (the class: direction ``2 pi c / num_classes``, jittered by up to
+-10 degrees) over a background that blends two colours along a ramp, with one or two smaller shaded discs
moving in random directions and bouncing off the borders, so a single frame says nothing and the motion of
the right object decides the class. Every region is smooth away from the objects' edges and no region is
flat, so a masked autoencoder can learn to fill in what it does not see (its per-tube normalized targets of
a noise texture, or of a flat region's codec noise, would leave it nothing to learn).

Layout under ``root``::

    videos/train/c{class}_{i:03d}.mp4     H.264 (libx264, yuv420p, GOP 16)
    videos/val/...                        the same for validation
    train.txt, val.txt                    "relative_path label" lines of the first codec
    train_<codec>.txt, val_<codec>.txt    the same for every other codec (vp9 -> .webm, mjpeg -> .avi)
    .complete                             the parameters, written last: a rerun with the same ones is a no-op

Encoding runs ffmpeg in subprocesses (two at a time), with bit-exact flags and one thread, so the files
are a function of the parameters and of the ffmpeg build. Each clip's pixels come from a numpy generator
seeded by ``(seed, split, class, i)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["make_sample_dataset", "SampleDataset", "class_names", "render_clip", "encode_clip", "CODECS"]

# codec -> (file extension, ffmpeg output options)
CODECS = {
    "h264": (".mp4", ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                      "-g", "16", "-threads", "1", "-movflags", "+faststart"]),
    "vp9": (".webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0",
                      "-crf", "32", "-pix_fmt", "yuv420p", "-g", "16", "-threads", "1", "-row-mt", "0"]),
    "mjpeg": (".avi", ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p", "-threads", "1"]),
}
_SPLITS = ("train", "val")


@dataclass
class SampleDataset:
    root: Path
    train_list: Path
    val_list: Path
    num_classes: int
    lists: dict = field(default_factory=dict)  # codec -> (train list, val list)

    @property
    def classes_file(self) -> Path:
        """Class names, one per line in label order (for zero-shot evaluation)."""
        return self.root / "classes.txt"

    def caption_list(self, split: str) -> Path:
        """`path<TAB>caption` list of the first codec's clips (video-text pretraining and retrieval)."""
        return self.root / f"{split}_captions.txt"


_CAPTION_TEMPLATES = ("a square moving {}", "a shaded box slides {}", "an outlined square travels {} across the frame",
                      "something moves {}")


def class_names(num_classes: int) -> list[str]:
    """Each class's motion as words: its direction (class k moves at angle 2*pi*k/num_classes, image axes)."""
    if num_classes == 4:
        return ["to the right", "down", "to the left", "up"]
    if num_classes == 8:
        return ["to the right", "down and to the right", "down", "down and to the left", "to the left",
                "up and to the left", "up", "up and to the right"]
    return [f"at {round(360 * k / num_classes)} degrees" for k in range(num_classes)]


def _ramp_background(rng: np.random.Generator, height: int, width: int, colour: np.ndarray,
                     amplitude: float = 60.0) -> np.ndarray:
    """Two colours blended along a linear ramp in a random direction ([h, w, 3] floats in [0, 255]): the
    colour moves by at most ``amplitude`` levels either way, every channel in the same direction. A patch
    of it normalized by its own mean and std (the MAE target) is the same ramp wherever it lies, so the
    visible patches predict the masked ones."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((yy - height / 2) * np.sin(angle) + (xx - width / 2) * np.cos(angle)) / (0.7 * max(height, width))
    delta = rng.choice([-1, 1]) * rng.uniform(0.75, 1.0, size=3) * amplitude
    return np.clip(colour[None, None] + delta[None, None] * ramp[..., None], 0, 255)


def _shaded_square(rng: np.random.Generator, side: int) -> np.ndarray:
    """A square lit from one side: a linear ramp between two random colours, with a dark outline."""
    light, dark = rng.uniform(120, 240, size=3), rng.uniform(20, 110, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = (np.mgrid[:side, :side] + 0.5) / side - 0.5
    ramp = np.clip(0.5 + yy * np.sin(angle) + xx * np.cos(angle), 0, 1)[..., None]
    square = dark + (light - dark) * ramp
    square[[0, -1]] = 0  # a dark outline: the target is the one outlined square
    square[:, [0, -1]] = 0
    return square


def _shaded_disc(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A disc shaded like a ball (bright centre, darker rim) and its mask."""
    colour = rng.uniform(40, 230, size=3)
    yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
    radius = np.sqrt(yy**2 + xx**2) / (side / 2)
    shade = (1.15 - 0.45 * radius**2)[..., None]
    return np.clip(colour * shade, 0, 255), radius <= 1.0


def _paste(frame: np.ndarray, patch: np.ndarray, top: float, left: float, mask: np.ndarray | None = None) -> None:
    h, w = patch.shape[:2]
    top, left = int(round(top)), int(round(left))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, frame.shape[0]), min(left + w, frame.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    region = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    if mask is None:
        frame[y0:y1, x0:x1] = region
    else:
        m = mask[y0 - top:y1 - top, x0 - left:x1 - left, None]
        frame[y0:y1, x0:x1] = np.where(m, region, frame[y0:y1, x0:x1])


def render_clip(label: int, num_classes: int, num_frames: int, size: tuple[int, int],
                rng: np.random.Generator, speed: tuple[float, float] = (0.8, 1.5),
                target_side: tuple[int, int] = (12, 20), camera_pan: bool = False) -> np.ndarray:
    """uint8 ``[num_frames, H, W, 3]`` RGB frames of one clip of class ``label``; `speed` (pixels per frame)
    and `target_side` (pixels) are ranges at 64 px, scaled with the frame size. With `camera_pan` the
    background scrolls with the target (the whole frame moves in the class's direction: an easier task)."""
    height, width = size
    scale = min(height, width) / 64.0
    pad = int(np.ceil(speed[1] * scale * num_frames)) + 1 if camera_pan else 0
    scenery = _ramp_background(rng, height + 2 * pad, width + 2 * pad, rng.uniform(70, 185, size=3))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)

    side = int(rng.integers(max(6, int(target_side[0] * scale)), max(7, int(target_side[1] * scale)) + 1))
    target = _shaded_square(rng, side).astype(np.uint8)
    angle = 2 * np.pi * label / num_classes + np.deg2rad(rng.uniform(-10, 10))
    pixels_per_frame = rng.uniform(*speed) * scale
    velocity = pixels_per_frame * np.array([np.sin(angle), np.cos(angle)])  # (dy, dx)
    middle = np.array([height, width]) / 2 + rng.uniform(-0.15, 0.15, size=2) * np.array([height, width])
    start = middle - velocity * (num_frames - 1) / 2 - side / 2

    distractors = []
    for _ in range(int(rng.integers(1, 3))):
        d_side = int(rng.integers(max(3, int(6 * scale)), max(4, int(12 * scale)) + 1))
        d_patch, d_mask = _shaded_disc(rng, d_side)
        d_angle = rng.uniform(0, 2 * np.pi)
        d_velocity = rng.uniform(0.5, 1.8) * scale * np.array([np.sin(d_angle), np.cos(d_angle)])
        d_start = rng.uniform(0, 1, size=2) * np.array([height - d_side, width - d_side])
        distractors.append((d_patch.astype(np.uint8), d_mask, d_start, d_velocity))

    for t in range(num_frames):
        # The camera follows the target's velocity backwards, so the scenery moves with the target.
        shift = np.round(velocity * (t - (num_frames - 1) / 2)).astype(int) if camera_pan else np.zeros(2, int)
        top, left = pad - shift[0], pad - shift[1]
        frame = scenery[top:top + height, left:left + width].astype(np.uint8)
        for d_patch, d_mask, d_start, d_velocity in distractors:
            # distractors bounce off the borders (their direction changes; the target's never does)
            limit = np.array([height - d_patch.shape[0], width - d_patch.shape[1]], dtype=np.float64)
            pos = np.abs(np.mod(d_start + d_velocity * t + limit, 2 * limit) - limit)
            _paste(frame, d_patch, pos[0], pos[1], d_mask)
        position = start + velocity * t
        _paste(frame, target, position[0], position[1])
        frames[t] = frame
    return frames


def encode_clip(frames: np.ndarray, path: Path, fps: int, codec: str = "h264") -> subprocess.Popen:
    """Starts ffmpeg encoding ``frames`` (uint8 [T, H, W, 3]) to ``path`` (written to a temporary name, then
    renamed by :func:`_finish`); returns the process."""
    _, options = CODECS[codec]
    t, h, w, _ = frames.shape
    command = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
        "-r", str(fps), "-i", "pipe:0", *options, "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-map_metadata", "-1", str(path) + ".part" + path.suffix,
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(np.ascontiguousarray(frames).tobytes())
    process.stdin.close()
    return process


def _finish(process: subprocess.Popen, path: Path) -> None:
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {stderr.strip()}")
    os.replace(str(path) + ".part" + path.suffix, path)


def make_sample_dataset(root: str | os.PathLike, num_classes: int = 4, clips_per_class: int = 12,
                        val_per_class: int = 4, num_frames: int = 32, size: tuple[int, int] = (64, 64),
                        fps: int = 8, seed: int = 0, codecs: tuple[str, ...] = ("h264",),
                        vp9: bool = False, jobs: int = 2, speed: tuple[float, float] = (0.8, 1.5),
                        target_side: tuple[int, int] = (12, 20), camera_pan: bool = False) -> SampleDataset:
    """Writes the dataset described in the module docstring under ``root`` (skipped when ``root`` already
    holds one made with the same parameters) and returns its paths."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("make_sample_dataset needs the ffmpeg command line tool")
    codecs = tuple(codecs) + (("vp9",) if vp9 and "vp9" not in codecs else ())
    for codec in codecs:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")
    root = Path(root)
    params = {"num_classes": num_classes, "clips_per_class": clips_per_class, "val_per_class": val_per_class,
              "num_frames": num_frames, "size": list(size), "fps": fps, "seed": seed, "codecs": list(codecs),
              "speed": list(speed), "target_side": list(target_side), "camera_pan": camera_pan, "captions": 1,
              "version": 3}
    lists = {codec: tuple(root / (f"{split}.txt" if k == 0 else f"{split}_{codec}.txt") for split in _SPLITS)
             for k, codec in enumerate(codecs)}
    result = SampleDataset(root, lists[codecs[0]][0], lists[codecs[0]][1], num_classes, lists)
    marker = root / ".complete"
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == params and all(p.exists() for pair in lists.values() for p in pair):
                return result
        except (OSError, ValueError):
            pass
        marker.unlink()

    counts = {"train": clips_per_class, "val": val_per_class}
    lines: dict[tuple[str, str], list[str]] = {(codec, split): [] for codec in codecs for split in _SPLITS}
    captions: dict[str, list[str]] = {split: [] for split in _SPLITS}
    names = class_names(num_classes)
    running: list[tuple[subprocess.Popen, Path]] = []
    for split_id, split in enumerate(_SPLITS):
        directory = root / "videos" / split
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            for label in range(num_classes):
                name = f"c{label}_{i:03d}"
                frames = None
                for codec in codecs:
                    path = directory / (name + CODECS[codec][0])
                    lines[(codec, split)].append(f"{path.relative_to(root).as_posix()} {label}\n")
                    if codec == codecs[0]:
                        template = _CAPTION_TEMPLATES[(i + label) % len(_CAPTION_TEMPLATES)]
                        captions[split].append(f"{path.relative_to(root).as_posix()}\t{template.format(names[label])}\n")
                    if frames is None:
                        rng = np.random.default_rng([seed, split_id, label, i])
                        frames = render_clip(label, num_classes, num_frames, size, rng, speed, target_side, camera_pan)
                    running.append((encode_clip(frames, path, fps, codec), path))
                    while len(running) >= max(1, jobs):
                        _finish(*running.pop(0))
    for process, path in running:
        _finish(process, path)
    for (codec, split), split_lines in lines.items():
        target = lists[codec][_SPLITS.index(split)]
        target.write_text("".join(split_lines))
    for split, split_captions in captions.items():
        result.caption_list(split).write_text("".join(split_captions))
    result.classes_file.write_text("".join(f"{name}\n" for name in names))
    marker.write_text(json.dumps(params))
    return result
