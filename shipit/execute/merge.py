"""`shipit merge`: join the legs of a distributed build into one index, sign it, then tag.

Given the run's plan and its legs (read from files by the command line, or, when it names
none, found in the registries for this commit: `stages.leg_records`):

1. preflight: signing is set up, every registry answers and takes a push;
2. `legs.match`: a leg for every planned platform of every image, each of this commit and
   version, none twice, none failed or unpushed;
3. every registry holds every platform manifest (HEAD by digest); each is read back from the
   image's first registry and must be an image manifest whose config's revision label is
   the one this plan writes, so the images themselves, not only the legs, are of this commit;
4. the index of those manifests (`stages.assemble`, in the planned platform order, with the
   annotations a single run gives it), then `publish`: the index stored by digest
   everywhere (the platform manifests are put again, which changes nothing), every digest
   signed, then the tags.

A problem in steps 2 or 3 fails the merge (exit 1) with every problem named, and nothing is
tagged. The result is a run's result, so the report, the summary and the CI outputs are the
same as `shipit run` writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shipit import proc
from shipit.errors import ShipitError, UsageError
from shipit.execute import _check_signing
from shipit.execute.prepare import Ready
from shipit.execute.publish import publish
from shipit.execute.results import PlatformResult, RunResult, RunState
from shipit.legs import Leg, LegsRefused, check_distributed, match
from shipit.log import Console
from shipit.plan import OCI, ImagePlan, Plan
from shipit.progress import Transfer
from shipit.registry import IMAGE_MEDIA_TYPES, Manifest, RegistryError
from shipit.stages import leg_records, preflight
from shipit.stages.assemble import PlatformPart, image_index
from shipit.stages.build.images import BuiltImage, PlatformImage
from shipit.stages.push import Artifact, BlobUploads, PlatformExport
from shipit.stages.scan.findings import ScanReport

REVISION = f"{OCI}.revision"


def merge(
    plan: Plan, legs: Sequence[Leg] | None, env: Mapping[str, str], console: Console
) -> RunResult:
    """Merge `legs` (None: find them in the registries) as `plan` says; never raises for a
    refused leg or a registry's failure: the result says what happened."""
    run = RunState(plan, env, console)
    try:
        return _merge(run, legs)
    except KeyboardInterrupt:
        proc.terminate_children()
        run.mark_unfinished("interrupted")
        return run.finish("interrupted", "interrupted before every tag was written: merge again")


def _merge(run: RunState, legs: Sequence[Leg] | None) -> RunResult:
    images = run.plan.active()
    if not images:
        run.console.write("no image of this spec is built for this ref")
        return run.finish("success")
    for image in images:
        check_distributed(image)
    signers = _check_signing(images, run.env, run.console)
    commit = str(run.plan.context.get("sha") or "")
    with contextlib.ExitStack() as stack:
        try:
            with run.console.group("preflight"):
                access = preflight.open_registries(images, run.env, run.console)
                for item in access.values():
                    stack.callback(item.client.close)
                preflight.check_registries(images, access, run.console)
            found = leg_records.find(images, commit, access, run.console) if legs is None else legs
            chosen = match(images, found, commit)
            parts = _check_all(run, images, chosen, access)
        except ValueError as exc:  # a leg record in a registry that is not one
            return run.failed(exc)
        except ShipitError as exc:
            if isinstance(exc, UsageError):
                raise
            return run.failed(exc)
        ready = {}
        for image in images:
            uploads = BlobUploads(image, access)  # nothing to upload: the legs pushed the blobs
            stack.callback(uploads.close)
            ready[image.name] = _ready(run, image, parts[image.name], chosen[image.name], uploads)
        return publish(run, images, ready, access, signers)


def _check_all(
    run: RunState,
    images: Sequence[ImagePlan],
    chosen: Mapping[str, Mapping[str, Leg]],
    access: Mapping[str, Any],
) -> dict[str, list[PlatformPart]]:
    """Every platform manifest of every image, checked in every registry and read back."""
    parts: dict[str, list[PlatformPart]] = {}
    problems: list[str] = []
    for image in images:
        parts[image.name] = []
        with run.console.group(f"check the legs of {image.name}"):
            for platform, leg in chosen[image.name].items():
                manifest, found = _check_leg(image, leg, access)
                problems.extend(found)
                if manifest is None:
                    continue
                parts[image.name].append(PlatformPart(platform=platform, manifest=manifest))
                count = len(image.targets)
                where = "the registry" if count == 1 else f"all {count} registries"
                run.console.write(
                    f"{image.name} {platform}: {manifest.digest} in {where}, built from"
                    f" {leg.commit[:12]} (leg {leg.name})"
                )
    if problems:
        raise LegsRefused(problems)
    return parts


def _check_leg(
    image: ImagePlan, leg: Leg, access: Mapping[str, Any]
) -> tuple[Manifest | None, list[str]]:
    """The leg's manifest as the first registry holds it, and what is wrong with the leg."""
    assert leg.digest is not None  # noqa: S101 - `match` refuses legs that pushed nothing
    what = f"the {leg.platform} manifest {leg.digest[:19]} of image {image.name}"
    problems = []
    for target in image.targets:
        try:
            held = access[target.registry].client.has_manifest(target.repository, leg.digest)
        except RegistryError as exc:
            problems.append(f"{target.registry}: cannot look for {what}: {exc}")
            continue
        if not held:
            problems.append(f"{target.registry} lacks {what} (from {leg.name})")
    if problems:
        return None, problems
    first = image.targets[0]
    client = access[first.registry].client
    try:
        manifest = client.manifest(first.repository, leg.digest)
        if manifest.is_index or manifest.media_type not in IMAGE_MEDIA_TYPES:
            return None, [f"{what} in {first.registry} is a {manifest.media_type}, not an image"]
        config = json.loads(client.read_blob(first.repository, manifest.blobs()[0]))
    except (RegistryError, ValueError, IndexError) as exc:
        return None, [f"{what} cannot be read back from {first.registry}: {exc}"]
    labels = (config.get("config") or {}).get("Labels") or {} if isinstance(config, dict) else {}
    wanted = image.build.labels.get(REVISION)
    if labels.get(REVISION) != wanted:
        got = labels.get(REVISION) or "no revision label"
        return None, [f"{what} was built from {got}, not {wanted} (this commit)"]
    return manifest, []


def _ready(
    run: RunState,
    image: ImagePlan,
    parts: Sequence[PlatformPart],
    legs: Mapping[str, Leg],
    uploads: BlobUploads,
) -> Ready:
    """The image's index over the legs' manifests, as the run's state records it."""
    index = image_index(
        parts, {k: v for k, v in image.build.labels.items() if k.startswith(f"{OCI}.")}
    )
    artifact = Artifact(
        platforms=tuple(PlatformExport(platform=p.platform, manifest=p.manifest) for p in parts),
        index=index,
    )
    run.update(
        image.name,
        status="built",
        digest=index.digest,
        platforms=tuple(PlatformResult.of(p.platform, p.manifest) for p in parts),
        scans=tuple(_scan_report(image, leg) for leg in legs.values() if leg.scan is not None),
    )
    # the legs built on runners of their own: no base images are known here (their provenance
    # lists the source and the legs' platforms; see docs/provenance.md)
    built = BuiltImage(platforms=tuple(PlatformImage(platform=p.platform) for p in parts))
    now = datetime.now(UTC)
    return Ready(
        artifact=artifact,
        uploads=uploads,
        transfer=Transfer(f"push {image.name}"),
        built=built,
        started=now,
        finished=now,
    )


def _scan_report(image: ImagePlan, leg: Leg) -> ScanReport:
    """What a leg's scan found, as the report of a run shows one platform's scan."""
    assert leg.scan is not None  # noqa: S101
    policy = image.image.scan
    return ScanReport(
        image=f"{image.name} {leg.platform}",
        counts=dict(leg.scan.counts),
        findings=(),
        blocking=(),
        blocked=leg.scan.blocked,
        ignored=(),
        expired_ignores=leg.scan.expired_ignores,
        reports=(),
        fail_on=policy.fail_on if policy is not None else "HIGH",
        platform=leg.platform,
    )
