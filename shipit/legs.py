"""Distributed builds (DESIGN section 9): the leg document, and what a merge checks of legs.

A leg is one platform of one multi-platform image, built, scanned and pushed by digest on a
runner of its own (`shipit run --image NAME --platform P --leg`), with no index, no signature
and no tag. It leaves a leg document (schema 1): the image, platform, commit and version, the
platform manifest's digest, media type and size, what each registry holds, and the scan's
counts. `shipit merge` reads the legs of every planned platform (from files, or from the
registries where `--leg-record` stored them under `record_tag`), checks them here, and only
then writes the index, signs and tags.

Pure: `leg_plan` narrows a plan to one leg; `Leg` reads and writes the document; `match`
pairs legs with the planned platforms and lists every missing, duplicate, foreign or failed
leg. Nothing here touches Docker, a registry or a file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from shipit.errors import EXIT_FAILED, ShipitError, UsageError
from shipit.plan import ImagePlan, LegPlan, Plan

LEG_SCHEMA: Final = 1
LEG_KIND: Final = "shipit-leg"
# the media type of the leg document when it is stored in a registry (an OCI artifact)
LEG_MEDIA_TYPE: Final = "application/vnd.shipit.leg.v1+json"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
_STATUSES: Final = ("success", "failed", "blocked", "interrupted", "skipped")


class LegsRefused(ShipitError):
    """The legs cannot be merged: each problem names the image, platform or leg (exit 1)."""

    exit_code = EXIT_FAILED

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        text = "; ".join(self.problems)
        super().__init__(
            f"the legs cannot be merged, nothing was tagged: {text}",
            hint="run the missing or failed legs again (same commit), then the merge",
        )


@dataclass(frozen=True, kw_only=True)
class LegTarget:
    """What one registry holds of a leg: its platform manifest, by digest."""

    registry: str  # as the spec names it
    repository: str  # host/repository
    digest: str | None
    size: int | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class LegScan:
    counts: Mapping[str, int]
    blocked: bool
    expired_ignores: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Leg:
    """One leg's document, as `--leg` writes it and `shipit merge` reads it."""

    image: str
    platform: str
    commit: str
    version: str
    status: str  # success | failed | blocked | interrupted | skipped
    digest: str | None = None  # the platform manifest, the same in every registry
    media_type: str | None = None
    size: int | None = None  # of the manifest, in bytes (what the index entry records)
    registries: tuple[LegTarget, ...] = ()
    scan: LegScan | None = None
    error: str | None = None
    source: str = field(default="", compare=False)  # where it was read, for messages

    @property
    def name(self) -> str:
        return self.source or f"the leg of {self.image} {self.platform}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": LEG_SCHEMA,
            "kind": LEG_KIND,
            "status": self.status,
            "error": self.error,
            "image": self.image,
            "platform": self.platform,
            "commit": self.commit,
            "version": self.version,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "registries": [
                {
                    "registry": t.registry,
                    "repository": t.repository,
                    "digest": t.digest,
                    "size": t.size,
                    "error": t.error,
                }
                for t in self.registries
            ],
            "scan": None
            if self.scan is None
            else {
                "counts": dict(self.scan.counts),
                "blocked": self.scan.blocked,
                "expired_ignores": list(self.scan.expired_ignores),
            },
        }

    @classmethod
    def from_json(cls, document: Any, source: str) -> Leg:
        """Read a leg document; ValueError names what is wrong (and `source`)."""
        return _read(document, source)


def is_leg_document(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") == LEG_KIND


def record_tag(commit: str, version: str, platform: str) -> str:
    """The tag a leg record has in a registry: the commit, the platform and the version, so
    that pipelines of one commit with different versions (a branch and its release tag) keep
    their legs apart. Made a valid tag (at most 128 characters)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{_slug(platform)}-{version}")
    tag = f"shipit-leg-{commit[:12]}-{safe}"
    if len(tag) > 128:
        tag = f"{tag[:119]}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}"
    return tag


def _slug(platform: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", platform)


# -- a leg's plan --------------------------------------------------------------------------


def leg_plan(plan: Plan, *, platform: str, record: bool) -> Plan:
    """`plan` narrowed to one leg: its one image, built for `platform` only, pushed by digest
    and neither signed nor tagged. Usage errors (exit 2) for what cannot be a leg."""
    if len(plan.images) != 1:
        names = ", ".join(i.name for i in plan.images)
        raise UsageError(f"--leg builds one image: name it with --image (this spec has {names})")
    [image] = plan.images
    if image.skipped:
        return plan  # e.g. a monorepo tag that releases another image: the leg does nothing
    check_distributed(image)
    if platform not in image.build.platforms:
        raise UsageError(
            f"image {image.name} does not list {platform} in `platforms`"
            f" (it lists {', '.join(image.build.platforms)})"
        )
    leg = LegPlan(
        platform=platform,
        platforms=image.build.platforms,
        record=record and "push" in image.stages,
    )
    narrowed = replace(
        image,
        build=replace(image.build, platforms=(platform,)),
        stages=tuple(s for s in image.stages if s != "sign"),
        leg=leg,
    )
    return replace(plan, images=(narrowed,))


def check_distributed(image: ImagePlan) -> None:
    """An image can be built in legs: it lists its platforms, and signs nothing a merge
    cannot sign (usage errors, exit 2)."""
    if not image.build.platforms:
        raise UsageError(
            f"image {image.name} lists no platforms: a distributed build needs"
            " `platforms: [...]` (or build it in one run, without --leg)"
        )
    policy = image.image.sign
    if policy is not None and policy.attest_sbom and "sign" in image.stages:
        raise UsageError(
            f"image {image.name}: sign.attest_sbom cannot be used with legs (each platform's"
            " SBOM stays on its runner); leave it out, or build every platform in one run"
        )


# -- the merge's checks --------------------------------------------------------------------


def match(
    images: Sequence[ImagePlan], legs: Sequence[Leg], commit: str
) -> dict[str, dict[str, Leg]]:
    """Each image's legs by platform, in the planned order; `LegsRefused` lists every missing,
    duplicate, foreign or failed leg at once."""
    wanted = {image.name: image for image in images}
    found: dict[str, dict[str, Leg]] = {name: {} for name in wanted}
    problems: list[str] = []
    for leg in legs:
        image = wanted.get(leg.image)
        problem = _foreign(leg, image, commit)
        if problem is None and image is not None:
            earlier = found[image.name].get(leg.platform)
            if earlier is not None:
                problem = (
                    f"image {leg.image} {leg.platform} has two legs: {earlier.name} and {leg.name}"
                )
            else:
                found[image.name][leg.platform] = leg
        if problem is not None:
            problems.append(problem)
    for image in images:
        for platform in image.build.platforms:
            if platform not in found[image.name]:
                problems.append(f"image {image.name}: no leg for {platform}")
    if problems:
        raise LegsRefused(problems)
    return {
        image.name: {p: found[image.name][p] for p in image.build.platforms} for image in images
    }


def _foreign(leg: Leg, image: ImagePlan | None, commit: str) -> str | None:
    """Why `leg` is not one of this merge's, or None."""
    if image is None:
        return f"{leg.name} is a leg of image {leg.image}, which this merge does not build"
    if leg.platform not in image.build.platforms:
        return (
            f"{leg.name} is a leg of {leg.platform}, which image {image.name} does not list"
            f" (it lists {', '.join(image.build.platforms)})"
        )
    if leg.commit != commit:
        return f"{leg.name} was built from commit {leg.commit[:12]}, not {commit[:12]} (this one)"
    if leg.version != image.version.text:
        return f"{leg.name} is of version {leg.version}, not {image.version.text} (this build's)"
    if leg.status != "success":
        reason = f": {leg.error}" if leg.error else ""
        return f"{leg.name} did not succeed ({leg.status}{reason})"
    if leg.digest is None:
        return f"{leg.name} pushed nothing (was it run with --no-push?)"
    return None


# -- reading a document --------------------------------------------------------------------


def _read(document: Any, source: str) -> Leg:
    where = source or "a leg document"
    if not isinstance(document, dict):
        raise ValueError(f"{where} is not a JSON object")
    if document.get("kind") != LEG_KIND:
        raise ValueError(f'{where} is not a leg document (no "kind": "{LEG_KIND}")')
    schema = document.get("schema")
    if schema != LEG_SCHEMA:
        raise ValueError(
            f"{where} has schema {schema!r}; this shipit reads schema {LEG_SCHEMA}"
            " (run the legs and the merge with the same shipit)"
        )
    status = _text(document, "status", where, choices=_STATUSES)
    digest = _optional(document, "digest", where, _DIGEST)
    scan = document.get("scan")
    return Leg(
        image=_text(document, "image", where),
        platform=_text(document, "platform", where, pattern=_PLATFORM),
        commit=_text(document, "commit", where, pattern=_COMMIT),
        version=_text(document, "version", where),
        status=status,
        digest=digest,
        media_type=_optional(document, "media_type", where),
        size=_size(document.get("size"), f"{where}: size"),
        registries=tuple(_target(t, where) for t in _list(document, "registries", where)),
        scan=None if scan is None else _scan(scan, where),
        error=_optional(document, "error", where),
        source=source,
    )


def _text(
    document: Mapping[str, Any],
    key: str,
    where: str,
    *,
    pattern: re.Pattern[str] | None = None,
    choices: Sequence[str] = (),
) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key} is missing or not a string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{where}: {key} {value!r} is not valid")
    if choices and value not in choices:
        raise ValueError(f"{where}: {key} is {value!r}, not one of {', '.join(choices)}")
    return value


def _optional(
    document: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str] | None = None
) -> str | None:
    if document.get(key) is None:
        return None
    return _text(document, key, where, pattern=pattern)


def _size(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} is not a size in bytes: {value!r}")
    return value


def _list(document: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} is not a list")
    return value


def _target(value: Any, where: str) -> LegTarget:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: an entry of registries is not an object")
    return LegTarget(
        registry=_text(value, "registry", where),
        repository=_text(value, "repository", where),
        digest=_optional(value, "digest", where, _DIGEST),
        size=_size(value.get("size"), f"{where}: a registry's size"),
        error=_optional(value, "error", where),
    )


def _scan(value: Any, where: str) -> LegScan:
    counts = value.get("counts") if isinstance(value, dict) else None
    if not isinstance(counts, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in counts.items()
    ):
        raise ValueError(f"{where}: scan.counts is not a table of counts")
    expired = value.get("expired_ignores") or []
    if not isinstance(expired, list) or not all(isinstance(e, str) for e in expired):
        raise ValueError(f"{where}: scan.expired_ignores is not a list of strings")
    return LegScan(
        counts=counts, blocked=bool(value.get("blocked")), expired_ignores=tuple(expired)
    )
