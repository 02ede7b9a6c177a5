"""Blob uploads that start while the image is still being exported (see `BlobUploads`).

The push stage (`stages.push`) writes manifests only once every blob is stored; these uploads
run before that, from the moment the export begins a layer, since a blob is invisible until a
manifest names it. `push.store` waits for them (`error_for`) before it writes a manifest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from shipit.plan import ImagePlan, Target
from shipit.registry import Descriptor, GrowingFile, RegistryError
from shipit.stages.export import ExportedImage, Layer
from shipit.stages.preflight import Access


class BlobUploads:
    """Blob uploads that start while the image is still being exported, layer by layer.

    A blob is invisible until a manifest names it, so uploading early publishes nothing.
    One upload per registry host (the others on that host mount the blobs later). A layer
    begun by the export (`start_layer`) is streamed to each registry while it is compressed;
    except to a registry that holds the image's config already (`probe`, asked before the
    export's first byte): that one probably holds its layers too (an earlier run), so each
    layer goes to it the usual way once complete, HEAD first, and is not sent again.
    `on_expect(registry, size)` hears of each blob's size as it is known and `on_bytes(registry,
    change)` how the bytes done for it change, for a progress line.
    """

    def __init__(
        self,
        image: ImagePlan,
        access: Mapping[str, Access],
        *,
        on_bytes: Callable[[str, int], None] | None = None,
        on_expect: Callable[[str, int], None] | None = None,
    ) -> None:
        self._targets = _first_per_host(image.targets)
        self._access = access
        self._on_bytes = on_bytes
        self._on_expect = on_expect
        self._pool = ThreadPoolExecutor(max_workers=max(1, image.image.push.parallel))
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._streamed: set[Path] = set()
        self._probes: dict[str, Future[bool]] = {}
        self._futures: dict[str, list[Future[Descriptor]]] = {t.registry: [] for t in self._targets}

    def probe(self, config_digest: str) -> None:
        """Ask every registry whether it holds the blob `config_digest` (see the class)."""
        for target in self._targets:
            client = self._access[target.registry].client
            self._probes[target.registry] = self._pool.submit(
                client.has_blob, target.repository, config_digest
            )

    def _holds_image(self, target: Target) -> bool:
        probe = self._probes.get(target.registry)
        if probe is None:
            return False
        try:
            return probe.result()
        except RegistryError:
            return False  # the upload itself will say what is wrong

    def start_layer(self, blob: GrowingFile) -> None:
        """A layer the export has begun to write: follow its file to every registry."""
        self._streamed.add(blob.path)
        for target in self._targets:
            client = self._access[target.registry].client
            future = self._pool.submit(
                client.upload_growing,
                target.repository,
                blob,
                follow=not self._holds_image(target),
                on_bytes=self._counter(target.registry),
            )
            self._futures[target.registry].append(future)

    def add_layer(self, layer: Layer) -> None:
        """A complete layer: uploaded now, unless `start_layer` has it on its way already."""
        self.add_file(layer.path, layer.descriptor)

    def add_file(self, path: Path, descriptor: Descriptor) -> None:
        """A complete blob in the file `path`: uploaded now (HEAD first), unless it is on its
        way already (`start_layer`, or an earlier `add_file` of the same digest: any thread
        may call this, e.g. the base image's layers while the image builds)."""
        with self._lock:  # marked and submitted at once: `error_for` sees both or neither
            if descriptor.digest in self._started:
                return
            self._started.add(descriptor.digest)
            streamed = path in self._streamed
            for target in self._targets:
                self._expect(target.registry, descriptor.size)
                if streamed:
                    continue
                client = self._access[target.registry].client
                future = self._pool.submit(
                    client.upload_blob,
                    target.repository,
                    path,
                    known=descriptor,
                    on_bytes=self._counter(target.registry),
                )
                self._futures[target.registry].append(future)

    def lacking(self, digest: str) -> bool:
        """Whether some registry lacks the blob `digest` (asked now; an error counts as
        lacking: the upload then says what is wrong)."""
        for target in self._targets:
            try:
                if not self._access[target.registry].client.has_blob(target.repository, digest):
                    return True
            except RegistryError:
                return True
        return False

    def add_config(self, config: bytes) -> None:
        for target in self._targets:
            self._expect(target.registry, len(config))
            client = self._access[target.registry].client
            future = self._pool.submit(
                client.upload_blob,
                target.repository,
                config,
                on_bytes=self._counter(target.registry),
            )
            self._futures[target.registry].append(future)

    def add_image(self, image: ExportedImage) -> None:
        """Every blob of an image that is complete already (an OCI layout's)."""
        for layer in image.layers:
            self.add_layer(layer)
        self.add_config(image.config)

    def _expect(self, registry: str, size: int) -> None:
        if self._on_expect is not None:
            self._on_expect(registry, size)

    def _counter(self, registry: str) -> Callable[[int], None] | None:
        """`upload_blob` tells how far one blob is; the progress line wants what changed."""
        report = self._on_bytes
        if report is None:
            return None
        last = [0]

        def count(done: int) -> None:
            report(registry, done - last[0])  # negative when an upload starts over
            last[0] = done

        return count

    def error_for(self, target: Target) -> str | None:
        """Wait for `target`'s uploads; the first failure's message, or None."""
        with self._lock:
            futures = list(self._futures.get(target.registry, []))
        for future in futures:
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
