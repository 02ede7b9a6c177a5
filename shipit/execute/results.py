"""What a run found out, image by image: frozen results, replaced as the stages finish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shipit.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from shipit.log import Console
from shipit.plan import Plan, Source

if TYPE_CHECKING:
    from shipit.registry import Manifest
    from shipit.stages.push import TargetResult
    from shipit.stages.scan import ScanReport
    from shipit.stages.sign import SignResult


@dataclass(frozen=True, kw_only=True)
class PlatformResult:
    """One platform of an image: what it is called and the digest of its manifest."""

    platform: str | None
    digest: str | None = None
    media_type: str | None = None  # of the manifest
    size: int | None = None  # of the manifest, in bytes

    @classmethod
    def of(cls, platform: str | None, manifest: Manifest) -> PlatformResult:
        return cls(
            platform=platform,
            digest=manifest.digest,
            media_type=manifest.media_type,
            size=len(manifest.data),
        )


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    name: str
    version: str
    tags: tuple[str, ...]
    status: str  # ok | failed | blocked | not run | skipped | building | built | stored
    image_id: str | None = None
    digest: str | None = None  # what the tags point at: the index, or the one manifest
    platforms: tuple[PlatformResult, ...] = ()
    targets: tuple[TargetResult, ...] = ()
    scans: tuple[ScanReport, ...] = ()  # one per platform scanned
    signatures: tuple[SignResult, ...] = ()
    attestations: tuple[SignResult, ...] = ()  # the SLSA provenance, one per digest ref
    error: str | None = None

    @property
    def scan(self) -> ScanReport | None:
        """The one scan of a one-platform image (several platforms: see `scans`)."""
        return self.scans[0] if len(self.scans) == 1 else None

    def signed(self, digest_ref: str | None) -> bool:
        return any(s.ok and s.ref == digest_ref for s in self.signatures)

    def attested(self, digest_ref: str | None) -> bool:
        """The digest ref carries shipit's signed provenance attestation."""
        return any(a.ok and a.ref == digest_ref for a in self.attestations)

    def fully_signed(self, target: TargetResult) -> bool:
        """Every manifest this registry holds for the image (index and platforms) is signed."""
        refs = target.stored_refs()
        return bool(refs) and all(self.signed(ref) for ref in refs)


@dataclass(frozen=True, kw_only=True)
class RunResult:
    version: str | None
    images: tuple[ImageResult, ...]
    status: str  # success | failed | blocked | interrupted
    error: str | None = None
    source: Source | None = None  # the repository and commit built
    builder_id: str | None = None  # the provenance's runDetails.builder.id
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def exit_code(self) -> int:
        return {
            "success": EXIT_OK,
            "blocked": EXIT_BLOCKED,
            "interrupted": EXIT_INTERRUPTED,
        }.get(self.status, EXIT_FAILED)

    @property
    def tagged(self) -> bool:
        """Whether any tag was written anywhere."""
        return any(t.pushed for image in self.images for t in image.targets)


class RunState:
    """The state of one run: results so far, replaced image by image as stages finish."""

    def __init__(self, plan: Plan, env: Mapping[str, str], console: Console) -> None:
        self.plan = plan
        self.env = env
        self.console = console
        self.started = datetime.now(UTC)
        self.results: dict[str, ImageResult] = {
            image.name: ImageResult(
                name=image.name,
                version=image.version.text,
                tags=image.tags,
                status="skipped" if image.skipped else "not run",
                error=image.skipped,
            )
            for image in plan.images
        }

    def update(self, name: str, **changes: Any) -> None:
        self.results[name] = replace(self.results[name], **changes)

    def mark_unfinished(self, error: str) -> None:
        """After a failure: the image being worked on failed; those not reached were not run."""
        for name, result in self.results.items():
            if result.status in ("building", "built", "stored"):
                self.update(name, status="failed", error=error)
            elif result.status == "not run":
                self.update(name, error=error)

    def failed(self, exc: Exception) -> RunResult:
        """The run ends on `exc` (with its hint, when it has one); work not done is marked."""
        hint = getattr(exc, "hint", None)
        message = f"{exc}\nhint: {hint}" if hint else str(exc)
        self.mark_unfinished(str(exc))
        return self.finish("failed", message)

    def finish(self, status: str, error: str | None = None) -> RunResult:
        from shipit.stages.provenance import builder_id  # noqa: PLC0415

        return RunResult(
            version=self.plan.version,
            images=tuple(self.results.values()),
            status=status,
            error=error,
            source=self.plan.source,
            builder_id=builder_id(self.env),
            started=self.started,
        )
