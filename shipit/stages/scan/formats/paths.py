"""Where report files go: several images of one spec tell their reports apart by a tag."""

from __future__ import annotations

import re
from pathlib import Path


def with_suffix_tag(path: Path, tag: str | None) -> Path:
    """`trivy.json` + `backend` -> `trivy.backend.json` (several images in one spec)."""
    if not tag:
        return path
    if path.suffix:
        return path.with_name(f"{path.stem}.{safe_tag(tag)}{path.suffix}")
    return path.with_name(f"{path.name}.{safe_tag(tag)}")


def place(path: Path, suffix: str | None) -> Path:
    """`path` tagged with `suffix`, its folder created."""
    target = with_suffix_tag(path, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def safe_tag(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-.") or "image"
