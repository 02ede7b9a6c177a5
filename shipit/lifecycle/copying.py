"""Copying one image, with what is attached to it, into one target repository.

`attachments` finds what belongs to an image and to each of its platform manifests: cosign's
`sha256-<hex>.sig`, `.att` and `.sbom`, the referrers index `sha256-<hex>`, and the referrers
the OCI referrers API lists. `Copier.copy` writes all of it into a target by digest
(`copy_image`: byte for byte, blobs mounted within one host), then the attachments' tags (on
a target without the referrers API, referrers found through the API get a referrers index;
an index already there is merged, never lost), and only then the image's own tags.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shipit.lifecycle.prune import Clients
from shipit.lifecycle.records import artifact_tags, short
from shipit.log import Console
from shipit.registry import (
    OCI_INDEX,
    Manifest,
    Registry,
    RegistryError,
    copy_image,
    parse_referrers,
)
from shipit.spec import Image
from shipit.spec import Registry as SpecRegistry


@dataclass(frozen=True, kw_only=True)
class Source:
    """The image to promote: the spec's image and registry it is in, and the reference."""

    image: Image
    registry: SpecRegistry
    repository: str
    tag: str | None
    digest: str | None


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """Something that belongs to the image: under an artifact tag, or a referrer."""

    digest: str
    subject: str
    tag: str | None = None  # None: found through the referrers API


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    registry: str
    repository: str  # host/repository
    digest: str | None = None
    tags: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()
    blobs_copied: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    warnings: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry, "repository": self.repository, "digest": self.digest,
            "tags": list(self.tags), "attachments": list(self.attachments),
            "blobs_copied": self.blobs_copied, "blobs_mounted": self.blobs_mounted,
            "bytes_copied": self.bytes_copied, "warnings": list(self.warnings),
            "error": self.error,
        }  # fmt: skip


def attachments(client: Registry, repository: str, manifest: Manifest) -> list[Attachment]:
    """What belongs to the image and its platform manifests: artifact tags and referrers."""
    subjects = [manifest.digest, *(c.digest for c in manifest.children())]
    found: list[Attachment] = []
    for subject in subjects:
        for tag in artifact_tags(subject):
            digest = client.manifest_digest(repository, tag)
            if digest is not None:
                found.append(Attachment(digest=digest, subject=subject, tag=tag))
        listed = {a.digest for a in found}
        for referrer in client.referrers(repository, subject) or ():
            if referrer.digest not in listed:
                found.append(Attachment(digest=referrer.digest, subject=subject))
    return found


class Copier:
    """Copies the image and its attachments into one target; shared by the threads."""

    def __init__(
        self,
        clients: Clients,
        *,
        source: Source,
        manifest: Manifest,
        attachments: Sequence[Attachment],
        tags: Sequence[str],
        console: Console,
    ) -> None:
        self.clients, self.source, self.manifest = clients, source, manifest
        self.attachments, self.tags, self.console = attachments, tags, console

    def copy(self, target: SpecRegistry) -> TargetResult:
        repository = target.repository(self.source.image.name)
        where = f"{target.host}/{repository}"
        src = self.clients.get(self.source.registry, self.source.image)
        try:
            dst = self.clients.get(target, self.source.image)
            copied = copy_image(
                src, self.source.repository, self.manifest.digest, dst, repository, []
            )
            results = [copied]
            for item in self.attachments:
                results.append(
                    copy_image(src, self.source.repository, item.digest, dst, repository, [])
                )
            counts = [
                sum(len(r.blobs_copied) for r in results),
                sum(len(r.blobs_mounted) for r in results),
                sum(r.bytes_copied for r in results),
            ]
            warnings = self._tag_attachments(src, dst, repository)
            for tag in self.tags:
                dst.put_manifest(repository, tag, self.manifest)
        except RegistryError as error:
            return TargetResult(registry=target.url, repository=where, error=str(error))
        self.console.write(
            f"{target.url}: {where}@{self.manifest.digest} with {len(self.attachments)} attachments"
        )
        return TargetResult(
            registry=target.url, repository=where, digest=copied.digest, tags=tuple(self.tags),
            attachments=tuple(a.digest for a in self.attachments), blobs_copied=counts[0],
            blobs_mounted=counts[1], bytes_copied=counts[2], warnings=tuple(warnings),
        )  # fmt: skip

    def _tag_attachments(self, src: Registry, dst: Registry, repository: str) -> list[str]:
        """The artifact tags at the target, and a referrers index where it lacks the API."""
        warnings: list[str] = []
        for item in self.attachments:
            if item.tag is None:
                continue
            manifest = src.manifest(self.source.repository, item.digest)
            there = dst.manifest_digest(repository, item.tag)
            if there not in (None, item.digest):
                if item.tag.endswith((".sig", ".att", ".sbom")):
                    warnings.append(f"{item.tag} at the target held other signatures; replaced")
                else:
                    manifest = merged_index(dst.manifest(repository, item.tag), manifest)
            dst.put_manifest(repository, item.tag, manifest)
        untagged = [a for a in self.attachments if a.tag is None]
        if untagged and dst.referrers(repository, self.manifest.digest) is None:
            for subject in dict.fromkeys(a.subject for a in untagged):
                self._referrers_index(
                    src, dst, repository, subject, [a for a in untagged if a.subject == subject]
                )
        return warnings

    def _referrers_index(
        self,
        src: Registry,
        dst: Registry,
        repository: str,
        subject: str,
        items: Sequence[Attachment],
    ) -> None:
        """The OCI referrers tag (`sha256-<hex>`) for referrers a target cannot list itself."""
        manifests = [src.manifest(self.source.repository, item.digest) for item in items]
        index = referrers_index(manifests)
        tag = artifact_tags(subject)[0]
        if dst.manifest_digest(repository, tag) is not None:
            index = merged_index(dst.manifest(repository, tag), index)
        dst.put_manifest(repository, tag, index)
        self.console.write(f"{repository}: referrers index {tag} for {short(subject)}")


def referrers_index(manifests: Sequence[Manifest]) -> Manifest:
    """The OCI index of the "referrers tag schema": one descriptor per referrer manifest,
    with its `artifactType` (OCI distribution spec 1.1, "Unavailable Referrers API")."""
    entries: list[dict[str, Any]] = []
    for manifest in manifests:
        document = json.loads(manifest.data)
        entry: dict[str, Any] = {
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": len(manifest.data),
        }
        if isinstance(document.get("artifactType"), str):
            entry["artifactType"] = document["artifactType"]
        entries.append(entry)
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return Manifest.from_bytes(json.dumps(document).encode(), OCI_INDEX)


def merged_index(existing: Manifest, extra: Manifest) -> Manifest:
    """A referrers index listing what `existing` and `extra` list, each once."""
    old = json.loads(existing.data).get("manifests") or []
    new = json.loads(extra.data).get("manifests") or []
    seen = {m.get("digest") for m in old if isinstance(m, dict)}
    merged = old + [m for m in new if isinstance(m, dict) and m.get("digest") not in seen]
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": merged}
    parse_referrers(json.dumps(document).encode())  # both were referrers indexes: check it
    return Manifest.from_bytes(json.dumps(document).encode(), OCI_INDEX)
