"""Doublestar paths and package URLs, matched the way Trivy matches an ignore entry's
`paths` and `purls`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote


def glob_match(pattern: str, path: str) -> bool:
    """doublestar matching: `**` spans folders, `*` and `?` stay inside one, `{a,b}`, `[a-z]`."""
    return re.fullmatch(_glob_regex(pattern), path, flags=re.DOTALL) is not None


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        piece, i = _glob_piece(pattern, i)
        out.append(piece)
    return "".join(out)


def _glob_piece(pattern: str, i: int) -> tuple[str, int]:
    c = pattern[i]
    if c == "\\" and i + 1 < len(pattern):
        return re.escape(pattern[i + 1]), i + 2
    if pattern.startswith("**/", i):
        return "(?:.*/)?", i + 3
    if pattern.startswith("**", i):
        return ".*", i + 2
    if c == "*":
        return "[^/]*", i + 1
    if c == "?":
        return "[^/]", i + 1
    end = pattern.find("]" if c == "[" else "}", i + 1)
    if c == "[" and end > i + 1:
        body = pattern[i + 1 : end]
        negate = body[:1] in ("!", "^")
        body = re.sub(r"([\\\]\[^])", r"\\\1", body[1:] if negate else body)
        return f"[{'^/' if negate else ''}{body}]", end + 1
    if c == "{" and end > i:
        options = pattern[i + 1 : end].split(",")
        return "(?:" + "|".join(_glob_regex(o) for o in options) + ")", end + 1
    return re.escape(c), i + 1


def glob_escape(path: str) -> str:
    """`path` as a doublestar pattern that matches only itself."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


@dataclass(frozen=True)
class Purl:
    type: str
    namespace: str
    name: str
    version: str
    qualifiers: frozenset[tuple[str, str]]
    subpath: str


def parse_purl(text: str) -> Purl | None:
    """`pkg:type/namespace/name@version?qualifiers#subpath`, or None when it is not one."""
    if not text.startswith("pkg:"):
        return None
    rest, _, subpath = text[4:].lstrip("/").partition("#")
    rest, _, query = rest.partition("?")
    path, at, version = rest.rpartition("@")
    if not at:
        path, version = rest, ""
    parts = [unquote(p) for p in path.split("/") if p]
    if len(parts) < 2:
        return None
    qualifiers = frozenset(
        (key.lower(), unquote(value))
        for key, _, value in (q.partition("=") for q in query.split("&") if q)
    )
    return Purl(
        type=parts[0].lower(),
        namespace="/".join(parts[1:-1]),
        name=parts[-1],
        version=unquote(version),
        qualifiers=qualifiers,
        subpath=subpath.strip("/"),
    )


def purl_match(constraint: str, target: str) -> bool:
    """Trivy's rule: type, namespace and name equal; version and subpath when the constraint
    has them; the constraint's qualifiers all present in the target."""
    want, have = parse_purl(constraint), parse_purl(target)
    if want is None or have is None:
        return False
    if (want.type, want.namespace, want.name) != (have.type, have.namespace, have.name):
        return False
    if want.version and want.version != have.version:
        return False
    if want.subpath and want.subpath != have.subpath:
        return False
    return want.qualifiers <= have.qualifiers
