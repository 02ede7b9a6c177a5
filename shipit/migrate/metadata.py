"""docker/metadata-action's inputs (`images`, `tags`, `flavor`, `labels`) as shipit's spec.

Pure: lines in, spec fragments (plain dicts, ready for YAML) and report notes out. Where
shipit's default differs from metadata-action's, the spec spells out the old behaviour:
- `latest`: metadata-action adds it when the highest-priority rule that makes a tag is a
  `ref` tag, `match`, `semver` or `pep440` rule (not for a prerelease); shipit decides it
  from the build. The spec turns `flavor.latest` off and marks those rules `latest: true`.
- the `sha` tag (and `{{sha}}`) on pull requests: metadata-action uses GITHUB_SHA (GitHub's
  merge commit) unless DOCKER_METADATA_PR_HEAD_SHA is true; shipit uses the PR head. When
  the workflow runs on pull requests, a second rule keeps the merge commit there.
What has no counterpart is reported with its line and left out, never guessed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shipit.migrate.report import Report

DEFAULT_TAGS: Final = (
    "type=schedule",
    "type=ref,event=branch",
    "type=ref,event=tag",
    "type=ref,event=pr",
)
PRIORITIES: Final = {
    "schedule": 1000,
    "semver": 900,
    "pep440": 900,
    "match": 800,
    "edge": 700,
    "ref": 600,
    "raw": 200,
    "sha": 100,
}
_EXPR = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_DATE = re.compile(
    r"(?P<fn>date|commit_date)"
    r"(?:\s+(?:'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\"|(?P<bare>[^\s=]+)))?"
    r"(?P<attrs>(?:\s+\w+=(?:'[^']*'|\"[^\"]*\"|\S+))*)$"
)
_MOMENT = re.compile(r"YYYY|YY|MM|DD|HH|hh|mm|ss|[A-Za-z]+|[^A-Za-z]+")
_MOMENT_TOKENS: Final = {
    "YYYY": "%Y",
    "YY": "%y",
    "MM": "%m",
    "DD": "%d",
    "HH": "%H",
    "hh": "%I",
    "mm": "%M",
    "ss": "%S",
    "A": "%p",
}
_ISO = "%Y-%m-%dT%H:%M:%SZ"  # moment's format() without a format, in UTC
_VERSION_NAMES: Final = frozenset({"version", "major", "minor", "patch", "prerelease", "raw"})


class Untranslatable(Exception):
    """Something metadata-action says that shipit's spec cannot: the message says what."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """What else decides the translation, read from the workflow."""

    pr_merge_sha: bool = False  # runs on pull requests without DOCKER_METADATA_PR_HEAD_SHA
    line: int | None = None  # where the metadata-action step is


@dataclass(kw_only=True)
class Tags:
    """The `tags:` rules and `flavor:` of an image."""

    rules: list[dict[str, Any]] = field(default_factory=list)
    flavor: dict[str, Any] = field(default_factory=dict)


# -- templates -------------------------------------------------------------------------


def template(text: str, options: Options, *, names: frozenset[str] = frozenset()) -> str:
    """metadata-action's handlebars expressions as shipit's Jinja2; `names` pass through."""

    def one(match: re.Match[str]) -> str:
        return "{{ " + _expression(match.group(1), options, names) + " }}"

    if "{{{" in text:
        raise Untranslatable(f"triple-stash handlebars in {text!r}")
    return _EXPR.sub(one, text)


def _expression(expr: str, options: Options, names: frozenset[str]) -> str:
    if expr in names:
        return expr
    simple = {
        "branch": "branch",
        "tag": "tag",
        "sha": "env.get('GITHUB_SHA', sha)[:7]" if options.pr_merge_sha else "sha_short",
        "is_default_branch": "is_default_branch",
        "is_not_default_branch": "not is_default_branch",
        "base_ref": "env.get('GITHUB_BASE_REF', '')",
    }
    if expr in simple:
        return simple[expr]
    m = _DATE.fullmatch(expr)
    if m is None:
        raise Untranslatable(f"the expression {{{{{expr}}}}} has no counterpart in shipit")
    quoted = m.group("sq") if m.group("sq") is not None else m.group("dq")
    fmt = _ISO if quoted is None else _strftime(quoted)
    tz = None
    for key, value in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)", m.group("attrs")):
        if key != "tz":
            raise Untranslatable(f"unknown attribute {key} in {{{{{expr}}}}}")
        tz = value.strip("'\"")
    if tz and quoted is None:
        raise Untranslatable(f"{{{{{expr}}}}}: the ISO format with a time zone offset")
    function = "now" if m.group("fn") == "date" else "date"
    args = repr(fmt) + (f", tz={tz!r}" if tz and tz != "UTC" else "")
    return f"{function}({args})"


def _strftime(moment: str) -> str:
    """A moment.js format (YYYYMMDD-HHmmss) as strftime's (%Y%m%d-%H%M%S)."""
    out = []
    for token in _MOMENT.findall(moment):
        if token in _MOMENT_TOKENS:
            out.append(_MOMENT_TOKENS[token])
        elif token[0].isalpha():
            raise Untranslatable(f"the date format token {token!r} in {moment!r}")
        else:
            out.append(token.replace("%", "%%"))
    return "".join(out)


def _enable(text: str, options: Options) -> str | None:
    """A Jinja expression for metadata-action's `enable`, None for always; 'false' for never."""
    if text.strip().lower() in ("true", ""):
        return None
    if text.strip().lower() == "false":
        return "false"
    m = _EXPR.fullmatch(text.strip())
    if m is None:
        raise Untranslatable(f"enable={text!r} is neither true, false nor one expression")
    return _expression(m.group(1), options, frozenset())


# -- tags ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MetaTag:
    type: str
    attrs: dict[str, str]
    source: str
    order: int

    @property
    def priority(self) -> int:
        return int(self.attrs.get("priority", PRIORITIES[self.type]))

    @property
    def gives_latest(self) -> bool:
        """Whether, as the first rule to make a tag, it makes metadata-action add `latest`."""
        ref_tag = self.type == "ref" and self.attrs.get("event") == "tag"
        return ref_tag or self.type in ("semver", "pep440", "match")


def parse_tag(line: str, order: int = 0) -> MetaTag:
    """One line of the `tags` input: CSV of `key=value` fields; a bare field is the value."""
    fields = next(csv.reader([line], skipinitialspace=True), [])
    kind = "raw"
    attrs: dict[str, str] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        if not eq:
            attrs["value"] = item.strip()
        elif key.strip().lower() == "type":
            kind = value.strip()
        else:
            attrs[key.strip().lower()] = value.strip()
    if kind not in PRIORITIES:
        raise Untranslatable(f"unknown tag type {kind!r}")
    return MetaTag(type=kind, attrs=attrs, source=line, order=order)


def translate_tags(
    tag_lines: Sequence[str], flavor_lines: Sequence[str], options: Options, report: Report
) -> Tags:
    """The image's `tags:` and `flavor:` for metadata-action's `tags` and `flavor` inputs."""
    flavor = _flavor(flavor_lines, options, report)
    parsed: list[MetaTag] = []
    for order, line in enumerate(tag_lines or DEFAULT_TAGS):
        try:
            parsed.append(parse_tag(line, order))
        except Untranslatable as exc:
            report.missed(f"tag rule {line!r}: {exc}", options.line)
    if not tag_lines:
        report.done("no `tags` input: metadata-action's default rules, written out", options.line)
    parsed.sort(key=lambda t: (-t.priority, t.order))
    result = Tags(flavor=flavor)
    latest_auto = flavor.get("latest", "auto") == "auto"
    reachable = True  # no rule before this one always makes a tag on a git tag
    for tag in parsed:
        try:
            rules = _rules(tag, options)
        except Untranslatable as exc:
            report.missed(f"tag rule {tag.source!r}: {exc}", options.line)
            continue
        if not rules:
            report.done(f"tag rule {tag.source!r}: disabled, left out", options.line)
            continue
        if latest_auto and tag.gives_latest and reachable:
            rules[0]["latest"] = True
        if tag.gives_latest and tag.type in ("semver", "pep440") and reachable and latest_auto:
            report.changed(
                f"{tag.source!r}: on a prerelease metadata-action gives no `latest` even when a"
                " lower-priority rule would; shipit's `latest: true` rules each decide alone",
                options.line,
            )
        if _always_on_tags(tag):
            reachable = False
        result.rules.extend(rules)
        report.done(f"tag rule {tag.source!r}", options.line)
    if latest_auto:
        result.flavor["latest"] = "false"
        if any(rule.get("latest") for rule in result.rules):
            report.changed(
                "`latest` comes, as before, from the rules marked `latest: true` (shipit's own"
                " default adds it only for the newest SemVer release)",
                options.line,
            )
    return result


def _always_on_tags(tag: MetaTag) -> bool:
    """Whether the rule makes a tag on every git tag build (so no later rule decides latest)."""
    if tag.attrs.get("enable", "true").strip().lower() not in ("true", ""):
        return False
    return tag.type in ("raw", "sha") or (tag.type == "ref" and tag.attrs.get("event") == "tag")


def _rules(tag: MetaTag, options: Options) -> list[dict[str, Any]]:  # noqa: C901, PLR0912
    """The shipit rules for one metadata-action rule ([] when it is disabled)."""
    a = tag.attrs
    enable = _enable(a.get("enable", "true"), options)
    if enable == "false":
        return []
    rule: dict[str, Any] = {"type": tag.type}
    kind = tag.type
    if kind == "ref":
        event = a.get("event")
        if event not in ("branch", "tag", "pr"):
            raise Untranslatable(f"event={event!r} (branch, tag or pr)")
        rule["event"] = event
    elif kind == "edge":
        if a.get("branch"):
            rule["branch"] = a["branch"]
    elif kind == "schedule":
        if a.get("pattern", "nightly") != "nightly":
            rule["pattern"] = template(a["pattern"], options)
    elif kind == "raw":
        if "value" not in a:
            raise Untranslatable("a raw rule without a value")
        rule["value"] = template(a["value"], options)
    elif kind == "sha":
        fmt = a.get("format", "short")
        if fmt not in ("short", "long"):
            raise Untranslatable(f"format={fmt!r}")
        if fmt == "long":
            rule["format"] = "long"
    elif kind in ("semver", "pep440"):
        rule = _version_rule(tag, options)
    elif kind == "match":
        rule = _match_rule(a.get("pattern", ""), a.get("group", "0"), a.get("value"), options)
    if "prefix" in a:
        rule["prefix"] = template(a["prefix"], options)
    if "suffix" in a:
        rule["suffix"] = template(a["suffix"], options)
    if tag.priority != PRIORITIES[tag.type] or rule["type"] != tag.type:
        rule["priority"] = tag.priority
    if enable is not None:
        rule["enable"] = "{{ " + enable + " }}"
    if kind == "sha" and options.pr_merge_sha:
        return _merge_commit_sha(rule, enable)
    return [rule]


def _version_rule(tag: MetaTag, options: Options) -> dict[str, Any]:
    a = tag.attrs
    if "pattern" not in a:
        raise Untranslatable("a version rule without a pattern")
    pattern = template(a["pattern"], options, names=_VERSION_NAMES)
    if a.get("match"):
        # match= picks group 1 of the tag (or value) as the version: a match rule, when the
        # pattern is the whole version.
        if pattern.replace(" ", "") not in ("{{version}}", "{{raw}}"):
            raise Untranslatable(f"match= with the pattern {a['pattern']!r}")
        return _match_rule(a["match"], "1", a.get("value"), options)
    rule: dict[str, Any] = {"type": tag.type, "pattern": pattern}
    if a.get("value"):
        rule["value"] = template(a["value"], options)
    return rule


def _match_rule(pattern: str, group: str, value: str | None, options: Options) -> dict[str, Any]:
    literal = re.fullmatch(r"/(.+)/([a-z]*)", pattern)
    if literal:  # a JavaScript regular expression literal: /.../flags
        flags = "".join(f for f in literal.group(2) if f in "ims")
        pattern = (f"(?{flags})" if flags else "") + literal.group(1)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise Untranslatable(
            f"the pattern {pattern!r} is not a Python regular expression: {exc}"
        ) from None
    if not group.isdigit():
        raise Untranslatable(f"group={group!r} is not a number")
    if int(group) > compiled.groups:
        raise Untranslatable(
            f"the pattern has no group {group} (metadata-action skips this rule with a warning)"
        )
    rule: dict[str, Any] = {"type": "match", "pattern": pattern}
    if group != "0":
        rule["group"] = group
    if value:
        rule["value"] = template(value, options)
    return rule


def _merge_commit_sha(rule: dict[str, Any], enable: str | None) -> list[dict[str, Any]]:
    """metadata-action's sha tag on pull requests: GITHUB_SHA, GitHub's merge commit."""
    both = f"({enable}) and " if enable else ""
    length = "" if rule.get("format") == "long" else "[:7]"
    merge: dict[str, Any] = {
        "type": "raw",
        "value": "{{ env.get('GITHUB_SHA', sha)" + length + " }}",
        "prefix": rule.get("prefix", "sha-"),
        "priority": rule.get("priority", PRIORITIES["sha"]),
        "enable": "{{ " + both + "event == 'pull_request' }}",
    }
    if "suffix" in rule:
        merge["suffix"] = rule["suffix"]
    push = {**rule, "enable": "{{ " + both + "event != 'pull_request' }}"}
    return [push, merge]


# -- flavor, images, labels ----------------------------------------------------------------


def _flavor(lines: Sequence[str], options: Options, report: Report) -> dict[str, Any]:
    flavor: dict[str, Any] = {}
    for line in lines:
        last = ""
        for item in next(csv.reader([line], skipinitialspace=True), []):
            key, eq, value = (part.strip() for part in item.partition("="))
            key = key.lower()
            if not eq or key not in ("latest", "prefix", "suffix", "onlatest"):
                report.missed(f"flavor {line!r}: {item!r} is not a flavor entry", options.line)
                continue
            if key == "latest":
                flavor["latest"] = value
            elif key in ("prefix", "suffix"):
                flavor[key] = template(value, options)
                last = key
            elif last:
                flavor[f"{last}_on_latest"] = value.lower() == "true"
        report.done(f"flavor {line!r}", options.line)
    return flavor


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    registry: str  # host/namespace, as a shipit registry url
    name: str


def parse_images(lines: Sequence[str], report: Report, line: int | None) -> list[ImageRef]:
    """The `images` input: `name[,enable=…]` or `name=…,enable=…`, Docker Hub by default."""
    refs = []
    for entry in lines:
        name, enabled = "", "true"
        for item in next(csv.reader([entry], skipinitialspace=True), []):
            key, eq, value = (part.strip() for part in item.partition("="))
            if not eq:
                name = key
            elif key.lower() == "name":
                name = value
            elif key.lower() == "enable":
                enabled = value.lower()
        if enabled == "false":
            report.done(f"image {entry!r}: disabled, left out", line)
            continue
        if enabled != "true" or not name or "${{" in name:
            report.missed(f"image {entry!r}: only literal names and enable=true|false", line)
            continue
        refs.append(image_ref(name))
        report.done(f"image {entry!r}", line)
    return refs


def image_ref(name: str) -> ImageRef:
    """`org/app` -> docker.io/org + app; `ghcr.io/MyUser/App` -> ghcr.io/myuser + app."""
    parts = name.lower().split("/")
    first = parts[0]
    if len(parts) == 1 or not ("." in first or ":" in first or first == "localhost"):
        parts = ["docker.io", *(parts if len(parts) > 1 else ["library", *parts])]
    return ImageRef(registry="/".join(parts[:-1]), name=parts[-1])


def labels(lines: Sequence[str], report: Report, line: int | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in lines:
        key, eq, value = entry.partition("=")
        if not eq or not key.strip():
            report.missed(f"label {entry!r}: not key=value", line)
            continue
        out[key.strip()] = value
    return out
