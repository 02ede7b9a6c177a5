"""The `retention:` section: what `shipit prune` keeps in the registries (DESIGN section 10).

A mergeable section that may stand at the top (for every image) or in an image, and that
`retention: false` turns off; a spec without it prunes nothing. `keep:` is a list of rules,
OR'ed: each picks tags (`tags:` a regular expression searched in the tag as grep does, so
`^pr-` picks `pr-6` and `^main$` only `main`; `semver: true`) and keeps those that pass all
of its limits (`newest: N`, `newest_per_minor: N`, `newest_per_major: N`, `younger_than:
14d`). `untagged:` says what happens to manifests that nothing kept refers to: `delete` (the
default) or `keep`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from yaml.nodes import Node

from shipit.spec.nodes import Reader, scalar_text
from shipit.spec.records import KeepRule, RetentionPolicy
from shipit.spec.sections import Mergeable, Section, merge

_KEYS: Final = ("keep", "untagged")
_RULE_KEYS: Final = (
    "tags", "semver", "newest", "newest_per_minor", "newest_per_major", "younger_than"
)  # fmt: skip
_COUNTS: Final = ("newest", "newest_per_minor", "newest_per_major")
MAX_COUNT: Final = 100_000
_UNITS: Final = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_AGE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def read_retention(
    r: Reader, section: Section, where: Node | None = None
) -> RetentionPolicy | None:
    """The merged `retention:` section; None when the image has none (or it is off)."""
    if not section.on:
        return None
    e = section.entries
    untagged = r.field(
        e, "untagged", lambda n: r.choice(n, "untagged", ("delete", "keep")), "delete"
    )
    keep_node = e.get("keep")
    if keep_node is None:
        anchor = e.get("untagged") or where
        if anchor is not None:
            r.error(
                anchor, "retention needs `keep:` rules (or `retention: false` to prune nothing)"
            )
        return None
    items = r.sequence(keep_node, "keep")
    if items is None:
        return None
    if not items:
        r.error(keep_node, "`keep` is empty: give at least one rule (or `retention: false`)")
        return None
    rules = [_rule(r, item) for item in items]
    if any(rule is None for rule in rules):
        return None
    return RetentionPolicy(
        keep=tuple(rule for rule in rules if rule is not None), untagged=untagged
    )


RETENTION: Final = Mergeable(key="retention", keys=_KEYS, read=read_retention, switchable=True)


def resolve_retention(
    r: Reader, top: Mapping[str, Node], image: Mapping[str, Node]
) -> RetentionPolicy | None:
    """The image's policy: the top-level and image sections merged, errors located at them."""
    where = image.get("retention") or top.get("retention")
    return read_retention(r, merge(r, RETENTION, top, image), where)


def _rule(r: Reader, node: Node) -> KeepRule | None:
    entries = r.mapping(node, "a keep rule", _RULE_KEYS)
    if entries is None:
        return None
    if not entries:
        r.error(node, f"a keep rule needs at least one of {', '.join(_RULE_KEYS)}")
        return None
    problems = len(r.problems)
    tags = r.field(entries, "tags", lambda n: _regex(r, n), None)
    semver = r.field(entries, "semver", lambda n: r.boolean(n, "semver"), None)
    counts = {key: _count(r, entries, key) for key in _COUNTS}
    age = r.field(entries, "younger_than", lambda n: _age(r, n), None)
    per_line = [key for key in ("newest_per_minor", "newest_per_major") if counts[key] is not None]
    if per_line and semver is False:
        r.error(
            entries["semver"], f"{per_line[0]} counts semantic versions: it needs `semver: true`"
        )
    if len(r.problems) > problems:
        return None
    return KeepRule(
        text=_text(entries),
        location=r.loc(node),
        tags=tags,
        semver=bool(semver) or bool(per_line),
        newest=counts["newest"],
        newest_per_minor=counts["newest_per_minor"],
        newest_per_major=counts["newest_per_major"],
        younger_than=age,
    )


def _count(r: Reader, entries: Mapping[str, Node], key: str) -> int | None:
    node = entries.get(key)
    return None if node is None else r.integer(node, key, minimum=1, maximum=MAX_COUNT)


def _regex(r: Reader, node: Node) -> str | None:
    text = r.string(node, "tags")
    if text is None:
        return None
    try:
        re.compile(text)
    except re.error as exc:
        r.error(node, f"tags is not a valid regular expression: {exc}")
        return None
    return text


def _age(r: Reader, node: Node) -> int | None:
    """A duration with units, like 14d, 2w, 36h or 1d12h, as seconds."""
    text = r.string(node, "younger_than")
    if text is None:
        return None
    match = _AGE.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        r.error(node, f"younger_than '{text}' must be a duration with units, like 14d, 2w or 36h")
        return None
    seconds = sum(int(v) * _UNITS[u] for v, u in zip(match.groups(), "wdhms", strict=True) if v)
    if seconds <= 0:
        r.error(node, "younger_than must be longer than nothing")
        return None
    return seconds


def _text(entries: Mapping[str, Node]) -> str:
    """The rule as written, for reports: `{tags: '^pr-', younger_than: 14d}`."""
    parts = []
    for key in _RULE_KEYS:
        if key in entries:
            value = scalar_text(entries[key]) or "?"
            shown = f"'{value}'" if key == "tags" else value
            parts.append(f"{key}: {shown}")
    return "{" + ", ".join(parts) + "}"
