"""Which images a Dockerfile builds on: its `FROM` lines and `COPY --from=IMAGE` (pure).

The provenance lists every base image a build resolved; this finds their names, the way the
builder reads them (Dockerfile reference, docs.docker.com/reference/dockerfile): parser
directives (`# escape=`), line continuations, comments, heredoc bodies skipped; `ARG`s
before the first `FROM` (with the build args and BuildKit's platform args winning over their
defaults) expanded in `FROM` as `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}`;
`FROM scratch` and a `FROM` or `--from` naming an earlier stage (or its index) are not images.

Which stages count: under BuildKit only the stages the target needs (its `FROM` and
`--from` chain); the classic builder builds every stage up to the target.

`context_names` finds which top-level entries of the build context its `COPY` and `ADD`
can read, for the SDK engine to send only those (docker_api.BuildRequest.context_names).

`with_bases` writes a Dockerfile whose stages start from other images, for the SDK engine's
platform bases (classic_platforms.py): only those `FROM` lines change. `with_label_step`
writes one with the build's labels as one `LABEL` step at the end of the stage built.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"\$(?:\{{({_NAME})(?::([-+])([^}}]*))?\}}|({_NAME}))")


@dataclass(frozen=True, kw_only=True)
class Stage:
    name: str | None  # `AS name`, lowercased
    base: str  # what FROM names, expanded
    copies_from: tuple[str, ...]  # COPY --from= values, as written
    platform: str | None = None  # FROM's `--platform=` value, as written
    steps: tuple[str, ...] = ()  # the stage's instructions after FROM (ARG, COPY...), in order


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One logical line: its instruction, its arguments, and where it is in the text."""

    word: str  # uppercased: FROM, RUN...
    rest: str  # the arguments, continuations joined
    first: int  # its first physical line (0-based, as `str.splitlines` counts them)
    last: int  # its last physical line


def parse_instructions(text: str) -> list[Instruction]:
    """Every logical line, continuations joined, heredoc bodies and comments skipped."""
    escape = "\\"
    lines = text.splitlines()
    for line in lines:  # parser directives: only at the very top, before any other line
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break
        if match[1].lower() == "escape" and match[2] in ("\\", "`"):
            escape = match[2]
    found: list[Instruction] = []
    current = ""
    start = 0
    heredoc: list[str] = []
    for number, line in enumerate(lines):
        if heredoc:
            if line.strip() == heredoc[0]:
                heredoc.pop(0)
            continue
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not current:
            start = number
        if stripped.endswith(escape):
            current += stripped[: -len(escape)] + " "
            continue
        current += stripped
        found.append(_instruction(current, start, number))
        word = found[-1].word
        heredoc = _HEREDOC.findall(found[-1].rest) if word in ("RUN", "COPY", "ADD") else []
        current = ""
    if current.strip():
        found.append(_instruction(current, start, len(lines) - 1))
    return found


def _instruction(text: str, first: int, last: int) -> Instruction:
    word, _, rest = text.strip().partition(" ")
    return Instruction(word=word.upper(), rest=rest.strip(), first=first, last=last)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each logical line, continuations joined, heredocs skipped."""
    return [(found.word, found.rest) for found in parse_instructions(text)]


def with_bases(text: str, bases: Mapping[int, str]) -> str:
    """`text` with the `FROM` of each stage in `bases` (by index) naming that image instead.

    Its flags and `AS name` stay and every other line is as it was; a `FROM` continued over
    several lines becomes one line and blank ones, so no line number moves."""
    lines = text.splitlines(keepends=True)
    froms = [found for found in parse_instructions(text) if found.word == "FROM"]
    for index, base in bases.items():
        found = froms[index]
        parts = found.rest.split()
        flags = [p for p in parts if p.startswith("--")]
        others = [p for p in parts if not p.startswith("--")]
        lines[found.first] = " ".join(["FROM", *flags, base, *others[1:]]) + _ending(
            lines[found.first]
        )
        for number in range(found.first + 1, found.last + 1):
            lines[number] = _ending(lines[number])
    return "".join(lines)


# what a label may be to stand in a LABEL line as it is, between double quotes: no quote, no
# escape character of either kind, no `$` (LABEL expands variables), no control character
_PLAIN_LABEL = re.compile(r'[^"\\`$\x00-\x1f\x7f]*')


def with_label_step(text: str, labels: Mapping[str, str], target: str | None) -> str | None:
    """`text` with one `LABEL "key"="value" ...` step holding every label at the end of the
    stage the build ends with (`target`, or the last one), where the classic builder puts the
    labels it is given, one step and one intermediate container per label (Docker's
    builder/dockerfile `buildLabelOptions`, appended to the last stage after the target cut).

    None when it cannot be written that way for sure: a label that is not plain (see
    `_PLAIN_LABEL`), a target no stage is named, a last line that continues.
    """
    if not labels or not all(_PLAIN_LABEL.fullmatch(f"{k}{v}") for k, v in labels.items()):
        return None
    froms = [found for found in parse_instructions(text) if found.word == "FROM"]
    words = [[w for w in f.rest.split() if not w.startswith("--")] for f in froms]
    names = [[*w, "", "", ""][1:3] for w in words]  # ["AS", name] after the image
    index = len(froms) - 1
    if target:
        found = [i for i, (word, name) in enumerate(names) if word.lower() == "as"
                 and name.lower() == target.lower()]  # fmt: skip
        if not found:
            return None
        index = found[0]
    if index < 0:
        return None
    step = "LABEL " + " ".join(f'"{k}"="{v}"' for k, v in labels.items()) + "\n"
    lines = text.splitlines(keepends=True)
    if index + 1 < len(froms):
        at = froms[index + 1].first
        return "".join([*lines[:at], step, *lines[at:]])
    tail = text.rstrip()
    if tail.endswith(("\\", "`")):
        return None
    return text + ("" if text.endswith("\n") or not text else "\n") + step


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :]


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
    steps: list[str] = []
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
                result[-1] = _with_steps(result[-1], steps, copies)
            steps, copies = [], []
            words = rest.split()
            parts = [p for p in words if not p.startswith("--")]
            platform = next(
                (p.partition("=")[2] for p in words if p.lower().startswith("--platform=")), None
            )
            base = expand(parts[0], scope) if parts else ""
            alias = parts[2].lower() if len(parts) >= 3 and parts[1].lower() == "as" else None
            result.append(Stage(name=alias, base=base, copies_from=(), platform=platform))
        elif result:
            steps.append(word)
            if word in ("COPY", "ADD"):
                copies += [p.partition("=")[2] for p in rest.split() if p.startswith("--from=")]
    if result:
        result[-1] = _with_steps(result[-1], steps, copies)
    return result


def context_names(text: str) -> frozenset[str] | None:
    """The top-level names in the build context that the classic builder's `COPY` and `ADD`
    can read for this Dockerfile, or None when that cannot be told from its text alone.

    The classic builder reads the context only for the sources of `COPY` and `ADD` without
    `--from` (moby's builder/dockerfile copy.go: a source is a path from the context's root,
    a leading `/` included, followed through links within the context; a folder is copied
    whole; `ADD` of an `http(s)://` or git URL fetches it instead). The names are each
    source's first path element, so a folder named is sent whole. None when a source could
    name anything: `.`, a wildcard in its first element, a variable (`$`, expanded from
    `ENV`/`ARG` by the builder), quotes or an escape character (removed by its word
    processing), a heredoc, or a path out of the context; also when a `RUN --mount` could bind
    the context (buildah and BuildKit have those). `ONBUILD COPY` lines run in a later
    build, not this one; triggers of a base image are not in the text (the SDK engine sends
    the whole context again when the build runs any)."""
    names: set[str] = set()
    for word, rest in instructions(text):
        if word == "RUN" and "--mount" in rest:
            return None  # a bind mount reads the context (buildah's, BuildKit's)
        if word not in ("COPY", "ADD"):
            continue
        sources = _copy_sources(rest)
        if sources is None:
            return None
        for source in sources:
            if word == "ADD" and re.match(r"(https?://|git@|git://)", source):
                continue
            if any(c in source for c in "$\\`\"'") or source.startswith("<<"):
                return None
            path = posixpath.normpath(source.lstrip("/"))
            first = path.split("/")[0]
            if first in ("", ".", "..") or any(c in first for c in "*?["):
                return None
            names.add(first)
    return frozenset(names)


def _copy_sources(rest: str) -> list[str] | None:
    """The sources of one `COPY`/`ADD` (its words but the flags and the destination): [] for
    `--from=`, None when its arguments cannot be read."""
    arguments = rest
    while match := re.match(r"(--\S+)\s*", arguments):
        if match[1].lower().startswith("--from="):
            return []
        arguments = arguments[match.end() :]
    words = arguments.split()
    if arguments.startswith("["):
        try:
            listed = json.loads(arguments)
        except ValueError:
            return None
        if not isinstance(listed, list) or not all(isinstance(w, str) for w in listed):
            return None
        words = listed
    return words[:-1]


def _with_steps(stage: Stage, steps: list[str], copies: list[str]) -> Stage:
    return replace(stage, steps=tuple(steps), copies_from=tuple(copies))


def built_stages(all_stages: list[Stage], target: str | None) -> list[Stage]:
    """The stages the classic builder builds: every one up to the target (or the last)."""
    last = len(all_stages) - 1
    if target:
        last = next((i for i, s in enumerate(all_stages) if s.name == target.lower()), last)
    return all_stages[: last + 1]


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
    last = len(built_stages(all_stages, target)) - 1
    chosen = _needed(all_stages, last) if buildkit else set(range(last + 1))
    images: dict[str, None] = {}
    for index in sorted(chosen):
        stage = all_stages[index]
        for ref in (stage.base, *stage.copies_from):
            if stage_index(all_stages, ref, before=index) is None and is_image(ref):
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
            found = stage_index(all_stages, ref, before=index)
            if found is not None:
                todo.append(found)
    return needed


def stage_index(all_stages: list[Stage], ref: str, *, before: int) -> int | None:
    """The earlier stage `ref` names (by `AS` name or by number), if it names one."""
    if ref.isdigit():
        return int(ref) if int(ref) < before else None
    for index, stage in enumerate(all_stages[:before]):
        if stage.name is not None and stage.name == ref.lower():
            return index
    return None


def is_image(ref: str) -> bool:
    """Whether a stage's base (expanded) names an image: not scratch, nothing left unexpanded."""
    return bool(ref) and ref.lower() != "scratch" and "$" not in ref
