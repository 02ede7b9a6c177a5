"""`copy_image`: an image from one repository to another, byte for byte, and its tags.

The source and target may be two repositories of one registry host (the push stage copies the
image it uploaded to the first repository on a host into the others that way) or two
registries. Blobs the target has are skipped; inside one host they are mounted; otherwise they
stream from source to target, checked against their digest on the way, never whole in memory.
The manifest bytes are written unchanged, so the target serves the same digest as the source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from shipit.registry.client import Registry
from shipit.registry.errors import RegistryError
from shipit.registry.oci import TAG_RE, Descriptor, Manifest, check_digest

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH: Final = 4

BlobAction = Literal["skip", "mount", "copy"]


@dataclass(frozen=True, kw_only=True)
class BlobProgress:
    """One step of a blob's copy: skipped, mounted, or `done` of `size` bytes streamed."""

    digest: str
    size: int
    done: int
    action: BlobAction


@dataclass(frozen=True, kw_only=True)
class CopyResult:
    """What `copy_image` did in the target repository."""

    host: str
    repository: str
    digest: str
    media_type: str
    tags: tuple[str, ...]
    bytes_copied: int
    blobs_copied: tuple[str, ...]
    blobs_mounted: tuple[str, ...]
    blobs_skipped: tuple[str, ...]
    manifests: tuple[str, ...] = ()
    """Child manifests of an index that were written (the index itself is `digest`)."""

    @property
    def ref(self) -> str:
        """`host/repository@digest`, the reference to sign."""
        return f"{self.host}/{self.repository}@{self.digest}"


class _ImageCopy:
    """The state of one `copy_image`: what was copied, mounted and skipped."""

    def __init__(
        self,
        source: Registry,
        source_repo: str,
        target: Registry,
        target_repo: str,
        on_progress: Callable[[BlobProgress], None] | None,
    ) -> None:
        self.source, self.target = source, target
        self.source_repo = source.endpoint.repository(source_repo)
        self.target_repo = target.endpoint.repository(target_repo)
        self.on_progress = on_progress
        self.same_host = source.endpoint.api_host.lower() == target.endpoint.api_host.lower()
        self.seen: set[str] = set()
        self.copied: list[str] = []
        self.mounted: list[str] = []
        self.skipped: list[str] = []
        self.manifests: list[str] = []
        self.bytes_copied = 0

    def image(self, manifest: Manifest, depth: int = 0) -> bool:
        """Copy what `manifest` refers to; True if the target already had the manifest."""
        if depth > MAX_INDEX_DEPTH:
            raise self.source._protocol(f"indexes nest deeper than {MAX_INDEX_DEPTH} levels")
        present = self.target.has_manifest(self.target_repo, manifest.digest)
        if manifest.is_index:
            for child in manifest.children():
                if child.digest in self.seen:
                    continue
                self.seen.add(child.digest)
                child_manifest = self.source.manifest(self.source_repo, child.digest)
                if not self.image(child_manifest, depth + 1):
                    self.target.put_manifest(self.target_repo, child.digest, child_manifest)
                    self.manifests.append(child.digest)
        else:
            for blob in manifest.blobs():
                if present:
                    self._skip(blob)  # a registry stores a manifest only with all its blobs
                else:
                    self.blob(blob)
        return present

    def blob(self, blob: Descriptor) -> None:
        if blob.digest in self.seen:
            return
        if not blob.distributable or self.target.has_blob(self.target_repo, blob.digest):
            self._skip(blob)
            return
        self.seen.add(blob.digest)
        session = None
        if self.same_host and self.source_repo != self.target_repo:
            try:
                session = self.target._mount(self.target_repo, blob.digest, self.source_repo)
            except RegistryError as error:
                if error.kind not in ("auth", "denied"):
                    raise
                # the target's credentials may not read the source repository: copy instead
                log.debug("%s: mount of %s refused: %s", self.target.host, blob.digest, error)
            else:
                if session is None:
                    self.mounted.append(blob.digest)
                    self._progress(blob, blob.size, "mount")
                    return
                log.debug("%s refused to mount %s; copying it", self.target.host, blob.digest)
        self.target._upload(
            self.target_repo,
            blob,
            self.source._blob_source(self.source_repo, blob),
            origin=f"{self.source.host}/{self.source_repo}",
            origin_host=self.source.host,
            session=session,
            on_bytes=lambda done: self._progress(blob, done, "copy"),
        )
        self.copied.append(blob.digest)
        self.bytes_copied += blob.size

    def _skip(self, blob: Descriptor) -> None:
        if blob.digest in self.seen:
            return
        self.seen.add(blob.digest)
        self.skipped.append(blob.digest)
        self._progress(blob, blob.size, "skip")

    def _progress(self, blob: Descriptor, done: int, action: BlobAction) -> None:
        if self.on_progress is not None:
            self.on_progress(
                BlobProgress(digest=blob.digest, size=blob.size, done=done, action=action)
            )


def copy_image(  # noqa: PLR0917 - the push stage's call, positional like a copy(src, dst)
    source: Registry,
    source_repo: str,
    digest: str,
    target: Registry,
    target_repo: str,
    tags: Sequence[str],
    *,
    on_progress: Callable[[BlobProgress], None] | None = None,
) -> CopyResult:
    """Copy the image `source_repo@digest` to `target_repo` byte for byte and tag it.

    Blobs the target has are skipped; inside one registry host they are mounted from
    `source_repo`; otherwise they stream from source to target, checked against their digest
    on the way, never whole in memory. An index's child manifests are copied before the index.
    The manifest is written by digest and then under every tag, with the same bytes, so the
    target reports the same digest as the source.
    """
    check_digest(digest)
    for tag in tags:
        if not TAG_RE.fullmatch(tag):
            raise ValueError(f"{tag!r} is not a valid tag")
    manifest = source.manifest(source_repo, digest)
    copy = _ImageCopy(source, source_repo, target, target_repo, on_progress)
    copy.seen.add(digest)
    present = copy.image(manifest)
    if not present:
        target.put_manifest(target_repo, digest, manifest)
    written: list[str] = []
    for tag in dict.fromkeys(tags):
        target.put_manifest(target_repo, tag, manifest)
        written.append(tag)
    return CopyResult(
        host=target.host,
        repository=copy.target_repo,
        digest=manifest.digest,
        media_type=manifest.media_type,
        tags=tuple(written),
        bytes_copied=copy.bytes_copied,
        blobs_copied=tuple(copy.copied),
        blobs_mounted=tuple(copy.mounted),
        blobs_skipped=tuple(copy.skipped),
        manifests=tuple(copy.manifests),
    )
