"""Which images a Dockerfile builds on: its `FROM` lines and `COPY --from=IMAGE` (pure).

The provenance lists every base image a build resolved; this finds their names, the way the
builder reads them (Dockerfile reference, docs.docker.com/reference/dockerfile): parser
directives (`# escape=`), line continuations, comments, heredoc bodies skipped; `ARG`s
before the first `FROM` (with the build args and BuildKit's platform args winning over their
defaults) expanded in `FROM` as `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}`;
`FROM scratch` and a `FROM` or `--from` naming an earlier stage (or its index) are not images.

Which stages count: under BuildKit only the stages the target needs (its `FROM` and
`--from` chain); the classic builder builds every stage up to the target.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"\$(?:\{{({_NAME})(?::([-+])([^}}]*))?\}}|({_NAME}))")


@dataclass(frozen=True, kw_only=True)
class Stage:
    name: str | None  # `AS name`, lowercased
    base: str  # what FROM names, expanded
    copies_from: tuple[str, ...]  # COPY --from= values, as written


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each logical line, continuations joined, heredocs skipped."""
    escape = "\\"
    lines = text.splitlines()
    for line in lines:  # parser directives: only at the very top, before any other line
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break
        if match[1].lower() == "escape" and match[2] in ("\\", "`"):
            escape = match[2]
    found: list[tuple[str, str]] = []
    current = ""
    heredoc: list[str] = []
    for line in lines:
        if heredoc:
            if line.strip() == heredoc[0]:
                heredoc.pop(0)
            continue
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith(escape):
            current += stripped[: -len(escape)] + " "
            continue
        current += stripped
        word, _, rest = current.strip().partition(" ")
        found.append((word.upper(), rest.strip()))
        heredoc = _HEREDOC.findall(rest) if word.upper() in ("RUN", "COPY", "ADD") else []
        current = ""
    if current.strip():
        word, _, rest = current.strip().partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def expand(text: str, values: Mapping[str, str]) -> str:
    """`$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}` with `values` (unknown: empty)."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[4]
        value = values.get(name, "")
        if match[2] == "-":
            return value or match[3]
        if match[2] == "+":
            return match[3] if value else ""
        return value

    return _VARIABLE.sub(one, text)


def stages(
    text: str, args: Mapping[str, str], automatic: Mapping[str, str] | None = None
) -> list[Stage]:
    """Every stage of the Dockerfile, in order. `args` are the build args given (they count
    only where an `ARG` declares them); `automatic` the platform args FROM may use undeclared."""
    scope: dict[str, str] = dict(automatic or {})
    result: list[Stage] = []
    copies: list[str] = []
    for word, rest in instructions(text):
        if word == "ARG" and not result:
            for declaration in rest.split():
                name, has_default, default = declaration.partition("=")
                if name in args:
                    scope[name] = args[name]
                elif has_default:
                    scope[name] = expand(default.strip("\"'"), scope)
        elif word == "FROM":
            if result:
                result[-1] = _with_copies(result[-1], copies)
            copies = []
            parts = [p for p in rest.split() if not p.startswith("--")]
            base = expand(parts[0], scope) if parts else ""
            alias = parts[2].lower() if len(parts) >= 3 and parts[1].lower() == "as" else None
            result.append(Stage(name=alias, base=base, copies_from=()))
        elif word in ("COPY", "ADD") and result:
            copies += [p.partition("=")[2] for p in rest.split() if p.startswith("--from=")]
    if result:
        result[-1] = _with_copies(result[-1], copies)
    return result


def _with_copies(stage: Stage, copies: list[str]) -> Stage:
    return Stage(name=stage.name, base=stage.base, copies_from=tuple(copies))


def base_images(
    text: str,
    args: Mapping[str, str],
    *,
    automatic: Mapping[str, str] | None = None,
    target: str | None,
    buildkit: bool,
) -> tuple[str, ...]:
    """The images (not stages, not scratch) the build of `target` (or the last stage) uses,
    each once, in the order they first appear."""
    all_stages = stages(text, args, automatic)
    if not all_stages:
        return ()
    last = len(all_stages) - 1
    if target:
        last = next((i for i, s in enumerate(all_stages) if s.name == target.lower()), last)
    chosen = _needed(all_stages, last) if buildkit else set(range(last + 1))
    images: dict[str, None] = {}
    for index in sorted(chosen):
        stage = all_stages[index]
        for ref in (stage.base, *stage.copies_from):
            if _stage_index(all_stages, ref, before=index) is None and _is_image(ref):
                images[ref] = None
    return tuple(images)


def _needed(all_stages: list[Stage], last: int) -> set[int]:
    """The stage `last` and every stage it builds on (FROM or --from), transitively."""
    needed: set[int] = set()
    todo = [last]
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        stage = all_stages[index]
        for ref in (stage.base, *stage.copies_from):
            found = _stage_index(all_stages, ref, before=index)
            if found is not None:
                todo.append(found)
    return needed


def _stage_index(all_stages: list[Stage], ref: str, *, before: int) -> int | None:
    """The earlier stage `ref` names (by `AS` name or by number), if it names one."""
    if ref.isdigit():
        return int(ref) if int(ref) < before else None
    for index, stage in enumerate(all_stages[:before]):
        if stage.name is not None and stage.name == ref.lower():
            return index
    return None


def _is_image(ref: str) -> bool:
    return bool(ref) and ref.lower() != "scratch" and "$" not in ref
