"""The push stage: the same compressed bytes to every registry at once.

The image was exported from the daemon and compressed once (`stages.export`); here every
registry gets those exact blobs and manifest, in parallel (bounded by `push.parallel`), and
then every tag as a manifest PUT. So every registry holds the same digest, and N registries
cost about one compression plus N uploads instead of N `docker push`es. Registries on one
host share blobs by cross-repository mount instead of a second upload. A registry that fails
does not stop the others, and the result says exactly which refs each registry got.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from shipit.log import Console, counted
from shipit.plan import ImagePlan, Target
from shipit.registry import Descriptor, Registry, RegistryError, copy_image
from shipit.stages.export import ExportedImage, Layer
from shipit.stages.preflight import Access


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """What one registry holds after the push."""

    registry: str
    host: str
    repository: str
    refs: tuple[str, ...]  # every ref the plan wanted here
    pushed: tuple[str, ...]  # the refs that now point at `digest`
    digest: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.pushed) == len(self.refs)

    def digest_ref(self) -> str | None:
        return f"{self.host}/{self.repository}@{self.digest}" if self.digest else None


class BlobUploads:
    """Blob uploads that start while the image is still being exported, layer by layer.

    A blob is invisible until a manifest names it, so uploading early publishes nothing: the
    manifests and tags are written only in `push_image`, once every image has passed. One
    upload per registry host (the others on that host mount the blobs later).
    """

    def __init__(self, image: ImagePlan, access: Mapping[str, Access]) -> None:
        self._targets = _first_per_host(image.targets)
        self._access = access
        self._pool = ThreadPoolExecutor(max_workers=max(1, image.image.push.parallel))
        self._started: set[str] = set()
        self._futures: dict[str, list[Future[Descriptor]]] = {t.registry: [] for t in self._targets}

    def add_layer(self, layer: Layer) -> None:
        if layer.descriptor.digest in self._started:
            return
        self._started.add(layer.descriptor.digest)
        for target in self._targets:
            client = self._access[target.registry].client
            future = self._pool.submit(
                client.upload_blob, target.repository, layer.path, known=layer.descriptor
            )
            self._futures[target.registry].append(future)

    def add_config(self, config: bytes) -> None:
        for target in self._targets:
            client = self._access[target.registry].client
            future = self._pool.submit(client.upload_blob, target.repository, config)
            self._futures[target.registry].append(future)

    def error_for(self, target: Target) -> str | None:
        """Wait for `target`'s uploads; the first failure's message, or None."""
        for future in self._futures.get(target.registry, []):
            try:
                future.result()
            except RegistryError as exc:
                return str(exc)
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _first_per_host(targets: Sequence[Target]) -> list[Target]:
    firsts: dict[str, Target] = {}
    for target in targets:
        firsts.setdefault(target.host, target)
    return list(firsts.values())


def push_image(
    image: ImagePlan,
    exported: ExportedImage,
    uploads: BlobUploads,
    access: Mapping[str, Access],
    console: Console,
) -> tuple[TargetResult, ...]:
    """Finish the uploads `uploads` started, then write the manifest and every tag to every
    target of `image`; never raises for a registry's failure."""
    policy = image.image.push
    digest = exported.manifest.digest
    size = _size(exported.size)
    where = counted(len(image.targets), "registry", "registries")
    with console.group(f"push {image.name} ({size}) to {where}"):
        by_host: dict[str, list[Target]] = {}
        for target in image.targets:
            by_host.setdefault(target.host, []).append(target)

        def push_host(targets: list[Target]) -> list[TargetResult]:
            first = _tag(
                image=image,
                exported=exported,
                uploads=uploads,
                target=targets[0],
                access=access,
                console=console,
            )
            results = [first]
            for target in targets[1:]:  # same host: mount the blobs, don't upload them again
                results.append(
                    _mount(
                        image=image,
                        digest=digest,
                        source=targets[0],
                        target=target,
                        access=access,
                        console=console,
                        source_result=first,
                    )
                )
            return results

        workers = max(1, min(policy.parallel, len(by_host)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            grouped = list(pool.map(push_host, by_host.values()))
    done = {r.registry: r for group in grouped for r in group}
    return _check_digests([done[t.registry] for t in image.targets], digest)


def _tag(
    *,
    image: ImagePlan,
    exported: ExportedImage,
    uploads: BlobUploads,
    target: Target,
    access: Mapping[str, Access],
    console: Console,
) -> TargetResult:
    """Once `target` holds every blob, write the manifest under each tag."""
    digest = exported.manifest.digest
    error = uploads.error_for(target)
    if error is not None:
        return _result(target, image.tags, [], digest, error=error)
    client = access[target.registry].client
    written: list[str] = []
    try:
        _put_tags(client, target.repository, image.tags, exported, written)
    except RegistryError as exc:
        # the tags the registry accepted, and any it turns out to hold all the same
        written += [t for t in _confirmed(client, target, digest) if t not in written]
        return _result(target, image.tags, written, digest, error=str(exc))
    console.write(f"{target.registry}: {counted(len(written), 'tag')} -> {digest}")
    return _result(target, image.tags, written, digest)


def _mount(
    *,
    image: ImagePlan,
    digest: str,
    source: Target,
    target: Target,
    access: Mapping[str, Access],
    console: Console,
    source_result: TargetResult,
) -> TargetResult:
    if source_result.digest is None or not source_result.pushed:
        return _result(target, image.tags, [], digest, error=f"not pushed: {source_result.error}")
    client = access[target.registry].client
    try:
        copied = copy_image(
            access[source.registry].client,
            source.repository,
            digest,
            client,
            target.repository,
            list(image.tags),
        )
    except RegistryError as exc:
        return _result(
            target, image.tags, _confirmed(client, target, digest), digest, error=str(exc)
        )
    console.write(
        f"{target.registry}: {counted(len(copied.tags), 'tag')} -> {copied.digest}"
        f" ({counted(len(copied.blobs_mounted), 'blob')} mounted from {source.registry})"
    )
    return _result(target, image.tags, list(copied.tags), copied.digest)


def _put_tags(
    client: Registry,
    repository: str,
    tags: Sequence[str],
    exported: ExportedImage,
    written: list[str],
) -> None:
    """Write every tag; `written` collects each one the registry accepted, as it goes, so a
    failure halfway still knows what went through."""
    for tag in tags:
        got = client.put_manifest(repository, tag, exported.manifest)
        if got != exported.manifest.digest:
            raise RegistryError(
                f"stored {tag} as {got}, not {exported.manifest.digest}",
                host=client.endpoint.host,
                kind="protocol",
            )
        written.append(tag)


def _confirmed(client: Registry, target: Target, digest: str) -> list[str]:
    """After a failure: the tags the registry really serves with our digest, if it answers."""
    found = []
    for ref in target.refs:
        tag = ref.rpartition(":")[2]
        try:
            if client.manifest(target.repository, tag).digest == digest:
                found.append(tag)
        except RegistryError:
            continue
    return found


def _result(
    target: Target,
    tags: Sequence[str],
    written: Sequence[str],
    digest: str,
    *,
    error: str | None = None,
) -> TargetResult:
    done = set(written)
    pushed = tuple(ref for ref, tag in zip(target.refs, tags, strict=True) if tag in done)
    return TargetResult(
        registry=target.registry,
        host=target.host,
        repository=target.repository,
        refs=target.refs,
        pushed=pushed,
        digest=digest if pushed else None,
        error=error,
    )


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
