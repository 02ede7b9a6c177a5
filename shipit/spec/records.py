"""The spec's records: frozen, keyword-only values that everything downstream reads.

Also the vocabularies the spec draws on (stages, severities, scanners, tag rule types, the
names a template may read). Nothing here reads YAML; the section readers build these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shipit.errors import Location, UsageError

SPEC_VERSION: Final = 1
STAGES: Final = ("build", "scan", "push", "sign")
SEVERITIES: Final = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
SCANNERS: Final = ("vuln", "secret", "misconfig", "license")
TAG_TYPES: Final = ("semver", "pep440", "ref", "sha", "schedule", "edge", "match", "raw")
REF_EVENTS: Final = ("branch", "tag", "pr")

# Names every template may read (DESIGN section 3). `semver` patterns also get `raw`.
TEMPLATE_NAMES: Final = frozenset(
    {
        "version", "major", "minor", "patch", "prerelease", "is_release", "is_prerelease",
        "sha", "sha_short", "branch", "branch_slug", "tag", "pr", "event",
        "is_default_branch", "build_number", "date", "now", "env", "image", "range",
        "true", "false",
    }
)  # fmt: skip
SEMVER_NAMES: Final = TEMPLATE_NAMES | {"raw"}

DEFAULT_RELEASE_PATTERN: Final = r"v?(?P<version>\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)"

# The priorities docker/metadata-action gives each rule type: higher comes first.
DEFAULT_PRIORITY: Final = {
    "schedule": 1000,
    "semver": 900,
    "pep440": 900,
    "match": 800,
    "edge": 700,
    "ref": 600,
    "raw": 200,
    "sha": 100,
}

# -- the records ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Registry:
    """A place images go: a registry host plus an optional namespace."""

    url: str  # host[/namespace], normalised to lowercase
    host: str
    namespace: str
    username: str | None = None
    password_env: str | None = None
    insecure: bool = False
    ca_file: Path | None = None
    api: str | None = None  # how prune deletes: github | gitlab | dockerhub | registry
    api_url: str | None = None  # that API's base URL
    location: Location | None = field(default=None, compare=False)

    def repository(self, image_name: str) -> str:
        return f"{self.namespace}/{image_name}" if self.namespace else image_name

    def image(self, image_name: str) -> str:
        return f"{self.host}/{self.repository(image_name)}"


@dataclass(frozen=True, kw_only=True)
class TagRule:
    """One rule of DESIGN section 3. Which fields matter depends on `type`."""

    type: str
    location: Location
    enable: str | None = None
    priority: int = 0
    prefix: str | None = None
    suffix: str | None = None
    pattern: str | None = None
    value: str | None = None
    event: str | None = None
    format: str = "short"
    length: int = 7
    group: str = "0"
    branch: str | None = None
    latest: bool = False  # this rule's tag brings `latest` along (not a prerelease's)

    def describe(self) -> str:
        extra = f" event={self.event}" if self.event else ""
        return f"tag rule '{self.type}{extra}' at {self.location}"


@dataclass(frozen=True, kw_only=True)
class Flavor:
    latest: str = "auto"  # auto | true | false
    prefix: str = ""
    suffix: str = ""
    prefix_on_latest: bool = False
    suffix_on_latest: bool = False
    floating: str = "auto"  # auto (never backwards) | always


@dataclass(frozen=True, kw_only=True)
class Reports:
    json: Path | None = None
    sarif: Path | None = None
    gitlab: Path | None = None


@dataclass(frozen=True, kw_only=True)
class ScanPolicy:
    fail_on: str = "HIGH"  # a severity, or "never"
    ignore_unfixed: bool = False
    scanners: tuple[str, ...] = ("vuln", "secret")
    ignorefile: Path | None = None
    ignorefile_explicit: bool = False
    reports: Reports = field(default_factory=Reports)
    timeout: int = 600  # seconds
    db_repository: tuple[str, ...] = ()
    cache_dir: Path | None = None
    skip_db_update: bool = False
    sbom: str | None = None  # cyclonedx


@dataclass(frozen=True, kw_only=True)
class SignPolicy:
    key: str | None = None  # a file, env://VAR, or a KMS URI; None = keyless
    format: str = "bundle"  # bundle (cosign 3 default) | legacy (.sig tags, cosign 2 / Kyverno)
    tlog: bool = True
    annotations: Mapping[str, str] = field(default_factory=dict)
    attest_sbom: bool = False
    identity: str | None = None  # keyless verification: certificate identity (regexp)
    oidc_issuer: str | None = None
    signing_config: Path | None = None  # cosign --signing-config: the Sigstore services to use
    trusted_root: Path | None = None  # cosign --trusted-root: those services' keys and CAs
    rekor_url: str | None = None  # a Rekor of one's own, without a signing config
    timeout: int = 300  # seconds for each `cosign sign` / `cosign attest`
    # SLSA provenance attested to every digest: off | on (build args by name) | max (values too)
    provenance: str = "on"


@dataclass(frozen=True, kw_only=True)
class PushPolicy:
    parallel: int = 4
    retries: int = 3


@dataclass(frozen=True, kw_only=True)
class KeepRule:
    """One rule of `retention.keep`: the tags it picks, and the limits they must all pass.

    It picks the tags that `tags` (a regular expression searched in the tag, as grep does) and
    `semver` (the tag is a semantic version, with or without a `v`) allow; no limit keeps
    all of them. `newest` keeps the tags of the N newest images, by creation time;
    `newest_per_minor` / `newest_per_major` the N highest versions of each minor / major
    line; `younger_than` (seconds) the images created since.
    """

    text: str  # the rule as the report shows it: "{semver: true, newest_per_minor: 3}"
    location: Location | None = field(default=None, compare=False)
    tags: str | None = None
    semver: bool = False
    newest: int | None = None
    newest_per_minor: int | None = None
    newest_per_major: int | None = None
    younger_than: int | None = None


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """`retention:`: what `shipit prune` keeps; the rules are OR'ed, on image digests."""

    keep: tuple[KeepRule, ...]
    untagged: str = "delete"  # delete | keep: manifests that no tag or kept image refers to


@dataclass(frozen=True, kw_only=True)
class BuildSecret:
    """A build secret by reference: the variable or file BuildKit reads, never the value."""

    id: str
    env: str | None = None
    file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """The engine and the BuildKit keys of DESIGN section 8."""

    engine: str = "sdk"  # sdk | buildx | buildah
    engine_default: bool = False  # the spec names no engine: sdk, or buildx where it is better
    builder: str | None = None  # buildx: a builder name or docker context
    platforms: tuple[str, ...] = ()  # empty: the builder's own platform
    secrets: tuple[BuildSecret, ...] = ()
    ssh: tuple[str, ...] = ()
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    network: str | None = None  # default | none | host
    no_cache: bool = False
    isolation: str | None = None  # buildah: chroot | oci | rootless


@dataclass(frozen=True, kw_only=True)
class Image:
    name: str  # lowercased repository name, appended to each registry url
    location: Location
    context: Path
    dockerfile: str = "Dockerfile"
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    pull: bool = False
    build: BuildOptions = field(default_factory=BuildOptions)
    release_pattern: str = DEFAULT_RELEASE_PATTERN
    tags: tuple[TagRule, ...] = ()
    default_tags: bool = True
    flavor: Flavor = field(default_factory=Flavor)
    registries: tuple[Registry, ...] = ()
    scan: ScanPolicy | None = None
    sign: SignPolicy | None = None
    push: PushPolicy = field(default_factory=PushPolicy)
    retention: RetentionPolicy | None = None  # None: `shipit prune` leaves the image alone

    def release_regex(self) -> re.Pattern[str]:
        return re.compile(self.release_pattern)


@dataclass(frozen=True, kw_only=True)
class Spec:
    path: Path
    root: Path  # the folder the spec's relative paths start from
    version: int
    images: tuple[Image, ...]

    def image(self, name: str) -> Image:
        for image in self.images:
            if image.name == name.lower():
                return image
        known = ", ".join(i.name for i in self.images)
        raise UsageError(f"no image named '{name}' in {self.path} (images: {known})")
