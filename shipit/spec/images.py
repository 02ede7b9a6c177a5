"""One item of `images:` (or the top-level `image:`): what is built, and from where.

The image's own keys are read here (name, context, dockerfile, target, platform, build args,
labels, pull, cache_from, release); the sections it may inherit from the top of the spec
are read by their own modules and merged per image (`sections`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from yaml.nodes import Node

from shipit.spec import paths
from shipit.spec.build import INHERITED as BUILD_INHERITED
from shipit.spec.build import KEYS as BUILD_KEYS
from shipit.spec.build import read_build
from shipit.spec.nodes import Reader
from shipit.spec.push import PUSH
from shipit.spec.records import DEFAULT_RELEASE_PATTERN, Image
from shipit.spec.registries import REPOSITORY, read_registries
from shipit.spec.retention import RETENTION, resolve_retention
from shipit.spec.scan import SCAN
from shipit.spec.sections import inherited
from shipit.spec.sign import SIGN
from shipit.spec.tags import FLAVOR, check_templates, default_rules, read_tag_rules

# What an image may take from the top of the spec: values replaced whole, sections merged.
INHERITED: Final = (
    "registries", "tags", *BUILD_INHERITED,
    *(s.key for s in (FLAVOR, SCAN, SIGN, PUSH, RETENTION)),
)  # fmt: skip
_KEYS: Final = (
    "name", "context", "dockerfile", "target", "build_args", "labels", "pull", "release",
    *dict.fromkeys((*BUILD_KEYS, *INHERITED)),
)  # fmt: skip


def read_image(r: Reader, node: Node, top: Mapping[str, Node]) -> Image | None:
    """One image, with the top-level sections (`top`) as its defaults."""
    entries = r.mapping(node, "an image", _KEYS)
    if entries is None:
        return None
    name = _name(r, node, entries)
    context = _context(r, node, entries)
    dockerfile = r.field(entries, "dockerfile", lambda n: r.string(n, "dockerfile"), "Dockerfile")
    dockerfile_path = _dockerfile(r, node, entries, context, dockerfile)
    build = read_build(r, node, top, entries, dockerfile_path)
    registries = read_registries(r, inherited("registries", top, entries), node)
    rules_node = inherited("tags", top, entries)
    rules = read_tag_rules(r, rules_node) if rules_node is not None else None
    release = _release(r, entries.get("release"))
    flavor = FLAVOR.resolve(r, top, entries)
    scan = SCAN.resolve(r, top, entries)
    sign = SIGN.resolve(r, top, entries)
    push = PUSH.resolve(r, top, entries)
    retention = resolve_retention(r, top, entries)
    no_strings: dict[str, str] = {}
    build_args = r.field(entries, "build_args", lambda n: r.string_map(n, "build_args"), no_strings)
    labels = r.field(entries, "labels", lambda n: r.string_map(n, "labels"), no_strings)
    check_templates(r, entries.get("build_args"), "build arg", build_args)
    check_templates(r, entries.get("labels"), "label", labels)
    if name is None or context is None or registries is None:
        return None
    return Image(
        name=name,
        location=r.loc(node),
        context=context,
        dockerfile=dockerfile,
        target=r.field(entries, "target", lambda n: r.string(n, "target"), None),
        build_args=build_args,
        labels=labels,
        pull=r.field(entries, "pull", lambda n: r.boolean(n, "pull"), False),
        build=build,
        release_pattern=release,
        tags=rules if rules is not None else default_rules(r.loc(node)),
        default_tags=rules is None,
        flavor=flavor,
        registries=registries,
        scan=scan,
        sign=sign,
        push=push,
        retention=retention,
    )


def _name(r: Reader, node: Node, entries: Mapping[str, Node]) -> str | None:
    name_node = entries.get("name")
    if name_node is None:
        r.error(node, "an image needs a `name` (appended to each registry url)")
        return None
    name = r.string(name_node, "name")
    if name is None:
        return None
    lowered = name.lower()
    if not REPOSITORY.fullmatch(lowered):
        r.error(
            name_node,
            f"{paths.shown(name)} is not a valid image name: use lowercase letters, digits and"
            " separators (. _ -), with / between path components",
        )
        return None
    return lowered


def _context(r: Reader, node: Node, entries: Mapping[str, Node]) -> Path | None:
    context_node = entries.get("context")
    text = r.string(context_node, "context") if context_node is not None else "."
    if text is None:
        return None
    where = context_node or node
    context = r.resolve(where, "build context", text)
    if context is None or not r.is_there(where, "build context", text, context, "folder"):
        return None
    return context


def _dockerfile(
    r: Reader, node: Node, entries: Mapping[str, Node], context: Path | None, dockerfile: str
) -> Path | None:
    """The Dockerfile's path when it exists; a located problem when it does not."""
    if context is None:
        return None
    where = entries.get("dockerfile") or node
    path = r.resolve(where, "dockerfile", dockerfile, base=context)
    if path is None:
        return None
    try:
        found = paths.kind(path)
    except paths.PathProblem as exc:
        r.error(where, f"dockerfile {paths.shown(dockerfile)} {exc}")
        return None
    if found != "file":
        r.error(where, f"no Dockerfile at {paths.shown(dockerfile)} in context {context}")
        return None
    return path


def _release(r: Reader, node: Node | None) -> str:
    """`release: {tag_pattern: ...}`: which git tags are this image's releases."""
    if node is None:
        return DEFAULT_RELEASE_PATTERN
    entries = r.mapping(node, "release", ("tag_pattern",))
    if not entries or "tag_pattern" not in entries:
        if entries is not None:
            r.error(node, "release needs a `tag_pattern`")
        return DEFAULT_RELEASE_PATTERN
    pattern_node = entries["tag_pattern"]
    pattern = r.string(pattern_node, "tag_pattern")
    if pattern is None:
        return DEFAULT_RELEASE_PATTERN
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # `a{99999999999}`, `((((...`
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        r.error(pattern_node, f"tag_pattern is not a valid regular expression: {reason}")
        return DEFAULT_RELEASE_PATTERN
    if compiled.groups and "version" not in compiled.groupindex and compiled.groups != 1:
        r.error(
            pattern_node,
            "tag_pattern has several groups: name the version one (?P<version>...)",
        )
    return pattern
