"""The "How the code is laid out" tree of docs/architecture.md is true: every module it lists exists, and
every module of the package is listed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_modules() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## How the code is laid out", 1)[1]
    tree = section.split("```", 2)[1]
    found: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "/".join([*(s[1].rstrip("/") for s in stack), name.rstrip("/")])
        if name.endswith("/"):
            stack.append((depth, name))
        else:
            found.add(path)
    return found


def test_every_listed_module_exists() -> None:
    listed = listed_modules()
    assert len(listed) > 40
    missing = sorted(m for m in listed if not (ROOT / m).is_file())
    assert missing == []


def test_every_module_of_the_package_is_listed() -> None:
    empty_marker = "shipit/stages/__init__.py"  # an empty file that only makes a package
    actual = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "shipit").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(actual - listed_modules() - {empty_marker}) == []
