"""The run: one loop that drives the stages over a plan and collects what happened.

Order, and the guarantee it gives: preflight (signing set up, daemon and every registry
answer, credentials accepted) -> build and scan every image -> push every image -> sign
every pushed digest. Nothing is pushed unless every image built and passed the gate, so a
release publishes all of its images or none; a registry that fails during the push does not
stop the others, and the result says exactly which refs each registry got.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipit import proc
from shipit.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    GateBlocked,
    ShipitError,
    UsageError,
)
from shipit.log import Console, counted
from shipit.plan import ImagePlan, Plan
from shipit.stages.export import ExportedImage, ExportError, export_image
from shipit.stages.push import BlobUploads, push_image

if TYPE_CHECKING:
    from shipit.stages.push import TargetResult
    from shipit.stages.scan import ScanReport
    from shipit.stages.sign import SignResult


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    name: str
    version: str
    tags: tuple[str, ...]
    status: str  # ok | failed | blocked | not run | skipped
    image_id: str | None = None
    targets: tuple[TargetResult, ...] = ()
    scan: ScanReport | None = None
    signatures: tuple[SignResult, ...] = ()
    error: str | None = None

    def signed(self, digest_ref: str | None) -> bool:
        return any(s.ok and s.ref == digest_ref for s in self.signatures)


@dataclass(frozen=True, kw_only=True)
class RunResult:
    version: str | None
    images: tuple[ImageResult, ...]
    status: str  # success | failed | blocked | interrupted
    error: str | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def exit_code(self) -> int:
        return {
            "success": EXIT_OK,
            "blocked": EXIT_BLOCKED,
            "interrupted": EXIT_INTERRUPTED,
        }.get(self.status, EXIT_FAILED)


class _Run:
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

    def finish(self, status: str, error: str | None = None) -> RunResult:
        return RunResult(
            version=self.plan.version,
            images=tuple(self.results.values()),
            status=status,
            error=error,
            started=self.started,
        )


def execute(plan: Plan, env: Mapping[str, str], console: Console) -> RunResult:
    """Run every stage the plan lists; never raises for a stage failure, returns the result.

    Usage errors found before anything started (a missing signing key) still raise. Ctrl-C
    (or SIGTERM, which the command line turns into the same) stops every child process and
    ends the run as "interrupted"; every push is safe to repeat, so a second run finishes it.
    """
    run = _Run(plan, env, console)
    try:
        return _execute(run)
    except KeyboardInterrupt:
        proc.terminate_children()
        _mark_unfinished(run, "interrupted")
        return run.finish(
            "interrupted", "interrupted; pushes are safe to repeat: run again to finish"
        )


def _execute(run: _Run) -> RunResult:
    from shipit import docker_api  # noqa: PLC0415 (the Docker SDK is loaded only for a run)
    from shipit.stages import preflight  # noqa: PLC0415

    plan, env, console = run.plan, run.env, run.console
    images = plan.active()
    if not images:  # e.g. a monorepo tag that releases another image: nothing to do here
        console.write("no image of this spec is built for this ref")
        return run.finish("success")
    signers = _check_signing(images, env)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shipit-")))
        try:
            with console.group("preflight"):
                if any("scan" in image.stages for image in images):
                    from shipit.stages import scan  # noqa: PLC0415

                    scan.find_trivy(env)  # a missing scanner is found before the build
                daemon = stack.enter_context(docker_api.Daemon(env))
                preflight.check_daemon(daemon, console)
                access = preflight.open_registries(images, env, console)
                for item in access.values():
                    stack.callback(item.client.close)
                preflight.check_registries(images, access, console)
            ready = _build_all(
                run, images, daemon=daemon, access=access, workdir=workdir, stack=stack
            )
        except GateBlocked as exc:
            return run.finish("blocked", str(exc))
        except (docker_api.DaemonError, ExportError) as exc:
            _mark_unfinished(run, str(exc))
            return run.finish("failed", str(exc))
        except ShipitError as exc:
            _mark_unfinished(run, str(exc))
            return run.finish("failed", f"{exc}\nhint: {exc.hint}" if exc.hint else str(exc))
        return _publish(run, images, ready, access, signers)


@dataclass(frozen=True, kw_only=True)
class _Ready:
    """An image built, scanned and exported, its blobs on their way to the registries."""

    exported: ExportedImage
    uploads: BlobUploads


def _build_all(
    run: _Run,
    images: tuple[ImagePlan, ...],
    *,
    daemon: Any,
    access: Any,
    workdir: Path,
    stack: contextlib.ExitStack,
) -> dict[str, _Ready]:
    """Build and scan every image, then export the ones to push; no manifest is written yet."""
    from shipit.stages import build  # noqa: PLC0415

    builder = build.SdkBuilder(daemon)
    ready: dict[str, _Ready] = {}
    for image in images:
        run.update(image.name, status="building")
        built = builder.build(image, run.console)
        run.update(image.name, image_id=built.image_id, status="built")
        if "scan" in image.stages:
            _scan(run, image, built.local_ref, many=len(images) > 1)
        if "push" in image.stages:
            uploads = BlobUploads(image, access)
            stack.callback(uploads.close)
            with run.console.group(f"export {image.name}"):
                exported = export_image(
                    daemon.save(built.image_id),
                    built.image_id,
                    workdir / image.name,
                    on_layer=uploads.add_layer,
                )
                uploads.add_config(exported.config)
                run.console.write(
                    f"{counted(len(exported.layers), 'layer')} compressed once,"
                    f" manifest {exported.manifest.digest}; uploads started"
                )
            ready[image.name] = _Ready(exported=exported, uploads=uploads)
    return ready


def _publish(
    run: _Run,
    images: tuple[ImagePlan, ...],
    ready: Mapping[str, _Ready],
    access: Mapping[str, Any],
    signers: Mapping[str, Any],
) -> RunResult:
    """Push every image, then sign what every registry got."""
    env, console = run.env, run.console
    failed = False
    for image in images:
        if "push" not in image.stages:
            run.update(image.name, status="ok")
            continue
        item = ready[image.name]
        targets = push_image(image, item.exported, item.uploads, access, console)
        ok = all(t.ok for t in targets)
        failed = failed or not ok
        run.update(image.name, targets=targets, status="ok" if ok else "failed")
        if "sign" in image.stages:
            signatures = _sign(
                image=image,
                scan=run.results[image.name].scan,
                targets=targets,
                access=access,
                signer=signers[image.name],
                env=env,
                console=console,
            )
            run.update(image.name, signatures=signatures)
            if not all(s.ok for s in signatures):
                failed = True
                run.update(image.name, status="failed", error="signing failed")
    return run.finish("failed" if failed else "success")


def _mark_unfinished(run: _Run, error: str) -> None:
    """After a failure: the image being worked on failed; those not reached were not run."""
    for name, result in run.results.items():
        if result.status in ("building", "built"):
            run.update(name, status="failed", error=error)
        elif result.status == "not run":
            run.update(name, error=error)


def _check_signing(images: tuple[ImagePlan, ...], env: Mapping[str, str]) -> dict[str, Any]:
    """Decide how each image will be signed before anything is built (errors exit 2)."""
    signers: dict[str, Any] = {}
    for image in images:
        policy = image.image.sign
        if "sign" not in image.stages or policy is None:
            continue
        from shipit.stages import sign  # noqa: PLC0415 (only runs that sign need it)

        signers[image.name] = sign.check_signing(policy, env)
        sign.check_annotations(image.annotations)
        scan_policy = image.image.scan
        if policy.attest_sbom and (scan_policy is None or scan_policy.sbom is None):
            raise UsageError(
                f"image {image.name}: sign.attest_sbom needs an SBOM: set scan.sbom: cyclonedx"
            )
    return signers


def _scan(run: _Run, image: ImagePlan, local_ref: str, *, many: bool) -> None:
    from shipit.stages import scan  # noqa: PLC0415

    policy = image.image.scan
    if policy is None:
        return
    report = scan.scan_image(
        local_ref,
        policy,
        env=run.env,
        console=run.console,
        label=f"{image.name} {image.version.text}",
        report_suffix=image.name if many else None,
        root=Path(run.plan.spec).parent,
    )
    run.update(image.name, scan=report)
    if report.blocked:
        run.update(image.name, status="blocked", error="the scan gate blocked the release")
        run.console.write(scan.blocking_text(report))
        raise GateBlocked(
            f"image {image.name}: {counted(len(report.blocking), 'finding')} at or above"
            f" {policy.fail_on}; nothing was pushed"
        )


def _sign(
    *,
    image: ImagePlan,
    scan: ScanReport | None,
    targets: tuple[TargetResult, ...],
    access: Mapping[str, Any],
    signer: Any,
    env: Mapping[str, str],
    console: Console,
) -> tuple[SignResult, ...]:
    from shipit.stages import sign  # noqa: PLC0415

    policy = image.image.sign
    if policy is None:
        return ()
    sign_targets = []
    for target in targets:
        ref = target.digest_ref()
        if ref is None or not target.pushed:
            continue
        registry = access[target.registry].registry
        credentials = access[target.registry].credentials
        sign_targets.append(
            sign.SignTarget(
                ref=ref,
                insecure=registry.insecure,
                ca_file=registry.ca_file,
                username=credentials.username if credentials else None,
                password=credentials.password if credentials else None,
            )
        )
    if not sign_targets:
        return ()
    parallel = image.image.push.parallel
    results = sign.sign_all(
        signer, sign_targets, policy, image.annotations, env=env, console=console, parallel=parallel
    )
    sbom = scan.sbom if scan is not None else None
    if policy.attest_sbom and sbom is not None:
        signed = [t for t, r in zip(sign_targets, results, strict=True) if r.ok]
        attested = sign.attest_all(
            signer, signed, policy, sbom, env=env, console=console, parallel=parallel
        )
        failures = {r.ref: r for r in attested if not r.ok}
        results = [failures.get(r.ref, r) for r in results]
    return tuple(results)
