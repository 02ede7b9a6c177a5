"""The `tags:` rules and the `flavor:` section, and the check every template goes through.

`tags:` is a list of rules (DESIGN section 3), each with a `type` deciding which keys it
takes; a spec without one gets `default_rules`. `flavor:` (latest, prefix, suffix, floating)
is a mergeable section. Templates (tag values, prefixes, build args, labels, annotations)
are checked here for syntax and for names no template can read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from yaml.nodes import Node

from shipit import templates
from shipit.errors import Location
from shipit.spec.nodes import Reader, did_you_mean, key_node, scalar_text, unknown_key_message
from shipit.spec.paths import shown
from shipit.spec.records import (
    DEFAULT_PRIORITY,
    REF_EVENTS,
    SEMVER_NAMES,
    TAG_TYPES,
    TEMPLATE_NAMES,
    Flavor,
    TagRule,
)
from shipit.spec.sections import Mergeable, Section

_GROUP_NUMBER = re.compile(r"[0-9]{1,3}")  # more groups than that is not a tag pattern
_COMMON_RULE_KEYS = ("type", "enable", "priority", "prefix", "suffix", "latest")
_RULE_KEYS: Final = {
    "semver": ("pattern", "value"),
    "pep440": ("pattern", "value"),
    "ref": ("event",),
    "sha": ("format", "length"),
    "schedule": ("pattern",),
    "edge": ("branch",),
    "match": ("pattern", "group", "value"),
    "raw": ("value",),
}


# -- tags ----------------------------------------------------------------------------


def read_tag_rules(r: Reader, node: Node) -> tuple[TagRule, ...] | None:
    """The rules of a `tags:` list; None when any of them is wrong."""
    items = r.sequence(node, "tags")
    if items is None:
        return None
    rules = [_tag_rule(r, item) for item in items]
    if any(rule is None for rule in rules):
        return None
    return tuple(rule for rule in rules if rule is not None)


def default_rules(location: Location) -> tuple[TagRule, ...]:
    """The rules used when a spec has no `tags:` (DESIGN section 3)."""
    semver = DEFAULT_PRIORITY["semver"]
    ref = DEFAULT_PRIORITY["ref"]
    return (
        TagRule(type="semver", location=location, priority=semver, pattern="{{version}}"),
        TagRule(type="semver", location=location, priority=semver, pattern="{{major}}.{{minor}}"),
        TagRule(type="semver", location=location, priority=semver, pattern="{{major}}"),
        TagRule(type="ref", location=location, priority=ref, event="branch"),
        TagRule(type="ref", location=location, priority=ref, event="tag"),
        TagRule(type="ref", location=location, priority=ref, event="pr", prefix="pr-"),
        TagRule(type="sha", location=location, priority=DEFAULT_PRIORITY["sha"], prefix="sha-"),
    )


def _tag_rule(r: Reader, node: Node) -> TagRule | None:
    entries = r.mapping(node, "a tag rule")
    if entries is None:
        return None
    if "type" not in entries:
        r.error(node, f"a tag rule needs a `type` ({', '.join(TAG_TYPES)})")
        return None
    rule_type = r.choice(entries["type"], "tag rule type", TAG_TYPES)
    if rule_type is None:
        return None
    allowed = _COMMON_RULE_KEYS + _RULE_KEYS[rule_type]
    ok = True
    for key in entries:
        if key not in allowed:
            r.error(
                key_node(node, key) or node,
                unknown_key_message(key, f"a '{rule_type}' tag rule", allowed),
            )
            ok = False
    rule = _rule_fields(r, node, entries, rule_type)
    return _check_rule(r, node, rule) if ok else None


def _rule_fields(r: Reader, node: Node, entries: Mapping[str, Node], rule_type: str) -> TagRule:
    names = SEMVER_NAMES if rule_type in ("semver", "pep440") else TEMPLATE_NAMES

    def text(key: str, *, allow_empty: bool = False, template: bool = True) -> str | None:
        value_node = entries.get(key)
        if value_node is None:
            return None
        value = r.string(value_node, key, allow_empty=allow_empty)
        problem = template_problem(value, names) if value is not None and template else None
        if problem:
            r.error(value_node, f"{key}: {problem}")
        return value

    return TagRule(
        type=rule_type,
        location=r.loc(node),
        enable=text("enable"),
        priority=r.field(
            entries, "priority", lambda n: r.integer(n, "priority"), DEFAULT_PRIORITY[rule_type]
        ),
        prefix=text("prefix", allow_empty=True),
        suffix=text("suffix", allow_empty=True),
        pattern=text("pattern", template=rule_type != "match"),
        value=text("value"),
        event=r.field(entries, "event", lambda n: r.choice(n, "event", REF_EVENTS), None),
        format=r.field(
            entries, "format", lambda n: r.choice(n, "format", ("short", "long")), "short"
        ),
        length=r.field(
            entries, "length", lambda n: r.integer(n, "length", minimum=4, maximum=40), 7
        ),
        group=r.field(entries, "group", lambda n: r.string(n, "group"), "0"),
        branch=text("branch", template=False),
        latest=r.field(entries, "latest", lambda n: r.boolean(n, "latest"), False),
    )


def _check_rule(r: Reader, node: Node, rule: TagRule) -> TagRule | None:
    """What one rule type needs beyond its keys; the `pr-` and `sha-` default prefixes."""
    if rule.type == "ref" and rule.event is None:
        r.error(node, "a 'ref' tag rule needs `event: branch`, `event: tag` or `event: pr`")
        return None
    if rule.type == "raw" and rule.value is None:
        r.error(node, "a 'raw' tag rule needs a `value`")
        return None
    if rule.type == "match" and not _check_match(r, node, rule):
        return None
    if rule.type == "ref" and rule.event == "pr" and rule.prefix is None:
        return replace(rule, prefix="pr-")
    if rule.type == "sha" and rule.prefix is None:
        return replace(rule, prefix="sha-")
    return rule


def _check_match(r: Reader, node: Node, rule: TagRule) -> bool:
    if rule.pattern is None:
        r.error(node, "a 'match' tag rule needs a `pattern` (a regular expression)")
        return False
    try:
        compiled = re.compile(rule.pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # `a{99999999999}`, `((((...`
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        r.error(node, f"pattern is not a valid regular expression: {reason}")
        return False
    group = int(rule.group) if _GROUP_NUMBER.fullmatch(rule.group) else rule.group
    if (isinstance(group, int) and group > compiled.groups) or (
        isinstance(group, str) and group not in compiled.groupindex
    ):
        r.error(node, f"pattern has no group {shown(rule.group)}")
        return False
    return True


# -- flavor --------------------------------------------------------------------------


def read_flavor(r: Reader, section: Section) -> Flavor:
    """The merged `flavor:` section (defaults when there is none)."""
    e = section.entries
    for key in ("prefix", "suffix"):
        text = scalar_text(e[key]) if key in e else None
        problem = template_problem(text) if text else None
        if problem:
            r.error(e[key], f"{key}: {problem}")
    return Flavor(
        latest=r.field(
            e, "latest", lambda n: r.choice(n, "latest", ("auto", "true", "false")), "auto"
        ),
        prefix=r.field(e, "prefix", lambda n: r.string(n, "prefix", allow_empty=True), ""),
        suffix=r.field(e, "suffix", lambda n: r.string(n, "suffix", allow_empty=True), ""),
        prefix_on_latest=r.field(
            e, "prefix_on_latest", lambda n: r.boolean(n, "prefix_on_latest"), False
        ),
        suffix_on_latest=r.field(
            e, "suffix_on_latest", lambda n: r.boolean(n, "suffix_on_latest"), False
        ),
        floating=r.field(
            e, "floating", lambda n: r.choice(n, "floating", ("auto", "always")), "auto"
        ),
    )


FLAVOR: Final = Mergeable(
    key="flavor",
    keys=("latest", "prefix", "suffix", "prefix_on_latest", "suffix_on_latest", "floating"),
    read=read_flavor,
)


# -- templates -----------------------------------------------------------------------


def template_problem(source: str, names: frozenset[str] = TEMPLATE_NAMES) -> str | None:
    """What is wrong with a template: bad syntax, or a name no template can read."""
    if "{" not in source:
        return None
    problem = templates.check(source)
    if problem:
        return problem
    unknown = sorted(templates.names(source) - names)
    if unknown:
        return f"unknown name '{unknown[0]}' in template{did_you_mean(unknown[0], sorted(names))}"
    return None


def check_templates(r: Reader, node: Node | None, what: str, values: Mapping[str, str]) -> None:
    """A problem at `node` for each of `values` (build args, labels, ...) that is a bad template."""
    if node is None:
        return
    for key, value in values.items():
        problem = template_problem(value)
        if problem:
            r.error(node, f"{what} '{key}': {problem}")
