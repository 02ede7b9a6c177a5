"""One leg of a distributed build (DESIGN section 9): stored by digest, never signed or tagged.

A leg's plan (`legs.leg_plan`) holds one image, built for one of its platforms. `execute`
builds, scans and exports it as for any run (as an OCI manifest, which the merge's index will
name); then `publish_leg` stores its blobs and its manifest by digest in every registry of
the image and, with `--leg-record`, the leg document too (`stages.leg_records`). Nothing is
signed and no tag moves: that is `shipit merge`'s job, once every platform is everywhere.

`leg_of` makes the leg document of a leg run's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipit.execute.prepare import Ready
from shipit.execute.publish import untagged_message
from shipit.execute.results import ImageResult, RunResult, RunState
from shipit.legs import Leg, LegScan, LegTarget
from shipit.plan import ImagePlan, Plan
from shipit.progress import showing
from shipit.stages import leg_records, push


def publish_leg(
    run: RunState,
    images: tuple[ImagePlan, ...],
    ready: Mapping[str, Ready],
    access: Mapping[str, Any],
) -> RunResult:
    """Store each leg's manifest by digest in every registry, then its record if asked."""
    for image in images:
        if "push" not in image.stages:
            run.update(image.name, status="ok")
            continue
        item = ready[image.name]
        with showing(item.transfer, run.console):
            targets = push.store(image, item.artifact, item.uploads, access, run.console)
        if all(t.complete for t in targets):
            run.update(image.name, targets=targets, status="stored")
            continue
        errors = [f"{t.registry}: {t.error}" for t in targets if t.error]
        run.update(image.name, targets=targets, status="failed", error="; ".join(errors))
    if any(run.results[i.name].status == "failed" for i in images):
        return run.finish("failed", untagged_message(run.results.values(), "a registry failed"))
    for image in images:
        if image.leg is None or not image.leg.record or "push" not in image.stages:
            continue
        leg = leg_of(run.plan, run.results[image.name], "success")
        problems = leg_records.store(image, leg, access, run.console)
        if problems:
            run.update(image.name, status="failed", error="; ".join(problems))
            return run.finish("failed", "; ".join(problems))
    return run.finish("success")


def leg_of(plan: Plan, result: ImageResult, status: str) -> Leg:
    """The leg document of one image of a leg run whose status is `status`."""
    image = next(i for i in plan.images if i.name == result.name)
    if image.leg is None:
        raise ValueError(f"image {image.name} was not built as a leg")  # a bug
    part = result.platforms[0] if result.platforms else None
    stored = {t.registry: t for t in result.targets}
    registries = []
    for target in image.targets:
        held = stored.get(target.registry)
        digest = held.digest if held is not None else None
        registries.append(
            LegTarget(
                registry=target.registry,
                repository=f"{target.host}/{target.repository}",
                digest=digest,
                size=part.size if part is not None and digest else None,
                error=held.error if held is not None else None,
            )
        )
    scan = result.scan
    pushed = all(t.digest for t in registries) and bool(registries)
    return Leg(
        image=image.name,
        platform=image.leg.platform,
        commit=str(plan.context.get("sha") or ""),
        version=image.version.text,
        status="skipped" if image.skipped else status,
        digest=part.digest if part is not None and pushed else None,
        media_type=part.media_type if part is not None else None,
        size=part.size if part is not None else None,
        registries=tuple(registries),
        scan=None
        if scan is None
        else LegScan(
            counts=scan.counts, blocked=scan.blocked, expired_ignores=scan.expired_ignores
        ),
        error=result.error,
    )
