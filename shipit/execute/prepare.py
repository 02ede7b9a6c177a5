"""Before anything is published: build every image, scan every platform, export for the push.

For each image: the engine builds one image per platform (meanwhile, where BuildKit keeps the
base image's layers as they are and no scan gate comes first, those layers go to the
registries: stages/base_layers.py); every platform is scanned and the
gate decides over all of them (a platform that blocks blocks the image, and the findings say
which platform); then each platform's image is made ready to push (exported and compressed
once from a daemon, or taken from an OCI layout as it is), its blob uploads start at once,
and, for several platforms, one OCI index is assembled. No manifest is written here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipit.errors import GateBlocked
from shipit.execute.results import PlatformResult, RunState
from shipit.log import counted
from shipit.plan import OCI, ImagePlan
from shipit.progress import Transfer, showing
from shipit.stages.assemble import PlatformPart, image_index
from shipit.stages.base_layers import Ahead, final_base
from shipit.stages.build import BuiltImage, Engines, PlatformImage, platform_slug
from shipit.stages.build.images import platform_args
from shipit.stages.export import ExportedImage, export_image
from shipit.stages.export_cache import ExportCache
from shipit.stages.layout import load_image, platform_manifests
from shipit.stages.push import Artifact, PlatformExport
from shipit.stages.receive import receive_export
from shipit.stages.uploads import BlobUploads


@dataclass(frozen=True, kw_only=True)
class Ready:
    """An image built, scanned and made ready to push, its blobs on their way."""

    artifact: Artifact
    uploads: BlobUploads
    transfer: Transfer
    built: BuiltImage  # what the engine made: per platform, the base images it used
    started: datetime  # when the build began
    finished: datetime  # when the image was built, scanned and made ready to push


def prepare_all(
    run: RunState,
    images: tuple[ImagePlan, ...],
    *,
    engines: Engines,
    access: Mapping[str, Any],
    workdir: Path,
    stack: contextlib.ExitStack,
    cache: ExportCache | None = None,
) -> dict[str, Ready]:
    """Build and scan every image, then ready the ones to push; no manifest is written yet."""
    ready: dict[str, Ready] = {}
    for image in images:
        run.update(image.name, status="building")
        started = datetime.now(UTC)
        folder = workdir / image.name
        uploads, transfer = None, Transfer(f"push {image.name}")
        base = None
        if "push" in image.stages:
            uploads = BlobUploads(image, access, on_bytes=transfer.add, on_expect=transfer.expect)
            stack.callback(uploads.close)
            base = _base_ahead(run, image, engines, uploads, folder)
        try:
            built = engines.builder(image, folder / "build", cache).build(image, run.console)
        finally:
            if base is not None:
                base.stop()
        run.update(
            image.name,
            image_id=built.image_id,
            status="built",
            platforms=tuple(PlatformResult(platform=p.platform) for p in built.platforms),
        )
        if "scan" in image.stages:
            scan_all(run, image, built, folder, many_images=len(images) > 1)
        if uploads is not None:
            ready[image.name] = _ready(
                run, image, built, engines=engines, uploads=uploads, transfer=transfer,
                folder=folder, started=started, cache=cache,
                held=base.held if base is not None else {},
            )  # fmt: skip
    return ready


def _base_ahead(
    run: RunState, image: ImagePlan, engines: Engines, uploads: BlobUploads, folder: Path
) -> Ahead | None:
    """The layers of `image`'s base on their way to its registries while it builds, where
    its engine keeps them as they are and no scan gate comes first (stages/base_layers.py)."""
    if "scan" in image.stages:
        return None
    platforms = engines.keeps_base_layers(image)
    name = final_base(image.build, platform_args(platforms[0])) if platforms else None
    if name is None:
        return None
    base = Ahead(folder / "base-layers")
    return base if base.start(name, platforms, uploads, run.env, run.console) else None


def scan_all(
    run: RunState, image: ImagePlan, built: BuiltImage, folder: Path, *, many_images: bool
) -> None:
    """Scan every platform; the gate blocks the image when any platform is blocked."""
    from shipit.stages.scan import blocking_text, scan_image  # noqa: PLC0415

    policy = image.image.scan
    if policy is None:
        return
    many = len(built.platforms) > 1 or image.leg is not None  # a leg names its platform
    reports = []
    for item in built.platforms:
        target, layout, env = _scan_target(item, folder, run.env)
        suffix = "-".join(
            part
            for part in (
                image.name if many_images else "",
                platform_slug(item.platform) if many else "",
            )
            if part
        )
        label = f"{image.name} {image.version.text}" + (f" {item.platform}" if many else "")
        reports.append(
            scan_image(
                target,
                policy,
                env=env,
                console=run.console,
                label=label,
                report_suffix=suffix or None,
                root=Path(run.plan.spec).parent,
                layout=layout,
                platform=item.platform if many else None,
            )
        )
    run.update(image.name, scans=tuple(reports))
    blocked = [r for r in reports if r.blocked]
    if not blocked:
        return
    run.update(image.name, status="blocked", error="the scan gate blocked the release")
    for report in blocked:
        run.console.write(blocking_text(report, run.console.style))
    findings = counted(sum(len(r.blocking) for r in blocked), "finding")
    where = f" in {', '.join(str(r.platform) for r in blocked)}" if many else ""
    raise GateBlocked(
        f"image {image.name}: {findings} at or above {policy.fail_on}{where}; nothing was pushed"
    )


def _scan_target(
    item: PlatformImage, folder: Path, env: Mapping[str, str]
) -> tuple[str, bool, Mapping[str, str]]:
    """What Trivy reads for one platform: a daemon image, or a one-image OCI layout view."""
    if item.layout is not None and item.manifest is not None:
        return str(_layout_view(item, folder)), True, env
    assert item.local_ref is not None  # noqa: S101 - a loaded image has a name
    if item.docker_host:
        return item.local_ref, False, {**env, "DOCKER_HOST": item.docker_host}
    return item.local_ref, False, env


def _layout_view(item: PlatformImage, folder: Path) -> Path:
    """A layout whose index.json names only this platform's manifest, sharing the blobs of
    the build's layout (Trivy's `--input` reads one image from it)."""
    assert item.layout is not None  # noqa: S101 - only layouts get a view
    assert item.manifest is not None  # noqa: S101
    view = folder / f"scan-{platform_slug(item.platform)}"
    view.mkdir(parents=True, exist_ok=True)
    (view / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n', encoding="utf-8")
    found = next(p for p in platform_manifests(item.layout, item.manifest))
    entry = {
        "mediaType": found.manifest.media_type,
        "digest": found.manifest.digest,
        "size": len(found.manifest.data),
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [entry]}  # fmt: skip
    (view / "index.json").write_text(json.dumps(index), encoding="utf-8")
    blobs = view / "blobs"
    if not blobs.exists():
        os.symlink(item.layout / "blobs", blobs)
    return view


def _ready(
    run: RunState,
    image: ImagePlan,
    built: BuiltImage,
    *,
    engines: Engines,
    uploads: BlobUploads,
    transfer: Transfer,
    folder: Path,
    started: datetime,
    cache: ExportCache | None,
    held: Mapping[str, Path],
) -> Ready:
    """Export (or read) every platform, start the uploads, and assemble the index; `held`
    are the base's layers downloaded while it built (stages/base_layers.py)."""
    many = len(built.platforms) > 1
    oci = many or image.leg is not None  # an index (now, or the merge's) names OCI manifests
    parts = []
    with run.console.group(f"export {image.name}"), showing(transfer, run.console):
        for item in built.platforms:
            exported, kept = _export(
                item, engines, folder, uploads, oci=oci, cache=cache, held=held
            )
            parts.append(
                PlatformExport(platform=item.platform, manifest=exported.manifest, image=exported)
            )
            layers = counted(len(exported.layers), "layer")
            where = f" ({item.platform})" if oci and item.platform else ""
            again = " (kept from an earlier export and checked: not exported again)" if kept else ""
            run.console.write(
                f"{image.name}{where}: {layers}, manifest {exported.manifest.digest}{again}"
            )
    index = None
    if many:
        index = image_index(
            [PlatformPart(platform=str(p.platform), manifest=p.manifest) for p in parts],
            {k: v for k, v in image.build.labels.items() if k.startswith(f"{OCI}.")},
        )
    artifact = Artifact(platforms=tuple(parts), index=index)
    run.update(
        image.name,
        digest=artifact.top.digest,
        platforms=tuple(PlatformResult.of(p.platform, p.manifest) for p in parts),
    )
    return Ready(
        artifact=artifact,
        uploads=uploads,
        transfer=transfer,
        built=built,
        started=started,
        finished=datetime.now(UTC),
    )


def _export(
    item: PlatformImage,
    engines: Engines,
    folder: Path,
    uploads: BlobUploads,
    *,
    oci: bool,
    cache: ExportCache | None,
    held: Mapping[str, Path],
) -> tuple[ExportedImage, bool]:
    """One platform's image made ready to push, its uploads begun; and whether the export
    cache had it (see `stages.export_cache`)."""
    if item.layout is not None and item.manifest is not None:
        found = platform_manifests(item.layout, item.manifest)
        exported = load_image(item.layout, found[0])
        uploads.add_image(exported)
        return exported, False
    assert item.image_id is not None  # noqa: S101 - a loaded image has an id
    target = folder / f"export-{platform_slug(item.platform)}"
    if cache is not None and (kept := cache.recall(item.image_id, target, oci=oci)) is not None:
        uploads.add_image(kept)
        return kept, True
    daemon = engines.daemon_for(item.docker_host)
    uploads.probe(item.image_id)  # answered while the daemon prepares its export
    received = receive_export(
        daemon, item.image_id, target, uploads.start_layer, oci=oci, held=held
    )
    if received is not None:  # pushed to shipit by a daemon on the containerd store
        exported = received
        for layer in exported.layers:
            uploads.add_layer(layer)
    else:
        exported = export_image(
            daemon.save(item.image_id),
            item.image_id,
            target,
            on_layer_start=uploads.start_layer,
            on_layer=uploads.add_layer,
            oci=oci,
        )
    uploads.add_config(exported.config)
    if cache is not None:
        with contextlib.suppress(OSError, ValueError):  # a cache never fails a run
            cache.keep(exported)
    return exported, False
