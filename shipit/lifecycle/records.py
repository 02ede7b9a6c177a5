"""The records `shipit prune` works with: what a repository holds, and what to do with it.

`Holdings` is one repository as the inventory read it: its tags, every manifest found
through them (images, indexes and their platform manifests, signatures, attestations, SBOMs
and other referrers) and what is attached to what. `Action` is one row of the decision
(keep, delete or untag, and the rule that decided it); `RepositoryPlan` the decision for one
repository of one registry, and `PrunePlan` all of them, as JSON that `--plan FILE` reads
back. Nothing here talks to a registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

PLAN_SCHEMA: Final = 1

# cosign's tags next to an image: `sha256-<hex>.sig` (signatures), `.att` (attestations),
# `.sbom` (`cosign attach sbom`), and the OCI referrers tag `sha256-<hex>` (the fallback of
# registries without the referrers API, where cosign 3 puts its bundles).
ARTIFACT_TAG = re.compile(
    r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]{64,128})(?:\.(?P<kind>sig|att|sbom))?"
)
ARTIFACT_KINDS: Final = {
    "sig": "signature",
    "att": "attestation",
    "sbom": "sbom",
    None: "referrers index",
}
ACTIONS: Final = ("keep", "delete", "untag")


def tag_subject(tag: str) -> tuple[str, str] | None:
    """(subject digest, kind) for an artifact tag like `sha256-<hex>.sig`; None for others."""
    match = ARTIFACT_TAG.fullmatch(tag)
    if match is None:
        return None
    return f"{match['algorithm']}:{match['hex']}", ARTIFACT_KINDS[match["kind"]]


def artifact_tags(digest: str) -> tuple[str, ...]:
    """The artifact tags a digest may have: referrers index, signature, attestation, SBOM."""
    base = digest.replace(":", "-", 1)
    return (base, f"{base}.sig", f"{base}.att", f"{base}.sbom")


@dataclass(frozen=True, kw_only=True)
class Node:
    """One manifest of the repository."""

    digest: str
    media_type: str
    children: tuple[str, ...] = ()  # an index's manifests
    created: datetime | None = None  # an image's creation; an index's newest platform's
    subject: str | None = None  # the manifest this one is attached to (OCI `subject`)


@dataclass(frozen=True, kw_only=True)
class Holdings:
    """What one repository holds, as far as tags, indexes and referrers lead."""

    registry: str  # the spec's registry url
    host: str
    repository: str
    tags: Mapping[str, str]  # tag -> digest
    nodes: Mapping[str, Node]
    attached: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # subject -> artifacts
    missing: frozenset[str] = frozenset()  # subjects that artifact tags name but are gone
    referrers_api: bool = False


@dataclass(frozen=True, kw_only=True)
class Action:
    """One row of the decision: what happens to a digest (or to one tag of a kept digest)."""

    digest: str
    tags: tuple[str, ...]  # the digest's tags; for `untag`, the tag that goes
    kind: str  # image, index, platform, untagged, signature, attestation, sbom, referrers index,
    # referrer (a manifest with a `subject`, such as a cosign 3 bundle), tag (for `untag`)
    action: str  # keep | delete | untag
    rule: str  # what decided
    created: datetime | None = None
    subject: str | None = None  # the index of a platform, the image of a signature

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "tags": list(self.tags),
            "kind": self.kind,
            "created": _time(self.created),
            "action": self.action,
            "rule": self.rule,
            "subject": self.subject,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Action:
        action = str(data["action"])
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        return cls(
            digest=str(data["digest"]),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            kind=str(data.get("kind") or "image"),
            action=action,
            rule=str(data.get("rule") or ""),
            created=parse_time(data.get("created")),
            subject=str(data["subject"]) if data.get("subject") else None,
        )


@dataclass(frozen=True, kw_only=True)
class RepositoryPlan:
    """The decision for one repository of one registry, with the tags it was made on."""

    image: str
    registry: str
    host: str
    repository: str
    tags: Mapping[str, str]  # tag -> digest when the plan was made
    actions: tuple[Action, ...]
    error: str | None = None  # the inventory failed: nothing is done here
    warnings: tuple[str, ...] = ()  # keep rules that picked no tag, where something goes
    api: str = "registry"  # how deletes are done: registry | github | gitlab | dockerhub
    blocked: str | None = None  # why deletes cannot work there, as far as a read can tell

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repository}"

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "registry": self.registry,
            "repository": self.ref,
            "tags": dict(self.tags),
            "actions": [a.to_json() for a in self.actions],
            "error": self.error,
            "warnings": list(self.warnings),
            "api": self.api,
            "blocked": self.blocked,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RepositoryPlan:
        host, _, repository = str(data["repository"]).partition("/")
        return cls(
            image=str(data["image"]),
            registry=str(data["registry"]),
            host=host,
            repository=repository,
            tags={str(k): str(v) for k, v in dict(data.get("tags") or {}).items()},
            actions=tuple(Action.from_json(a) for a in data.get("actions") or ()),
            error=str(data["error"]) if data.get("error") else None,
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            api=str(data.get("api") or "registry"),
            blocked=str(data["blocked"]) if data.get("blocked") else None,
        )


@dataclass(frozen=True, kw_only=True)
class PrunePlan:
    """Every repository's decision: what `shipit prune` prints and `--apply` carries out."""

    spec: str
    made: datetime
    repositories: tuple[RepositoryPlan, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "spec": self.spec,
            "made": _time(self.made),
            "repositories": [r.to_json() for r in self.repositories],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrunePlan:
        if data.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"not a prune plan of schema {PLAN_SCHEMA}")
        made = parse_time(data.get("made"))
        if made is None:
            raise ValueError("the plan does not say when it was made")
        return cls(
            spec=str(data.get("spec") or ""),
            made=made,
            repositories=tuple(RepositoryPlan.from_json(r) for r in data["repositories"]),
        )


def short(digest: str) -> str:
    """`sha256:` and the first 12 hex digits, for messages and tables."""
    return digest[:19]


def short_tag(tag: str) -> str:
    """An artifact tag with its digest shortened (`sha256-1a2b3c4d5e6f….sig`), for tables."""
    match = ARTIFACT_TAG.fullmatch(tag)
    if match is None:
        return tag
    kind = f".{match['kind']}" if match["kind"] else ""
    return f"{match['algorithm']}-{match['hex'][:12]}…{kind}"


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (`2024-03-01T12:00:00Z`, fractions and offsets too), or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Go writes nanoseconds; Python reads at most microseconds
        digits = re.match(r"\d*", rest)
        fraction = digits.group(0) if digits else ""
        text = f"{head}.{fraction[:6] or '0'}{rest[len(fraction) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
