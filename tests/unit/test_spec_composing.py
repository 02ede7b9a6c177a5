"""The two YAML loaders: libyaml's parser (the fast path) gives the tree PyYAML's own gives,
and a text that fails is reported by PyYAML's loader, as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from yaml.nodes import MappingNode, Node, SequenceNode

from shipit.spec import composing

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted(p for p in (REPO / "examples").rglob("*.yml") if p.name == "shipit.yml") + sorted(
    (REPO / "tests" / "data").rglob("shipit*.yml")
)


def shape(node: Node | None) -> Any:
    """A node tree as plain data: tags, values and where each node starts."""
    if node is None:
        return None
    where = (node.start_mark.line, node.start_mark.column)
    if isinstance(node, MappingNode):
        return (node.tag, where, [(shape(k), shape(v)) for k, v in node.value])
    if isinstance(node, SequenceNode):
        return (node.tag, where, [shape(item) for item in node.value])
    return (node.tag, where, node.value)


def python_tree(text: str) -> Node | None:
    loader = composing._BoundedLoader(text)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


TEXTS = [
    "a: 1\nb: [x, 'y', \"z\"]\nc: {d: null, e: true, f: 1.5, g: 0x10}\n",
    "defaults: &d {x: 1}\nimage: {<<: *d, name: app}\n",
    "s: |\n  two\n  lines\nt: >-\n  folded\n  text\n",
    "k: !!str 12\nwhen: 2026-12-02\nempty:\n",
    "# only a comment\n",
    "",
]


@pytest.mark.parametrize("text", TEXTS + [p.read_text(encoding="utf-8") for p in SPECS])
def test_the_fast_path_gives_the_same_tree(text: str) -> None:
    assert composing._FastLoader is not None  # PyYAML's wheel carries libyaml
    fast = composing._FastLoader(text)
    try:
        direct = fast.get_single_node()  # libyaml itself, not a fallback
    finally:
        fast.dispose()
    assert shape(direct) == shape(python_tree(text))
    assert shape(composing.compose(text, "f.yml")) == shape(direct)


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("a: [1, 2\n", "f.yml:2:1", "expected ',' or ']'"),
        ("a: *missing\n", "f.yml:1:4", "undefined alias"),
        ("a: b\x07\n", "f.yml:1:5", "U+0007 is not allowed"),
        ("[" * 100 + "]" * 100, "f.yml:1:65", "nested deeper than 64 levels"),
    ],
)
def test_a_failure_is_reported_as_the_python_loader_reports_it(
    text: str, where: str, words: str
) -> None:
    with pytest.raises(composing.YamlSyntaxError) as caught:
        composing.compose(text, "f.yml")
    assert str(caught.value).startswith(where)
    assert words in str(caught.value)
