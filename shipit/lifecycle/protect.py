"""Which tags `shipit prune` never removes, from the spec's tag rules and today's plan. Pure.

Floating tags move from release to release (DESIGN section 3): `latest`, and every `semver`
rule whose pattern names no exact version part (`{{major}}.{{minor}}` makes `1.4`,
`{{major}}` makes `1`). Their shape is found by rendering the rule, with its prefix and
suffix, with stand-ins for the major and minor numbers: `{{major}}.{{minor}}` with the prefix
`v` becomes the pattern `v\\d+\\.\\d+`. A rule too clever for that (arithmetic on the numbers)
protects nothing by shape; keep its tags with a `keep` rule. What the spec would publish for
the current commit (the plan's tags) is protected too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from shipit import templates
from shipit.lifecycle.retention import Protected
from shipit.spec import Image, TagRule
from shipit.tags import sanitize

_EXACT_NAMES: Final = frozenset({"version", "patch", "prerelease", "raw"})
_MAJOR: Final = "shipitmajorx7q"
_MINOR: Final = "shipitminorx7q"


def protected_tags(
    image: Image, values: Mapping[str, Any], planned: Iterable[str] = ()
) -> Protected:
    """The floating tags of `image` (by shape) and the tags planned for the current commit."""
    return Protected(floating=floating_patterns(image, values), planned=frozenset(planned))


def floating_patterns(image: Image, values: Mapping[str, Any]) -> tuple[re.Pattern[str], ...]:
    """A pattern per floating tag shape of `image`'s rules, and one for its `latest`."""
    patterns: dict[str, re.Pattern[str]] = {}
    for rule in image.tags:
        if rule.type != "semver":
            continue
        pattern = rule.pattern or "{{version}}"
        if templates.names(pattern) & _EXACT_NAMES:
            continue
        shape = _shape(image, rule, pattern, values)
        if shape is not None:
            patterns.setdefault(shape, re.compile(shape))
    flavor = image.flavor
    if flavor.latest != "false":
        prefix = _render(flavor.prefix, values) if flavor.prefix_on_latest else ""
        suffix = _render(flavor.suffix, values) if flavor.suffix_on_latest else ""
        if prefix is not None and suffix is not None:
            shape = re.escape(sanitize(f"{prefix}latest{suffix}"))
            patterns.setdefault(shape, re.compile(shape))
    return tuple(patterns.values())


def _shape(image: Image, rule: TagRule, pattern: str, values: Mapping[str, Any]) -> str | None:
    """The regular expression of the tags a floating rule makes, or None if it cannot tell."""
    stand_ins = {**values, "major": _MAJOR, "minor": _MINOR}
    body = _render(pattern, stand_ins)
    prefix = _render(rule.prefix if rule.prefix is not None else image.flavor.prefix, values)
    suffix = _render(rule.suffix if rule.suffix is not None else image.flavor.suffix, values)
    if body is None or prefix is None or suffix is None:
        return None
    text = sanitize(prefix + body + suffix)
    if not text:
        return None
    escaped = re.escape(text)
    return escaped.replace(_MAJOR, r"\d+").replace(_MINOR, r"\d+")


def _render(source: str, values: Mapping[str, Any]) -> str | None:
    try:
        return templates.render(source, values)
    except templates.TemplateError:
        return None
