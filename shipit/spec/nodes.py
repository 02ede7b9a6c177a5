"""Reading YAML as located nodes, and collecting every problem found in them.

The spec's section readers walk PyYAML's node tree (not the constructed Python objects) so
every value keeps the line and column it came from; problems are collected, not raised one
at a time, so `shipit validate` can list them all. The `Reader` is the one tool they share:
it turns a node into a plain value (string, number, choice, list, map, a path relative to
the spec's folder) or records a located problem and answers None. Every path goes through
`paths` (checked before any system call, every stat guarded), merge keys through
`composing`; a number of more than 30 digits, a lone surrogate and an explicit tag PyYAML
cannot read (`!!int x`) are problems like any other wrong value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shipit.errors import Location, Problem
from shipit.spec import paths
from shipit.spec.composing import MERGE, flatten_merges

T = TypeVar("T")

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[^}:]*)(?::-(?P<default>[^}]*))?\})")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,9})s)?")
_SECONDS = re.compile(r"()()([0-9]{1,9})")  # plain seconds, as the same three groups
MAX_DURATION = 7 * 24 * 3600  # seconds: a week (a scan or a signature takes minutes)
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DIGITS = 30  # a longer number is a mistake, and Python limits int <-> str at 4300 digits
_WHOLE = re.compile(rf"-?[0-9]{{1,{_MAX_DIGITS}}}")

# Only its scalar constructors are used, never its reader.
_CONSTRUCTOR = yaml.SafeLoader("")


def kind(node: Node) -> str:
    """How a node is named in messages: mapping, list, string, number, boolean, null."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return {
        _STR: "a string",
        _BOOL: "a boolean",
        _INT: "a number",
        "tag:yaml.org,2002:float": "a number",
        _NULL: "null",
    }.get(node.tag, "a value")


class Reader:
    """Turns nodes into plain values, recording a located problem for each thing wrong.

    Each method returns None when the node is unusable; the caller carries on so that
    later problems are found too. `file` is the spec as shown in messages; relative paths
    in it start at `root`, the spec's folder.
    """

    def __init__(self, file: str, env: Mapping[str, str], root: Path) -> None:
        self.file = file
        self.env = env
        self.root = root
        self.problems: list[Problem] = []

    def loc(self, node: Node) -> Location:
        mark = node.start_mark
        return Location(file=self.file, line=mark.line + 1, column=mark.column + 1)

    def error(self, node: Node, message: str) -> None:
        problem = Problem(location=self.loc(node), message=message)
        if problem not in self.problems:
            self.problems.append(problem)

    # -- structure ---------------------------------------------------------------

    def mapping(
        self, node: Node, what: str, allowed: Iterable[str] | None = None
    ) -> dict[str, Node] | None:
        """A mapping's keys and value nodes; unknown keys are problems with a hint."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping, not {kind(node)}")
            return None
        explicit = {id(k) for k, _ in node.value if k.tag != MERGE}
        flatten_merges(node, self.error)
        allowed_keys = list(allowed) if allowed is not None else None
        result: dict[str, Node] = {}
        key_nodes: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                self.error(key_node, f"keys of {what} must be strings")
                continue
            key = key_node.value
            if key in result and id(key_node) in explicit and id(key_nodes[key]) in explicit:
                self.error(key_node, f"duplicate key '{key}' in {what}")
                continue
            key_nodes[key] = key_node  # a key written here overrides one merged in by `<<:`
            if allowed_keys is not None and key not in allowed_keys:
                self.error(key_node, unknown_key_message(key, what, allowed_keys))
                continue
            result[key] = value_node
        return result

    def sequence(self, node: Node, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list, not {kind(node)}")
            return None
        return list(node.value)

    # -- scalars -----------------------------------------------------------------

    def string(self, node: Node, what: str, *, allow_empty: bool = False) -> str | None:
        """A string value, with ${VAR} and ${VAR:-default} expanded from the environment.

        Numbers are accepted as strings (a platform of `1` is odd but a tag of `1` is not).
        """
        if not isinstance(node, ScalarNode) or node.tag not in (_STR, _INT):
            self.error(node, f"{what} must be a string, not {kind(node)}")
            return None
        expanded = self.expand(node)
        if expanded is None:
            return None
        if not allow_empty and expanded == "":
            self.error(node, f"{what} must not be empty")
            return None
        return expanded

    def expand(self, node: ScalarNode) -> str | None:
        """Expand ${VAR} / ${VAR:-default}; `$$` is a literal `$`."""
        ok = True

        def substitute(match: re.Match[str]) -> str:
            nonlocal ok
            if match.group(0) == "$$":
                return "$"
            name = match.group("name")
            default = match.group("default")
            if not _VAR_NAME.fullmatch(name):
                self.error(node, f"'${{{name}}}' is not a valid variable reference")
                ok = False
                return ""
            value = self.env.get(name)
            if value:
                return value
            if default is not None:
                return default
            if value is not None:  # set but empty, and no default: empty is what was asked
                return value
            self.error(
                node,
                f"environment variable {name} is not set"
                f" (write ${{{name}:-default}} to give a default)",
            )
            ok = False
            return ""

        text = _VAR.sub(substitute, str(node.value))
        bad = _SURROGATE.search(text)
        if ok and bad:  # a lone "\ud800" escape: no file, terminal or API can take it
            self.error(node, f"U+{ord(bad.group()):04X} is not a character (it has no UTF-8)")
            ok = False
        return text if ok else None

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL and _yaml_bool(node) is not None:
            return _yaml_bool(node)
        if isinstance(node, ScalarNode) and node.tag == _STR:
            text = self.expand(node)
            if text is not None and text.lower() in ("true", "false"):
                return text.lower() == "true"
        self.error(node, f"{what} must be true or false, not {_shown(node)}")
        return None

    def integer(
        self, node: Node, what: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value: int | None = None
        if isinstance(node, ScalarNode) and node.tag == _INT:
            if len(str(node.value)) > _MAX_DIGITS:
                self.error(node, f"{what} must be a whole number of at most {_MAX_DIGITS} digits")
                return None
            value = _yaml_int(node)
        elif isinstance(node, ScalarNode) and node.tag == _STR:
            text = self.expand(node)
            if text is not None and _WHOLE.fullmatch(text.strip()):
                value = int(text)
        if value is None:
            self.error(node, f"{what} must be a whole number, not {_shown(node)}")
            return None
        if minimum is not None and value < minimum:
            self.error(node, f"{what} must be at least {minimum}, not {value}")
            return None
        if maximum is not None and value > maximum:
            self.error(node, f"{what} must be at most {maximum}, not {value}")
            return None
        return value

    def choice(self, node: Node, what: str, choices: Iterable[str]) -> str | None:
        """One of `choices`, case-insensitively; YAML booleans read as 'true'/'false'."""
        options = list(choices)
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            flag = _yaml_bool(node)
            text: str | None = str(node.value) if flag is None else str(flag).lower()
        elif isinstance(node, ScalarNode) and node.tag in (_STR, _INT):
            text = self.expand(node)
        else:
            self.error(node, f"{what} must be one of {', '.join(options)}, not {kind(node)}")
            return None
        if text is None:
            return None
        folded = {o.lower(): o for o in options}
        if text.lower() in folded:
            return folded[text.lower()]
        hint = did_you_mean(text, options)
        self.error(node, f"{what} must be one of {', '.join(options)}, not '{text}'{hint}")
        return None

    def string_list(self, node: Node, what: str) -> tuple[str, ...] | None:
        """A list of strings; a single string is taken as a list of one."""
        if isinstance(node, ScalarNode) and node.tag == _STR:
            one = self.string(node, what)
            return None if one is None else (one,)
        items = self.sequence(node, what)
        if items is None:
            return None
        values = [self.string(item, f"each item of {what}") for item in items]
        if any(v is None for v in values):
            return None
        return tuple(v for v in values if v is not None)

    def string_map(self, node: Node, what: str) -> dict[str, str] | None:
        """A mapping of names to strings (build args, labels); numbers and booleans as text."""
        entries = self.mapping(node, what)
        if entries is None:
            return None
        result: dict[str, str] = {}
        for key, value_node in entries.items():
            if isinstance(value_node, ScalarNode) and value_node.tag == _BOOL:
                result[key] = str(value_node.value).lower()
                continue
            value = self.string(value_node, f"{what} '{key}'", allow_empty=True)
            if value is not None:
                result[key] = value
        return result

    def duration(self, node: Node, what: str, *, minimum: int = 0) -> int | None:
        """Seconds, or a duration like 10m or 1h30m, as seconds (at least `minimum`, at
        most a week)."""
        text = self.string(node, what)
        if text is None:
            return None
        match = _SECONDS.fullmatch(text) or _DURATION.fullmatch(text)
        if not match or not any(match.groups()):
            self.error(
                node, f"{what} {paths.shown(text)} must be seconds or a duration like 10m or 1h30m"
            )
            return None
        hours, minutes, secs = (int(g or 0) for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
        if seconds < minimum:
            self.error(node, f"{what} must be at least {minimum}s, not {paths.shown(text)}")
            return None
        if seconds > MAX_DURATION:
            self.error(node, f"{what} {paths.shown(text)} is longer than {MAX_DURATION // 3600}h")
            return None
        return seconds

    # -- paths -------------------------------------------------------------------

    def path(self, node: Node, what: str) -> Path | None:
        """A path relative to the spec's folder, made absolute; it need not exist yet."""
        text = self.string(node, what)
        return None if text is None else self.resolve(node, what, text)

    def resolve(self, node: Node, what: str, text: str, *, base: Path | None = None) -> Path | None:
        """`text` as a path (see `paths`): a located problem when no system call may take it."""
        try:
            return paths.resolve(self.root if base is None else base, text)
        except paths.PathProblem as exc:
            self.error(node, f"{what} {paths.shown(text)} {exc}")
            return None

    def existing_file(self, node: Node, what: str) -> Path | None:
        """Like `path`, and the file must be there."""
        text = self.string(node, what)
        path = None if text is None else self.resolve(node, what, text)
        if text is None or path is None or not self.is_there(node, what, text, path, "file"):
            return None
        return path

    def is_there(self, node: Node, what: str, text: str, path: Path, want: paths.Kind) -> bool:
        """Whether `path` is a `want` (file or folder); a located problem when it is not."""
        try:
            found = paths.kind(path)
        except paths.PathProblem as exc:
            self.error(node, f"{what} {paths.shown(text)} {exc}")
            return False
        if found == want:
            return True
        if found == "missing":
            self.error(node, f"{what} {paths.shown(text)} does not exist")
        else:
            self.error(node, f"{what} {paths.shown(text)} is not a {want}")
        return False

    # -- optional keys -----------------------------------------------------------

    def field(
        self,
        entries: Mapping[str, Node],
        key: str,
        read: Callable[[Node], T | None],
        default: T,
    ) -> T:
        """`read(entries[key])` when present and valid, else `default`."""
        node = entries.get(key)
        if node is None:
            return default
        value = read(node)
        return default if value is None else value


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def is_bool(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _BOOL


def scalar_text(node: Node) -> str | None:
    return str(node.value) if isinstance(node, ScalarNode) else None


def key_node(mapping: Node, key: str) -> Node | None:
    """The node of `key` itself in a mapping (to point a message at the key, not its value)."""
    if isinstance(mapping, MappingNode):
        for node, _ in mapping.value:
            if getattr(node, "value", None) == key:
                return node  # type: ignore[no-any-return]
    return None


def unknown_key_message(key: str, what: str, allowed: Iterable[str]) -> str:
    options = sorted(allowed)
    return f"unknown key '{key}' in {what}{did_you_mean(key, options)}"


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_bool(node: ScalarNode) -> bool | None:
    """A YAML boolean's value; None for an explicit `!!bool` PyYAML cannot read (`!!bool x`)."""
    try:
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))
    except (KeyError, IndexError, ValueError):
        return None


def _yaml_int(node: ScalarNode) -> int | None:
    """A YAML integer's value; None for an explicit `!!int` PyYAML cannot read (`!!int x`)."""
    try:
        return int(_CONSTRUCTOR.construct_yaml_int(node))
    except (KeyError, IndexError, ValueError):  # `!!int ""` indexes an empty string
        return None


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode) and node.tag != _NULL:
        return paths.shown(str(node.value))
    return kind(node)
