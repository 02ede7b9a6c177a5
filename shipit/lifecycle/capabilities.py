"""Can a registry delete, and can it delete a tag alone? Found out before anything is deleted.

The probe works on a manifest of its own, never on the user's: a tiny OCI manifest (the
empty config `{}` and an annotation with a random value, so its digest is new) is stored by
digest only and deleted by digest. 202 means deletes work; 405, or 400 UNSUPPORTED, means the
registry refuses them, and then nothing at all is deleted there (the probe leaves one untagged
two-byte manifest behind, invisible to tags). Where deletes work and tags must go, a second
placeholder is stored under a probe tag and the tag alone is deleted: the registry has a tag
DELETE only if the answer is 202 and the placeholder itself is still there afterwards.
Otherwise a tag is removed by pushing a placeholder onto it and deleting that by digest.

Docker Hub and GHCR do not delete over the registry API (GHCR: 405 UNSUPPORTED; Docker Hub
only untagged digests); prune reaches them through their own APIs (`lifecycle.apis`), and a
spec that says `api: registry` for them is told so here without a probe.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Final

from shipit.registry import OCI_MANIFEST, Manifest, Registry, RegistryError

EMPTY_CONFIG: Final = b"{}"
EMPTY_MEDIA_TYPE: Final = "application/vnd.oci.empty.v1+json"
PLACEHOLDER_TYPE: Final = "application/vnd.shipit.placeholder.v1"
PLACEHOLDER_KEY: Final = "dev.shipit.placeholder"

VENDOR_HINTS: Final = {
    "ghcr.io": (
        "GHCR does not delete over the registry API: leave out `api: registry` (or say"
        " `api: github`) to delete package versions through GitHub's Packages REST API"
    ),
    "docker.io": (
        "Docker Hub deletes only untagged digests over the registry API: leave out"
        " `api: registry` (or say `api: dockerhub`) to delete tags through Docker Hub's API"
    ),
}
_HUB_HOSTS: Final = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What the probe found out about deleting in one repository."""

    deletes: bool
    tag_delete: bool = False
    delete_status: int | None = None
    tag_delete_status: int | None = None
    message: str | None = None  # why nothing can be deleted, and what to do

    def to_json(self) -> dict[str, object]:
        return {
            "deletes": self.deletes,
            "delete_status": self.delete_status,
            "tag_delete": self.tag_delete,
            "tag_delete_status": self.tag_delete_status,
            "message": self.message,
        }


def placeholder(client: Registry, repository: str) -> Manifest:
    """A new tiny manifest (its config blob stored first) that nothing else refers to."""
    config = client.upload_blob(repository, EMPTY_CONFIG)
    empty = {"mediaType": EMPTY_MEDIA_TYPE, "digest": config.digest, "size": config.size}
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": PLACEHOLDER_TYPE,
        "config": empty,
        "layers": [empty],
        "annotations": {PLACEHOLDER_KEY: secrets.token_hex(16)},
    }
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return Manifest.from_bytes(data, OCI_MANIFEST)


def vendor_hint(client: Registry) -> str | None:
    """Why the distribution API cannot delete on this host (GHCR, Docker Hub), if so."""
    host = client.endpoint.host.lower()
    vendor = "docker.io" if host in _HUB_HOSTS else host if host in VENDOR_HINTS else None
    return VENDOR_HINTS[vendor] if vendor is not None else None


def probe(client: Registry, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
    """Whether `repository` can be pruned, and how a tag is removed there (see above)."""
    hint = vendor_hint(client)
    if hint is not None:
        return Capabilities(deletes=False, message=f"{registry}: {hint}")
    first = placeholder(client, repository)
    client.put_manifest(repository, first.digest, first)
    try:
        client.delete_manifest(repository, first.digest)
    except RegistryError as error:
        if error.kind not in ("unsupported", "denied", "auth"):
            raise
        return Capabilities(
            deletes=False, delete_status=error.status, message=_refused(registry, error)
        )
    if not tags_too:
        return Capabilities(deletes=True, delete_status=202)
    return _probe_tag_delete(client, repository)


def _probe_tag_delete(client: Registry, repository: str) -> Capabilities:
    second = placeholder(client, repository)
    tag = f"shipit-probe-{secrets.token_hex(6)}"
    client.put_manifest(repository, tag, second)
    status = 202
    try:
        works = client.delete_tag(repository, tag)
    except RegistryError as error:
        works, status = False, error.status or 0
    still_there = client.manifest_digest(repository, second.digest) == second.digest
    if still_there:
        client.delete_manifest(repository, second.digest)  # and the probe tag, if it stayed
    # a registry that deleted the manifest along with the tag has no tag-only DELETE
    return Capabilities(
        deletes=True, delete_status=202, tag_delete=works and still_there, tag_delete_status=status
    )


def _refused(registry: str, error: RegistryError) -> str:
    if error.kind == "unsupported":
        what = (
            "turn deletes on (the distribution registry: `storage: {delete: {enabled: true}}` in"
            " its config), or prune there with the registry's own retention"
        )
    else:
        what = "give credentials that may delete in this repository"
    said = f"{error.status}: {error.message}"
    return f"{registry} refuses deletes ({said}); nothing was deleted there: {what}"
