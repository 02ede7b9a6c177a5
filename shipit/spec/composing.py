"""From spec text to PyYAML's node tree, bounded, and YAML merge keys applied safely.

`compose` parses with PyYAML's safe loader but refuses nesting deeper than `MAX_DEPTH` (its
composer recurses once per level, so a deep document would end in a RecursionError) and
turns every YAML error, including a character YAML does not allow, into a located problem.

`flatten_merges` applies `<<: *defaults` in place. PyYAML's own `flatten_mapping` raises on
a merged scalar, recurses without bound on a mapping that merges itself, and copies every
merged key (duplicates included), so anchors merging anchors grow exponentially; here a
bad merge is a problem reported at its `<<`, and each mapping keeps one entry per key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from shipit.errors import Location, Problem

MAX_DEPTH: Final = 64  # levels of nesting; a spec needs about six
MERGE: Final = "tag:yaml.org,2002:merge"

Report = Callable[[Node, str], None]


class YamlSyntaxError(Exception):
    """The text is not YAML at all; carries the located problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class _Bounded:
    """A composer with a bound on how deep it may recurse (mixed into both loaders)."""

    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[attr-defined]
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[misc, no-any-return]
        finally:
            self.depth -= 1


class _BoundedLoader(_Bounded, yaml.SafeLoader):
    """PyYAML's safe loader, all in Python: its reader checks every character."""


try:  # libyaml's parser under PyYAML's own (bounded) composer: several times faster
    from yaml.cyaml import CParser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - PyYAML's wheels carry libyaml
    _FastLoader: type | None = None
else:

    class _Fast(_Bounded, Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)

    _FastLoader = _Fast


def compose(text: str, file: str) -> Node | None:
    """Parse `text` into a node tree; any error carries FILE:LINE:COL.

    libyaml parses first (the composer, the bound and the tags are PyYAML's own, so the tree
    is the same); when it fails for any reason, the pure-Python loader parses again and says
    what is wrong, as it always has (its messages and positions are the ones shipit reports).
    """
    if _FastLoader is not None:
        fast = None
        try:
            fast = _FastLoader(text)
            return fast.get_single_node()  # type: ignore[no-any-return]
        except Exception:  # noqa: S110 - the Python loader reports it, below
            pass
        finally:
            if fast is not None:
                fast.dispose()
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader checks every character here
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError(_problem(file, line, column, what)) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at `position`
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        what = f"the character U+{char:04X} is not allowed in YAML (write it as an escape)"
        raise YamlSyntaxError(_problem(file, line, column, what)) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(_problem(file, 1, 1, str(exc))) from None
    except RecursionError:  # MAX_DEPTH should prevent it; never let it escape as a crash
        raise YamlSyntaxError(_problem(file, 1, 1, "the spec is nested too deeply")) from None
    finally:
        if loader is not None:
            loader.dispose()


def _problem(file: str, line: int, column: int, message: str) -> Problem:
    return Problem(location=Location(file=file, line=line, column=column), message=message)


def flatten_merges(node: MappingNode, report: Report) -> None:
    """Apply the merge keys of `node` (and of what it merges) in place.

    Keys written in the mapping win over merged ones; of several merged mappings, the
    earlier wins, as YAML's merge key type says (yaml.org/type/merge.html).
    """
    _flatten(node, report, active=set(), depth=0)


def _flatten(node: MappingNode, report: Report, *, active: set[int], depth: int) -> None:
    if not any(key.tag == MERGE for key, _ in node.value):
        return
    active.add(id(node))
    sources: list[MappingNode] = []
    own: list[tuple[Node, Node]] = []
    for key, value in node.value:
        if key.tag != MERGE:
            own.append((key, value))
            continue
        for source in _merge_sources(key, value, report):
            if id(source) in active or depth >= MAX_DEPTH:
                report(key, "`<<` merges a mapping into itself, or nests merges too deeply")
                continue
            _flatten(source, report, active=active, depth=depth + 1)
            sources.append(source)
    active.discard(id(node))
    seen = {_identity(key) for key, _ in own}
    merged: list[tuple[Node, Node]] = []
    for source in sources:
        for key, value in source.value:
            if _identity(key) not in seen:
                seen.add(_identity(key))
                merged.append((key, value))
    node.value = merged + own


def _merge_sources(key: Node, value: Node, report: Report) -> list[MappingNode]:
    """The mappings a `<<` names: one mapping, or a list of them."""
    if isinstance(value, MappingNode):
        return [value]
    if isinstance(value, SequenceNode) and all(isinstance(i, MappingNode) for i in value.value):
        return list(value.value)
    report(
        key,
        "`<<` merges a mapping or a list of mappings (like `<<: *defaults`), not "
        + ("a list with other things in it" if isinstance(value, SequenceNode) else "a value"),
    )
    return []


def _identity(key: Node) -> object:
    """What makes two keys the same key: a scalar's tag and text; anything else is unique."""
    return (key.tag, key.value) if isinstance(key, ScalarNode) else id(key)
