"""The training configs shipped with internvideo-fast, found by name (`ivf-train --config demo_pretrain`).

They live in the repository's top-level `configs/`; an installed wheel holds the same files in
`internvideo_fast/configs/` (setup.py copies them there), and a source or editable checkout reads
`configs/` beside the package.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from internvideo_fast.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"


def shipped_configs_dir() -> Path | None:
    """The folder of the shipped configs: the package's own copy, else a source checkout's configs/."""
    installed = PACKAGE_DIR / "configs"
    if installed.is_dir():
        return installed
    checkout = PACKAGE_DIR.parent
    # pyproject.toml tells the checkout apart from a site-packages that happens to hold a configs/ folder.
    if (checkout / "configs").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "configs"
    return None


def shipped_configs() -> dict[str, Path]:
    """{name: path} of every shipped config, by name (the file name without `.yaml`)."""
    folder = shipped_configs_dir()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob(f"*{SUFFIX}"))}


def find_config(name_or_path: str | Path) -> Path:
    """The config file meant by `name_or_path`: a path that exists wins; else a bare name (no folder part),
    with or without `.yaml`, names a shipped config. Anything else is a ConfigError listing the shipped
    names."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_configs()
    text = str(name_or_path)
    name = text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text
    if len(path.parts) == 1 and name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name if len(path.parts) == 1 else path.stem, shipped, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    names = ", ".join(shipped) or "none found"
    raise ConfigError(f"config file {text} does not exist (no such file, and no shipped config named {text!r})",
                      hint=f"{hint}shipped configs: {names}")
