"""The spec (`shipit.yml`, version 1): parsed once into frozen records.

Every problem is reported with FILE:LINE:COL, all at once. Sections that may stand at the
top as defaults for every image (`registries`, `tags`, `flavor`, `scan`, `sign`, `push`)
are merged here: a list in an image replaces the top one; a mapping is merged key by key,
the image's keys winning; `scan: false` / `sign: false` in an image turns a top-level
section off for that image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from yaml.nodes import MappingNode, Node

from shipit import templates
from shipit.errors import Location, Problem, SpecError, UsageError
from shipit.spec.nodes import (
    Reader,
    YamlSyntaxError,
    compose,
    did_you_mean,
    is_bool,
    is_null,
    key_node,
    scalar_text,
    unknown_key_message,
)
from shipit.spec.records import (
    DEFAULT_PRIORITY,
    DEFAULT_RELEASE_PATTERN,
    REF_EVENTS,
    SCANNERS,
    SEMVER_NAMES,
    SEVERITIES,
    SPEC_VERSION,
    STAGES,
    TAG_TYPES,
    TEMPLATE_NAMES,
    Flavor,
    Image,
    PushPolicy,
    Registry,
    Reports,
    ScanPolicy,
    SignPolicy,
    Spec,
    TagRule,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_RELEASE_PATTERN",
    "REF_EVENTS",
    "SCANNERS",
    "SEMVER_NAMES",
    "SEVERITIES",
    "SPEC_VERSION",
    "STAGES",
    "TAG_TYPES",
    "TEMPLATE_NAMES",
    "Flavor",
    "Image",
    "PushPolicy",
    "Registry",
    "Reports",
    "ScanPolicy",
    "SignPolicy",
    "Spec",
    "TagRule",
    "default_rules",
    "load",
    "parse",
    "template_problem",
]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::\d+)?")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_KMS_SCHEMES: Final = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://")


# -- loading ---------------------------------------------------------------------------


def load(path: Path, env: Mapping[str, str]) -> Spec:
    """Read and parse the spec at `path`; raises SpecError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"no spec at {path}", hint="write one with `shipit init`, or point -f at it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return parse(text, path, env)


def parse(text: str, path: Path, env: Mapping[str, str]) -> Spec:
    """Parse spec `text` as if read from `path` (relative paths start at its folder)."""
    shown = _shown_path(path)
    try:
        root_node = compose(text, shown)
    except YamlSyntaxError as exc:
        raise SpecError([exc.problem]) from None
    reader = Reader(shown, env, path.parent)
    spec = _SpecParser(reader, path.parent).parse(root_node, path)
    if reader.problems or spec is None:
        raise SpecError(sorted(reader.problems, key=lambda p: (p.location.line, p.location.column)))
    return spec


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- parsing ---------------------------------------------------------------------------

_TOP_KEYS = ("version", "registries", "image", "images", "scan", "sign", "push", "tags", "flavor")
_IMAGE_KEYS = (
    "name", "context", "dockerfile", "target", "platform", "build_args", "labels", "pull",
    "cache_from", "release", "tags", "flavor", "registries", "scan", "sign", "push",
)  # fmt: skip
_REGISTRY_KEYS = ("url", "username", "password_env", "insecure", "ca_file")
_FLAVOR_KEYS = ("latest", "prefix", "suffix", "prefix_on_latest", "suffix_on_latest", "floating")
_SCAN_KEYS = (
    "fail_on", "ignore_unfixed", "scanners", "ignorefile", "reports", "timeout",
    "db_repository", "cache_dir", "skip_db_update", "sbom",
)  # fmt: skip
_SIGN_KEYS = ("key", "format", "tlog", "annotations", "attest_sbom", "identity", "oidc_issuer")
_PUSH_KEYS = ("parallel", "retries")
_COMMON_RULE_KEYS = ("type", "enable", "priority", "prefix", "suffix")
_RULE_KEYS: Final = {
    "semver": ("pattern", "value"),
    "ref": ("event",),
    "sha": ("format", "length"),
    "schedule": ("pattern",),
    "edge": ("branch",),
    "match": ("pattern", "group", "value"),
    "raw": ("value",),
}


@dataclass
class _Section:
    """A mapping section, possibly split between the top level and an image."""

    disabled: bool = False
    entries: dict[str, Node] = field(default_factory=dict)
    present: bool = False


class _SpecParser:
    def __init__(self, reader: Reader, root: Path) -> None:
        self.r = reader
        self.root = root

    def parse(self, node: Node | None, path: Path) -> Spec | None:
        r = self.r
        if node is None or is_null(node):
            r.problems.append(
                Problem(
                    location=Location(file=r.file, line=1, column=1),
                    message="the spec is empty: it needs at least `version: 1` and an image",
                )
            )
            return None
        top = r.mapping(node, "the spec", allowed=None)
        if top is None:
            return None
        for key, value in list(top.items()):
            if key.startswith("x-"):  # extension keys hold YAML anchors; shipit ignores them
                del top[key]
            elif key not in _TOP_KEYS:
                r.error(key_node(node, key) or value, _unknown(key, "the spec", _TOP_KEYS))
                del top[key]
        self._version(node, top)
        image_nodes = self._image_nodes(node, top)
        images = [self._image(n, top) for n in image_nodes]
        names: dict[str, Node] = {}
        for image_node, image in zip(image_nodes, images, strict=True):
            if image is None:
                continue
            if image.name in names:
                r.error(image_node, f"image name '{image.name}' is used twice")
            names[image.name] = image_node
        if r.problems:
            return None
        return Spec(
            path=path,
            root=self.root,
            version=SPEC_VERSION,
            images=tuple(i for i in images if i is not None),
        )

    def _version(self, node: Node, top: Mapping[str, Node]) -> None:
        version_node = top.get("version")
        if version_node is None:
            self.r.error(node, "missing `version: 1` at the top of the spec")
            return
        version = self.r.integer(version_node, "version")
        if version is not None and version != SPEC_VERSION:
            self.r.error(
                version_node,
                f"spec version {version} is not supported; this shipit reads version 1",
            )

    def _image_nodes(self, node: Node, top: Mapping[str, Node]) -> list[Node]:
        single, many = top.get("image"), top.get("images")
        if single is not None and many is not None:
            self.r.error(many, "use either `image:` (one image) or `images:` (a list), not both")
            return []
        if single is not None:
            return [single]
        if many is None:
            self.r.error(node, "the spec has no image: add `image:` or `images:`")
            return []
        items = self.r.sequence(many, "images")
        if items is not None and not items:
            self.r.error(many, "`images` is empty")
        return items or []

    # -- one image ---------------------------------------------------------------------

    def _image(self, node: Node, top: Mapping[str, Node]) -> Image | None:
        r = self.r
        entries = r.mapping(node, "an image", _IMAGE_KEYS)
        if entries is None:
            return None
        name = self._image_name(node, entries)
        context = self._context(node, entries)
        dockerfile = r.field(
            entries, "dockerfile", lambda n: r.string(n, "dockerfile"), "Dockerfile"
        )
        if context is not None:
            self._check_dockerfile(entries.get("dockerfile") or node, context, dockerfile)
        registries = self._registries(entries.get("registries") or top.get("registries"), node)
        rules_node = entries.get("tags") if "tags" in entries else top.get("tags")
        rules = self._tag_rules(rules_node) if rules_node is not None else None
        release = self._release(entries.get("release"))
        flavor = self._flavor(self._merge("flavor", top, entries))
        scan = self._scan(self._merge("scan", top, entries))
        sign = self._sign(self._merge("sign", top, entries))
        push = self._push(self._merge("push", top, entries))
        no_strings: dict[str, str] = {}
        build_args = r.field(
            entries, "build_args", lambda n: r.string_map(n, "build_args"), no_strings
        )
        labels = r.field(entries, "labels", lambda n: r.string_map(n, "labels"), no_strings)
        for what, values, key in (
            ("build arg", build_args, "build_args"),
            ("label", labels, "labels"),
        ):
            self._check_templates(entries.get(key), what, values)
        if name is None or context is None or registries is None:
            return None
        return Image(
            name=name,
            location=r.loc(node),
            context=context,
            dockerfile=dockerfile,
            target=r.field(entries, "target", lambda n: r.string(n, "target"), None),
            platform=r.field(entries, "platform", self._platform, None),
            build_args=build_args,
            labels=labels,
            pull=r.field(entries, "pull", lambda n: r.boolean(n, "pull"), False),
            cache_from=r.field(entries, "cache_from", lambda n: r.string_list(n, "cache_from"), ()),
            release_pattern=release,
            tags=rules if rules is not None else default_rules(r.loc(node)),
            default_tags=rules is None,
            flavor=flavor,
            registries=registries,
            scan=scan,
            sign=sign,
            push=push,
        )

    def _image_name(self, node: Node, entries: Mapping[str, Node]) -> str | None:
        name_node = entries.get("name")
        if name_node is None:
            self.r.error(node, "an image needs a `name` (appended to each registry url)")
            return None
        name = self.r.string(name_node, "name")
        if name is None:
            return None
        lowered = name.lower()
        if not _REPOSITORY.fullmatch(lowered):
            self.r.error(
                name_node,
                f"'{name}' is not a valid image name: use lowercase letters, digits and"
                " separators (. _ -), with / between path components",
            )
            return None
        return lowered

    def _context(self, node: Node, entries: Mapping[str, Node]) -> Path | None:
        context_node = entries.get("context")
        text = self.r.string(context_node, "context") if context_node is not None else "."
        if text is None:
            return None
        context = (self.root / text).resolve()
        if not context.is_dir():
            self.r.error(context_node or node, f"build context '{text}' is not a folder")
            return None
        return context

    def _check_dockerfile(self, node: Node, context: Path, dockerfile: str) -> None:
        if not (context / dockerfile).is_file():
            self.r.error(node, f"no Dockerfile at '{dockerfile}' in context {context}")

    def _platform(self, node: Node) -> str | None:
        text = self.r.string(node, "platform")
        if text is not None and not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?", text):
            self.r.error(node, f"platform '{text}' must look like linux/amd64 or linux/arm64/v8")
            return None
        return text

    def _release(self, node: Node | None) -> str:
        if node is None:
            return DEFAULT_RELEASE_PATTERN
        entries = self.r.mapping(node, "release", ("tag_pattern",))
        if not entries or "tag_pattern" not in entries:
            if entries is not None:
                self.r.error(node, "release needs a `tag_pattern`")
            return DEFAULT_RELEASE_PATTERN
        pattern_node = entries["tag_pattern"]
        pattern = self.r.string(pattern_node, "tag_pattern")
        if pattern is None:
            return DEFAULT_RELEASE_PATTERN
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            self.r.error(pattern_node, f"tag_pattern is not a valid regular expression: {exc}")
            return DEFAULT_RELEASE_PATTERN
        if compiled.groups and "version" not in compiled.groupindex and compiled.groups != 1:
            self.r.error(
                pattern_node,
                "tag_pattern has several groups: name the version one (?P<version>...)",
            )
        return pattern

    def _check_templates(
        self,
        node: Node | None,
        what: str,
        values: Mapping[str, str],
        names: frozenset[str] = TEMPLATE_NAMES,
    ) -> None:
        if node is None:
            return
        for key, value in values.items():
            problem = template_problem(value, names)
            if problem:
                self.r.error(node, f"{what} '{key}': {problem}")

    # -- registries --------------------------------------------------------------------

    def _registries(self, node: Node | None, image_node: Node) -> tuple[Registry, ...] | None:
        if node is None:
            self.r.error(image_node, "no registries for this image: add `registries:`")
            return None
        items = self.r.sequence(node, "registries")
        if items is None:
            return None
        if not items:
            self.r.error(node, "`registries` is empty")
            return None
        registries = [self._registry(item) for item in items]
        if any(reg is None for reg in registries):
            return None
        result = tuple(reg for reg in registries if reg is not None)
        seen: set[str] = set()
        for item, reg in zip(items, result, strict=True):
            if reg.url in seen:
                self.r.error(item, f"registry '{reg.url}' is listed twice")
            seen.add(reg.url)
        return result

    def _registry(self, node: Node) -> Registry | None:
        r = self.r
        if is_null(node) or isinstance(node, MappingNode):
            entries = r.mapping(node, "a registry", _REGISTRY_KEYS)
            if entries is None:
                return None
            if "url" not in entries:
                r.error(node, "a registry needs a `url`")
                return None
            url = self._registry_url(entries["url"])
            password_env = r.field(entries, "password_env", self._env_name, None)
            username = r.field(
                entries, "username", lambda n: r.string(n, "username", allow_empty=True), None
            )
            if password_env and "username" not in entries:
                r.error(node, "`password_env` needs a `username` too")
            ca_file = r.field(
                entries, "ca_file", lambda n: self.r.existing_file(n, "ca_file"), None
            )
            insecure = r.field(entries, "insecure", lambda n: r.boolean(n, "insecure"), False)
        else:
            url = self._registry_url(node)
            username = password_env = None
            ca_file = None
            insecure = False
        if url is None:
            return None
        host, _, namespace = url.partition("/")
        return Registry(
            url=url,
            host=host,
            namespace=namespace,
            username=username or None,
            password_env=password_env,
            insecure=insecure,
            ca_file=ca_file,
            location=r.loc(node),
        )

    def _registry_url(self, node: Node) -> str | None:
        text = self.r.string(node, "registry url")
        if text is None:
            return None
        if "://" in text:
            self.r.error(
                node,
                f"registry url '{text}' has a scheme: write the host and namespace only"
                f" (e.g. '{text.split('://', 1)[1]}'); use `insecure: true` for plain HTTP",
            )
            return None
        text = text.strip("/")
        first, _, rest = text.partition("/")
        if not ("." in first or ":" in first or first == "localhost"):
            first, rest = "docker.io", text  # a bare namespace is on Docker Hub, as in docker
        if not _HOST.fullmatch(first):
            self.r.error(node, f"'{first}' is not a valid registry host")
            return None
        if rest and not _REPOSITORY.fullmatch(rest.lower()):
            self.r.error(node, f"'{rest}' is not a valid namespace for registry {first}")
            return None
        return f"{first.lower()}/{rest.lower()}" if rest else first.lower()

    def _env_name(self, node: Node) -> str | None:
        text = self.r.string(node, "password_env")
        if text is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
            self.r.error(
                node,
                "password_env names an environment variable (like REGISTRY_TOKEN);"
                " never write the secret itself in the spec",
            )
            return None
        return text

    # -- tags and flavor ---------------------------------------------------------------

    def _tag_rules(self, node: Node) -> tuple[TagRule, ...] | None:
        items = self.r.sequence(node, "tags")
        if items is None:
            return None
        rules = [self._tag_rule(item) for item in items]
        if any(rule is None for rule in rules):
            return None
        return tuple(rule for rule in rules if rule is not None)

    def _tag_rule(self, node: Node) -> TagRule | None:
        r = self.r
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
                    _unknown(key, f"a '{rule_type}' tag rule", allowed),
                )
                ok = False
        loc = r.loc(node)
        names = SEMVER_NAMES if rule_type == "semver" else TEMPLATE_NAMES

        def text(key: str, *, allow_empty: bool = False, template: bool = True) -> str | None:
            value_node = entries.get(key)
            if value_node is None:
                return None
            value = r.string(value_node, key, allow_empty=allow_empty)
            problem = template_problem(value, names) if value is not None and template else None
            if problem:
                r.error(value_node, f"{key}: {problem}")
            return value

        rule = TagRule(
            type=rule_type,
            location=loc,
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
        )
        return self._check_rule(node, rule) if ok else None

    def _check_rule(self, node: Node, rule: TagRule) -> TagRule | None:
        r = self.r
        if rule.type == "ref" and rule.event is None:
            r.error(node, "a 'ref' tag rule needs `event: branch`, `event: tag` or `event: pr`")
            return None
        if rule.type == "raw" and rule.value is None:
            r.error(node, "a 'raw' tag rule needs a `value`")
            return None
        if rule.type == "match":
            if rule.pattern is None:
                r.error(node, "a 'match' tag rule needs a `pattern` (a regular expression)")
                return None
            try:
                compiled = re.compile(rule.pattern)
            except re.error as exc:
                r.error(node, f"pattern is not a valid regular expression: {exc}")
                return None
            group = int(rule.group) if rule.group.isdigit() else rule.group
            if (isinstance(group, int) and group > compiled.groups) or (
                isinstance(group, str) and group not in compiled.groupindex
            ):
                r.error(node, f"pattern has no group {rule.group}")
                return None
        if rule.type == "ref" and rule.event == "pr" and rule.prefix is None:
            return _replace_prefix(rule, "pr-")
        if rule.type == "sha" and rule.prefix is None:
            return _replace_prefix(rule, "sha-")
        return rule

    def _flavor(self, section: _Section) -> Flavor:
        r = self.r
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

    # -- scan, sign, push ----------------------------------------------------------------

    def _merge(self, key: str, top: Mapping[str, Node], image: Mapping[str, Node]) -> _Section:
        """Top-level and image-level mapping sections, merged key by key (image wins)."""
        allowed = {
            "flavor": _FLAVOR_KEYS,
            "scan": _SCAN_KEYS,
            "sign": _SIGN_KEYS,
            "push": _PUSH_KEYS,
        }[key]
        section = _Section()
        for node in (top.get(key), image.get(key)):
            if node is None:
                continue
            if is_bool(node) and key in ("scan", "sign"):
                on = self.r.boolean(node, key)
                section.disabled = not on
                section.present = section.present or bool(on)
                if not on:
                    section.entries = {}
                continue
            if is_null(node):  # `scan:` with nothing under it means "on, with defaults"
                section.present, section.disabled = True, False
                continue
            entries = self.r.mapping(node, key, allowed)
            if entries is not None:
                section.entries.update(entries)
                section.present, section.disabled = True, False
        return section

    def _scan(self, section: _Section) -> ScanPolicy | None:
        if not section.present or section.disabled:
            return None
        r = self.r
        e = section.entries
        ignore_node = e.get("ignorefile")
        if ignore_node is not None:
            ignorefile = self.r.existing_file(ignore_node, "ignorefile")
        else:
            default = self.root / ".trivyignore"
            ignorefile = default if default.is_file() else None
        return ScanPolicy(
            fail_on=r.field(
                e, "fail_on", lambda n: r.choice(n, "fail_on", (*SEVERITIES, "never")), "HIGH"
            ),
            ignore_unfixed=r.field(
                e, "ignore_unfixed", lambda n: r.boolean(n, "ignore_unfixed"), False
            ),
            scanners=r.field(e, "scanners", self._scanners, ("vuln", "secret")),
            ignorefile=ignorefile,
            ignorefile_explicit=ignore_node is not None,
            reports=r.field(e, "reports", self._reports, Reports()),
            timeout=r.field(e, "timeout", self._duration, 600),
            db_repository=r.field(
                e, "db_repository", lambda n: r.string_list(n, "db_repository"), ()
            ),
            cache_dir=r.field(e, "cache_dir", lambda n: self.r.path(n, "cache_dir"), None),
            skip_db_update=r.field(
                e, "skip_db_update", lambda n: r.boolean(n, "skip_db_update"), False
            ),
            sbom=r.field(e, "sbom", lambda n: r.choice(n, "sbom", ("cyclonedx",)), None),
        )

    def _scanners(self, node: Node) -> tuple[str, ...] | None:
        values = self.r.string_list(node, "scanners")
        if values is None:
            return None
        for value in values:
            if value not in SCANNERS:
                self.r.error(node, f"unknown scanner '{value}' (scanners: {', '.join(SCANNERS)})")
                return None
        if not values:
            self.r.error(node, "scanners is empty: write `scan: false` to turn scanning off")
            return None
        return tuple(dict.fromkeys(values))

    def _reports(self, node: Node) -> Reports | None:
        entries = self.r.mapping(node, "reports", ("json", "sarif", "gitlab"))
        if entries is None:
            return None
        paths = {key: self.r.path(value, f"reports.{key}") for key, value in entries.items()}
        return Reports(json=paths.get("json"), sarif=paths.get("sarif"), gitlab=paths.get("gitlab"))

    def _duration(self, node: Node) -> int | None:
        text = self.r.string(node, "timeout")
        if text is None:
            return None
        if text.isdigit():
            return int(text)
        match = _DURATION.fullmatch(text)
        if not match or not any(match.groups()):
            self.r.error(node, f"timeout '{text}' must be seconds or a duration like 10m or 1h30m")
            return None
        hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return hours * 3600 + minutes * 60 + seconds

    def _sign(self, section: _Section) -> SignPolicy | None:
        if not section.present or section.disabled:
            return None
        r = self.r
        e = section.entries
        no_strings: dict[str, str] = {}
        annotations = r.field(
            e, "annotations", lambda n: r.string_map(n, "annotations"), no_strings
        )
        self._check_templates(e.get("annotations"), "annotation", annotations)
        return SignPolicy(
            key=r.field(e, "key", self._key, None),
            format=r.field(
                e, "format", lambda n: r.choice(n, "format", ("bundle", "legacy")), "bundle"
            ),
            tlog=r.field(e, "tlog", lambda n: r.boolean(n, "tlog"), True),
            annotations=annotations,
            attest_sbom=r.field(e, "attest_sbom", lambda n: r.boolean(n, "attest_sbom"), False),
            identity=r.field(e, "identity", lambda n: r.string(n, "identity"), None),
            oidc_issuer=r.field(e, "oidc_issuer", lambda n: r.string(n, "oidc_issuer"), None),
        )

    def _key(self, node: Node) -> str | None:
        text = self.r.string(node, "key", allow_empty=True)
        if not text:  # `key: ${COSIGN_KEY:-}` left empty means keyless
            return None
        if text.startswith("env://"):
            if not re.fullmatch(r"env://[A-Za-z_][A-Za-z0-9_]*", text):
                self.r.error(
                    node, f"key '{text}' must name a variable, like env://COSIGN_PRIVATE_KEY"
                )
                return None
            return text
        if text.startswith(_KMS_SCHEMES):
            return text
        if "://" in text:
            self.r.error(
                node,
                f"key '{text}' has an unknown scheme; use a file, env://VAR, or one of"
                f" {', '.join(s.rstrip('/') for s in _KMS_SCHEMES)}",
            )
            return None
        if "BEGIN" in text and "PRIVATE KEY" in text:
            self.r.error(node, "never write a private key in the spec: use env://VAR or a file")
            return None
        path = self.r.existing_file(node, "key")
        return str(path) if path else None

    def _push(self, section: _Section) -> PushPolicy:
        r = self.r
        e = section.entries
        return PushPolicy(
            parallel=r.field(
                e, "parallel", lambda n: r.integer(n, "parallel", minimum=1, maximum=32), 4
            ),
            retries=r.field(
                e, "retries", lambda n: r.integer(n, "retries", minimum=0, maximum=10), 3
            ),
        )


# -- helpers ---------------------------------------------------------------------------


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


def _replace_prefix(rule: TagRule, prefix: str) -> TagRule:
    return replace(rule, prefix=prefix)


def _unknown(key: str, what: str, allowed: tuple[str, ...]) -> str:
    return unknown_key_message(key, what, allowed)
