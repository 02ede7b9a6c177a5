"""The push stage: the same bytes to every registry, by digest first, tags last.

An image was exported and compressed once (`stages.export`), or taken from BuildKit's OCI
layout as it is (`stages.layout`); for several platforms shipit also made one OCI index
(`stages.assemble`). Publishing goes in two steps with signing in between (DESIGN section 4):

1. `store`: every registry gets every blob, then every manifest **by digest only**: each
   platform's manifest, then the index. Nothing is tagged, so nothing points at the image
   yet; the result says which manifests each registry holds.
2. `tag`: once every registry holds everything (and signing, when on, has signed every
   digest everywhere), each tag becomes a manifest PUT of the top manifest, in every registry.

Blob uploads start while the image is still being exported (`stages.uploads.BlobUploads`),
since a blob is invisible until a manifest names it: each layer is streamed to every registry
while it is compressed. Registries run in parallel (bounded by `push.parallel`);
one that fails does not stop the others, and the results say exactly what each one holds.
Registries on one host share blobs by cross-repository mount instead of a second upload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from shipit.log import Console, counted
from shipit.plan import ImagePlan, Target
from shipit.registry import Manifest, Registry, RegistryError, copy_image
from shipit.stages.export import ExportedImage
from shipit.stages.preflight import Access
from shipit.stages.uploads import BlobUploads

__all__ = ["Artifact", "BlobUploads", "PlatformExport", "TargetResult", "store", "tag"]


@dataclass(frozen=True, kw_only=True)
class PlatformExport:
    """One platform's manifest, ready to push; `platform` None: the daemon's own, unnamed.

    `image` is the exported image whose blobs a run uploads; a merge has none (the legs
    pushed the blobs), only the manifest it read back from a registry."""

    platform: str | None
    manifest: Manifest
    image: ExportedImage | None = None


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """What one image publishes: a manifest per platform, and an index when there are several."""

    platforms: tuple[PlatformExport, ...]
    index: Manifest | None = None

    @property
    def top(self) -> Manifest:
        """What the tags point at: the index, or the one platform's manifest."""
        return self.index if self.index is not None else self.platforms[0].manifest

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        """Every manifest to store, children before the index that names them."""
        children = tuple(p.manifest for p in self.platforms)
        return (*children, self.index) if self.index is not None else children

    @property
    def size(self) -> int:
        """The bytes of every blob (each once) and manifest the image is made of."""
        blobs = {b.digest: b.size for p in self.platforms for b in p.manifest.blobs()}
        return sum(blobs.values()) + sum(len(m.data) for m in self.manifests)


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """What one registry holds: manifests by digest, and the refs (tags) that point at them."""

    registry: str
    host: str
    repository: str
    refs: tuple[str, ...]  # every ref the plan wanted here
    pushed: tuple[str, ...] = ()  # the refs that now point at `digest`
    digest: str | None = None  # the top manifest's digest, once this registry holds it
    stored: tuple[str, ...] = ()  # every manifest digest this registry holds for the image
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.pushed) == len(self.refs)

    @property
    def complete(self) -> bool:
        """Every manifest is stored (the tags may still be to come)."""
        return self.error is None and self.digest is not None

    def digest_ref(self, digest: str | None = None) -> str | None:
        """`host/repository@digest` of the top manifest, or of `digest`."""
        chosen = digest or self.digest
        return f"{self.host}/{self.repository}@{chosen}" if chosen else None

    def stored_refs(self) -> tuple[str, ...]:
        return tuple(f"{self.host}/{self.repository}@{d}" for d in self.stored)


def store(
    image: ImagePlan,
    artifact: Artifact,
    uploads: BlobUploads,
    access: Mapping[str, Access],
    console: Console,
) -> tuple[TargetResult, ...]:
    """Finish the uploads, then write every manifest by digest to every registry of `image`;
    no tag yet. Never raises for a registry's failure: its result carries the error."""
    where = counted(len(image.targets), "registry", "registries")
    platforms = counted(len(artifact.platforms), "platform")
    with console.group(f"push {image.name} ({_size(artifact.size)}, {platforms}) to {where}"):
        by_host: dict[str, list[Target]] = {}
        for target in image.targets:
            by_host.setdefault(target.host, []).append(target)

        def store_host(targets: list[Target]) -> list[TargetResult]:
            first = _store_first(targets[0], artifact, uploads, access, console)
            results = [first]
            for target in targets[1:]:  # same host: mount the blobs, don't upload them again
                results.append(
                    _store_mounted(
                        target,
                        targets[0],
                        source_result=first,
                        artifact=artifact,
                        access=access,
                        console=console,
                    )
                )
            return results

        workers = max(1, min(image.image.push.parallel, len(by_host)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            grouped = list(pool.map(store_host, by_host.values()))
    done = {r.registry: r for group in grouped for r in group}
    return _check_digests([done[t.registry] for t in image.targets], artifact.top.digest)


def _store_first(
    target: Target,
    artifact: Artifact,
    uploads: BlobUploads,
    access: Mapping[str, Access],
    console: Console,
) -> TargetResult:
    error = uploads.error_for(target)
    if error is not None:
        return _result(target, error=error)
    client = access[target.registry].client
    stored: list[str] = []
    try:
        for manifest in artifact.manifests:
            _put(client, target.repository, manifest.digest, manifest)
            stored.append(manifest.digest)
    except RegistryError as exc:
        return _result(target, stored=stored, error=str(exc))
    console.write(f"{target.registry}: {_stored_text(artifact)}")
    return _result(target, stored=stored, digest=artifact.top.digest)


def _store_mounted(
    target: Target,
    source: Target,
    *,
    source_result: TargetResult,
    artifact: Artifact,
    access: Mapping[str, Access],
    console: Console,
) -> TargetResult:
    if not source_result.complete:
        return _result(target, error=f"not pushed: {source_result.error}")
    client = access[target.registry].client
    digest = artifact.top.digest
    try:
        copied = copy_image(
            access[source.registry].client, source.repository, digest, client, target.repository, []
        )
    except RegistryError as exc:
        return _result(target, stored=_held(client, target, artifact), error=str(exc))
    mounted = counted(len(copied.blobs_mounted), "blob")
    console.write(
        f"{target.registry}: {_stored_text(artifact)} ({mounted} mounted from {source.registry})"
    )
    return _result(target, stored=[m.digest for m in artifact.manifests], digest=copied.digest)


def _stored_text(artifact: Artifact) -> str:
    if artifact.index is None:
        return f"manifest {artifact.top.digest} stored by digest"
    platforms = counted(len(artifact.platforms), "platform manifest")
    return f"{platforms} and the index {artifact.top.digest} stored by digest"


def tag(
    image: ImagePlan,
    artifact: Artifact,
    results: Sequence[TargetResult],
    access: Mapping[str, Access],
    console: Console,
) -> tuple[TargetResult, ...]:
    """Point every tag at the top manifest, in every registry that holds the image."""

    def tag_target(result: TargetResult) -> TargetResult:
        if not result.complete:
            return result
        client = access[result.registry].client
        written: list[str] = []
        try:
            for tag_name in image.tags:
                _put(client, result.repository, tag_name, artifact.top)
                written.append(tag_name)
        except RegistryError as exc:
            # the tags the registry accepted, and any it turns out to hold all the same
            held = [t for t in _confirmed(client, result, artifact.top.digest) if t not in written]
            return _tagged(result, image.tags, written + held, error=str(exc))
        console.write(f"{result.registry}: {counted(len(written), 'tag')} -> {artifact.top.digest}")
        return _tagged(result, image.tags, written)

    with console.group(f"tag {image.name}"):
        workers = max(1, min(image.image.push.parallel, len(results)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return tuple(pool.map(tag_target, results))


def _put(client: Registry, repository: str, reference: str, manifest: Manifest) -> None:
    got = client.put_manifest(repository, reference, manifest)
    if got != manifest.digest:
        raise RegistryError(
            f"stored {reference} as {got}, not {manifest.digest}",
            host=client.endpoint.host,
            kind="protocol",
        )


def _held(client: Registry, target: Target, artifact: Artifact) -> list[str]:
    """After a failure: the manifests the registry really holds, if it answers."""
    held = []
    for manifest in artifact.manifests:
        try:
            if client.has_manifest(target.repository, manifest.digest):
                held.append(manifest.digest)
        except RegistryError:
            continue
    return held


def _confirmed(client: Registry, result: TargetResult, digest: str) -> list[str]:
    """After a failure: the tags the registry really serves with our digest, if it answers."""
    found = []
    for ref in result.refs:
        tag_name = ref.rpartition(":")[2]
        try:
            if client.manifest(result.repository, tag_name).digest == digest:
                found.append(tag_name)
        except RegistryError:
            continue
    return found


def _result(
    target: Target,
    *,
    stored: Sequence[str] = (),
    digest: str | None = None,
    error: str | None = None,
) -> TargetResult:
    return TargetResult(
        registry=target.registry,
        host=target.host,
        repository=target.repository,
        refs=target.refs,
        stored=tuple(stored),
        digest=digest,
        error=error,
    )


def _tagged(
    result: TargetResult, tags: Sequence[str], written: Sequence[str], *, error: str | None = None
) -> TargetResult:
    done = set(written)
    pushed = tuple(ref for ref, t in zip(result.refs, tags, strict=True) if t in done)
    return replace(result, pushed=pushed, error=error)


def _check_digests(results: Sequence[TargetResult], digest: str) -> tuple[TargetResult, ...]:
    return tuple(
        replace(r, error=f"holds {r.digest}, not {digest} like the others")
        if r.digest is not None and r.digest != digest
        else r
        for r in results
    )


def _size(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} kB"
