"""YAML read with the line of every mapping, so the report can point at the source."""

from __future__ import annotations

from typing import Any

import yaml

LINE = "__line__"


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    data = {
        loader.construct_object(k, deep=True): loader.construct_object(v, deep=True)
        for k, v in node.value
    }
    data[LINE] = node.start_mark.line + 1
    return data


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
# A workflow's `on:` is a key, not YAML 1.1's boolean.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(text: str) -> Any:
    """The document, every mapping with its line under LINE; booleans stay strings."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def line_of(value: Any) -> int | None:
    return value.get(LINE) if isinstance(value, dict) else None


def clean(value: Any) -> Any:
    """The document without the LINE keys (for writing back)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if k != LINE}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if value in ("true", "false"):
        return value == "true"
    return value
