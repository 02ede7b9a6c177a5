"""Tags for an image, from its rules and flavor (DESIGN section 3).

The rule types and their meaning follow docker/metadata-action. Beyond it: every tag is
made valid or is an error naming its rule; floating tags (`1.4`, `1`, `latest`) never move
backwards to an older release; a prerelease only ever gets its full version; and pull
requests are tagged with the PR head commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

import semver

from shipit import pep440, templates
from shipit.context import Context
from shipit.errors import Problem, SpecError
from shipit.spec import Image, TagRule
from shipit.version import Version, releases

MAX_TAG: Final = 128
_VALID_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_DASHES = re.compile(r"-{2,}")
# Names in a semver pattern that pin it to one exact version: such tags never float.
_EXACT_NAMES: Final = frozenset({"version", "patch", "prerelease", "raw"})


class TagError(SpecError):
    """A rule could not make a valid tag; located at the rule (exit 2)."""

    def __init__(self, rule: TagRule, message: str) -> None:
        super().__init__(
            [Problem(location=rule.location, message=f"tag rule '{rule.type}': {message}")]
        )


def sanitize(value: str) -> str:
    """Make `value` a valid Docker tag: [A-Za-z0-9_.-], no leading `.`/`-`, at most 128."""
    text = _INVALID_CHARS.sub("-", value)
    text = _DASHES.sub("-", text)
    text = text.lstrip(".-").rstrip("-")
    return text[:MAX_TAG].rstrip("-")


def slug(ref_name: str) -> str:
    """GitLab's CI_COMMIT_REF_SLUG: lowercase, [a-z0-9] else `-`, 63 bytes, trimmed dashes."""
    text = re.sub(r"[^a-z0-9]", "-", ref_name.lower())
    return text[:63].strip("-")


def template_values(ctx: Context, version: Version, image_name: str) -> dict[str, Any]:
    """The names every template can read (DESIGN section 3)."""

    def date(fmt: str = "%Y%m%d", tz: str = "UTC") -> str:
        return ctx.commit_time.astimezone(ZoneInfo(tz)).strftime(fmt)

    def now(fmt: str = "%Y%m%d", tz: str = "UTC") -> str:
        return ctx.now.astimezone(ZoneInfo(tz)).strftime(fmt)

    return {
        "version": version.text,
        "major": version.major,
        "minor": version.minor,
        "patch": version.patch,
        "prerelease": version.prerelease or "",
        "is_release": version.is_release,
        "is_prerelease": version.is_prerelease,
        "sha": ctx.sha,
        "sha_short": ctx.sha[:7],
        "branch": ctx.branch or "",
        "branch_slug": slug(ctx.ref_name),
        "tag": ctx.tag or "",
        "pr": ctx.pr if ctx.pr is not None else "",
        "event": ctx.event,
        "is_default_branch": ctx.is_default_branch,
        "build_number": ctx.build_number or "",
        "date": date,
        "now": now,
        "env": dict(ctx.env),
        "image": image_name,
    }


@dataclass(frozen=True)
class _Candidate:
    priority: int
    order: int
    tag: str


def derive_tags(image: Image, ctx: Context, version: Version) -> tuple[str, ...]:
    """The tags this build of `image` gets, highest priority first, without duplicates."""
    values = template_values(ctx, version, image.name)
    known = [v for _, v in releases(ctx.tags, image.release_regex())]
    flavor = image.flavor
    prefix = _render_flavor(image, flavor.prefix, values)
    suffix = _render_flavor(image, flavor.suffix, values)
    inputs = _Inputs(ctx=ctx, version=version, values=values, known=known, floating=flavor.floating)
    candidates: list[_Candidate] = []
    latest_from_rule = False
    for order, rule in enumerate(image.tags):
        if rule.enable is not None and not _render_bool(rule, rule.enable, values):
            continue
        made = _produce(rule, inputs)
        for raw_value in made:
            tag = _finish(rule, raw_value, prefix, suffix, values)
            candidates.append(_Candidate(rule.priority, order, tag))
        latest_from_rule = latest_from_rule or (bool(made) and _rule_brings_latest(rule, inputs))
    ordered = [c.tag for c in sorted(candidates, key=lambda c: (-c.priority, c.order))]
    if latest_from_rule or _wants_latest(image, version, known):
        latest = (
            (prefix if flavor.prefix_on_latest else "")
            + "latest"
            + (suffix if flavor.suffix_on_latest else "")
        )
        ordered.append(sanitize(latest))
    return tuple(dict.fromkeys(ordered))


def _render_flavor(image: Image, source: str, values: Mapping[str, Any]) -> str:
    try:
        return templates.render(source, values)
    except templates.TemplateError as exc:
        problem = Problem(location=image.location, message=f"flavor {source!r}: {exc}")
        raise SpecError([problem]) from None


def _wants_latest(image: Image, version: Version, known: list[semver.Version]) -> bool:
    mode = image.flavor.latest
    if mode != "auto":
        return mode == "true"
    if not version.is_release or version.is_prerelease:
        return False
    if image.flavor.floating == "always":
        return True
    return _is_highest(version.core, known, scope=())


def _rule_brings_latest(rule: TagRule, inputs: _Inputs) -> bool:
    """A rule with `latest: true` that made a tag brings `latest`, unless it tagged a
    prerelease (semver, pep440) or, for semver, a release older than a known one."""
    if not rule.latest:
        return False
    if rule.type == "semver":
        parsed = _semver_subject(rule, inputs)
        if parsed is None or parsed[0].prerelease:
            return False
        return inputs.floating == "always" or _is_highest(parsed[0], inputs.known, scope=())
    if rule.type == "pep440":
        subject = _pep440_subject(rule, inputs)
        return subject is not None and subject[0].is_final
    return True


def _is_highest(
    current: semver.Version, known: list[semver.Version], *, scope: tuple[str, ...]
) -> bool:
    """Whether no stable release in the same scope (same major, or major.minor) is higher."""
    for other in known:
        if other.prerelease:
            continue
        if any(getattr(other, part) != getattr(current, part) for part in scope):
            continue
        if other.replace(build=None) > current.replace(build=None):
            return False
    return True


def _render(rule: TagRule, source: str, values: Mapping[str, Any]) -> str:
    try:
        return templates.render(source, values)
    except templates.TemplateError as exc:
        raise TagError(rule, f"{source!r}: {exc}") from None


def _render_bool(rule: TagRule, source: str, values: Mapping[str, Any]) -> bool:
    try:
        return templates.render_bool(source, values)
    except templates.TemplateError as exc:
        raise TagError(rule, f"enable {source!r}: {exc}") from None


def _finish(rule: TagRule, value: str, prefix: str, suffix: str, values: Mapping[str, Any]) -> str:
    """Add prefix and suffix (the rule's own replace the flavor's), then sanitize."""
    before = _render(rule, rule.prefix, values) if rule.prefix is not None else prefix
    after = _render(rule, rule.suffix, values) if rule.suffix is not None else suffix
    text = before + value + after
    tag = sanitize(text)
    if not _VALID_TAG.fullmatch(tag):
        raise TagError(rule, f"made an empty or invalid tag from {text!r}")
    return tag


@dataclass(frozen=True, kw_only=True)
class _Inputs:
    """What every rule reads: the build, its version, template values, known releases."""

    ctx: Context
    version: Version
    values: Mapping[str, Any]
    known: list[semver.Version]
    floating: str


def _produce(rule: TagRule, inputs: _Inputs) -> list[str]:
    return _PRODUCERS[rule.type](rule, inputs)


def _semver_subject(rule: TagRule, inputs: _Inputs) -> tuple[semver.Version, str] | None:
    """The version a semver rule tags, and its text as written; None when it tags nothing."""
    ctx, version = inputs.ctx, inputs.version
    if rule.value is not None:
        text = _render(rule, rule.value, inputs.values)
        try:
            return semver.Version.parse(text.removeprefix("v")), text
        except ValueError:
            raise TagError(rule, f"value {text!r} is not a semantic version") from None
    if ctx.event == "tag" and version.is_release:
        return version.core.replace(build=version.build), version.raw or version.text
    return None


def _semver(rule: TagRule, inputs: _Inputs) -> list[str]:
    values = inputs.values
    subject = _semver_subject(rule, inputs)
    if subject is None:
        return []
    parsed, raw = subject
    pattern = rule.pattern or "{{version}}"
    used = templates.names(pattern)
    if parsed.prerelease and not used & {"version", "raw"}:
        pattern = "{{version}}"  # a prerelease only ever gets its full version
    elif not used & _EXACT_NAMES and inputs.floating != "always":
        scope = ("major", "minor") if "minor" in used else ("major",) if "major" in used else ()
        if not _is_highest(parsed, [*inputs.known, parsed], scope=scope):
            return []
    semver_values = {
        **values,
        "version": str(parsed),
        "major": parsed.major,
        "minor": parsed.minor,
        "patch": parsed.patch,
        "prerelease": parsed.prerelease or "",
        "raw": raw,
    }
    return [_render(rule, pattern, semver_values)]


def _pep440_subject(rule: TagRule, inputs: _Inputs) -> tuple[pep440.Pep440, str] | None:
    """The PEP 440 version a pep440 rule tags (its `value`, else the git tag being built)."""
    if rule.value is not None:
        text = _render(rule, rule.value, inputs.values)
    elif inputs.ctx.event == "tag" and inputs.ctx.tag:
        text = inputs.ctx.tag
    else:
        return None
    parsed = pep440.parse(text)
    return (parsed, text) if parsed is not None else None


def _pep440(rule: TagRule, inputs: _Inputs) -> list[str]:
    """Like semver, for PEP 440 versions: a pre-, post- or dev-release gets its full
    (normalized) version only; `{{raw}}` is the tag as written. Not checked for floating
    backwards: PEP 440 tags are not read as releases."""
    subject = _pep440_subject(rule, inputs)
    if subject is None:
        return []
    parsed, raw = subject
    pattern = rule.pattern or "{{version}}"
    pep_values = {
        **inputs.values,
        "version": str(parsed),
        "major": parsed.major,
        "minor": parsed.minor,
        "patch": parsed.patch,
        "prerelease": "",
        "raw": raw,
    }
    if not parsed.is_final and templates.names(pattern) != {"raw"}:
        return [str(parsed)]  # not final: only ever its full version, or the tag as written
    return [_render(rule, pattern, pep_values)]


def _ref(rule: TagRule, inputs: _Inputs) -> list[str]:
    ctx = inputs.ctx
    if rule.event == "branch" and ctx.event in ("push", "schedule") and ctx.branch:
        return [ctx.branch]
    if rule.event == "tag" and ctx.event == "tag" and ctx.tag:
        return [ctx.tag]
    if rule.event == "pr" and ctx.event == "pull_request" and ctx.pr is not None:
        return [str(ctx.pr)]
    return []


def _sha(rule: TagRule, inputs: _Inputs) -> list[str]:
    sha = inputs.ctx.sha
    return [sha if rule.format == "long" else sha[: rule.length]]


def _schedule(rule: TagRule, inputs: _Inputs) -> list[str]:
    if inputs.ctx.event != "schedule":
        return []
    return [_render(rule, rule.pattern or "nightly", inputs.values)]


def _edge(rule: TagRule, inputs: _Inputs) -> list[str]:
    ctx = inputs.ctx
    target = rule.branch or ctx.default_branch
    return ["edge"] if ctx.event == "push" and ctx.branch == target else []


def _match(rule: TagRule, inputs: _Inputs) -> list[str]:
    ctx = inputs.ctx
    if rule.value is not None:
        subject = _render(rule, rule.value, inputs.values)
    elif ctx.event == "tag" and ctx.tag:
        subject = ctx.tag
    else:
        return []
    found = re.search(rule.pattern or "", subject)  # the spec parser requires a pattern
    if not found:
        return []
    group: int | str = int(rule.group) if rule.group.isdigit() else rule.group
    value = found.group(group)
    return [value] if value else []


def _raw(rule: TagRule, inputs: _Inputs) -> list[str]:
    return [_render(rule, rule.value or "", inputs.values)]  # the spec parser requires a value


_PRODUCERS: Final[Mapping[str, Callable[[TagRule, _Inputs], list[str]]]] = {
    "semver": _semver,
    "pep440": _pep440,
    "ref": _ref,
    "sha": _sha,
    "schedule": _schedule,
    "edge": _edge,
    "match": _match,
    "raw": _raw,
}
