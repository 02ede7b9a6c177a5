"""Read the OCI image layout BuildKit writes, as images shipit can push without recompressing.

`docker buildx build --output type=oci,tar=false,dest=DIR` writes an OCI image layout
(github.com/opencontainers/image-spec, image-layout.md): an `oci-layout` file, `index.json`
(an image index) and `blobs/<algorithm>/<hex>`. For a multi-platform build the index names a
nested index that lists one image manifest per platform; for one platform it names the image
manifest itself. The layers in `blobs/` are compressed already (gzip, as BuildKit's OCI
exporter writes them by default), so the push uploads those files as they are.

What is checked here, so that what is pushed is what the build said it made: the digest
buildx reported (its `--metadata-file`) is in the layout, every manifest and config blob hashes
to its digest, every layer blob exists with its size (the registry checks each layer's digest
when it takes the upload), and attestation manifests (`unknown/unknown`) are never taken for
images. A mismatch is an `ExportError` naming the part.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shipit.registry import IMAGE_MEDIA_TYPES, INDEX_MEDIA_TYPES, Descriptor, Manifest
from shipit.stages.export import ExportedImage, ExportError, Layer

MAX_DEPTH: Final = 4
_MAX_DOCUMENT: Final = 4 * 1024 * 1024
# BuildKit marks the attestation manifests it adds to an index this way (buildx's
# docs/attestations: `vnd.docker.reference.type: attestation-manifest`, platform unknown/unknown)
_REFERENCE_TYPE: Final = "vnd.docker.reference.type"


@dataclass(frozen=True, kw_only=True)
class PlatformManifest:
    """One platform's image manifest in a layout."""

    platform: str  # os/architecture[/variant]
    manifest: Manifest


def platform_manifests(root: Path, digest: str | None = None) -> tuple[PlatformManifest, ...]:
    """The image manifests under `digest` (an index or a manifest in the layout), or under
    `index.json` when `digest` is None; attestation manifests are left out."""
    _check_layout(root)
    index = _read_json(root / "index.json", "index.json")
    entries = _descriptors(index, "index.json") if digest is None else [_find(root, index, digest)]
    found: list[PlatformManifest] = []
    for entry in entries:
        found.extend(_walk(root, entry, depth=0))
    if not found:
        where = digest or "index.json"
        raise ExportError(f"the OCI layout {root} holds no image manifest under {where}")
    return tuple(found)


def load_image(root: Path, item: PlatformManifest) -> ExportedImage:
    """The image of one platform manifest: its config read and checked, its layers' files."""
    manifest = item.manifest
    blobs = manifest.blobs()
    if not blobs:
        raise ExportError(f"manifest {manifest.digest} in {root} has no config")
    config_descriptor, layer_descriptors = blobs[0], blobs[1:]
    config = _read_blob(root, config_descriptor, "config")
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise ExportError(
            f"the config {config_descriptor.digest} in {root} has no rootfs"
        ) from None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_descriptors):
        raise ExportError(
            f"manifest {manifest.digest} in {root} lists {len(layer_descriptors)} layers,"
            f" its config {len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff ids"
        )
    layers = []
    for descriptor, diff_id in zip(layer_descriptors, diff_ids, strict=True):
        path = _blob_path(root, descriptor.digest)
        try:
            size = path.stat().st_size
        except OSError:
            raise ExportError(f"the layer {descriptor.digest} is missing from {root}") from None
        if size != descriptor.size:
            raise ExportError(
                f"the layer {descriptor.digest} in {root} has {size} bytes,"
                f" its manifest says {descriptor.size}"
            )
        layers.append(Layer(diff_id=str(diff_id), path=path, descriptor=descriptor))
    return ExportedImage(
        image_id=config_descriptor.digest, config=config, layers=tuple(layers), manifest=manifest
    )


def _check_layout(root: Path) -> None:
    marker = _read_json(root / "oci-layout", "oci-layout")
    if not isinstance(marker.get("imageLayoutVersion"), str):
        raise ExportError(f"{root} is not an OCI image layout (oci-layout has no version)")


def _find(root: Path, index: dict[str, Any], digest: str) -> Descriptor:
    for entry in _descriptors(index, "index.json"):
        if entry.digest == digest:
            return entry
    # not named by index.json itself: a manifest further down, found by its blob
    path = _blob_path(root, digest)
    if not path.is_file():
        raise ExportError(f"the build reported {digest}, which the OCI layout {root} lacks")
    data = _read_bytes(path, digest)
    try:
        media_type = json.loads(data).get("mediaType", "")
    except ValueError:
        raise ExportError(f"the blob {digest} in {root} is not a manifest") from None
    return Descriptor(media_type=str(media_type), digest=digest, size=len(data))


def _walk(root: Path, entry: Descriptor, *, depth: int) -> list[PlatformManifest]:
    if depth > MAX_DEPTH:
        raise ExportError(f"the OCI layout {root} nests indexes deeper than {MAX_DEPTH}")
    if entry.media_type not in INDEX_MEDIA_TYPES | IMAGE_MEDIA_TYPES:
        return []  # an artifact (an SBOM, a signature): not an image
    manifest = _manifest(root, entry)
    if manifest.is_index:
        found = []
        doc = json.loads(manifest.data)
        for child_doc, child in zip(doc.get("manifests", []), manifest.children(), strict=True):
            if _is_attestation(child_doc, child):
                continue
            found.extend(_walk(root, child, depth=depth + 1))
        return found
    return [PlatformManifest(platform=entry.platform or _config_platform(root, manifest),
                             manifest=manifest)]  # fmt: skip


def _is_attestation(doc: Any, descriptor: Descriptor) -> bool:
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if isinstance(annotations, dict) and _REFERENCE_TYPE in annotations:
        return True
    return descriptor.platform == "unknown/unknown"


def _manifest(root: Path, entry: Descriptor) -> Manifest:
    data = _read_blob(root, entry, "manifest")
    try:
        return Manifest(media_type=entry.media_type, data=data, digest=entry.digest)
    except ValueError as exc:
        raise ExportError(f"manifest {entry.digest} in {root}: {exc}") from None


def _config_platform(root: Path, manifest: Manifest) -> str:
    """A manifest named without a platform (a one-platform build): read it from its config."""
    config = json.loads(_read_blob(root, manifest.blobs()[0], "config"))
    parts = [config.get("os"), config.get("architecture"), config.get("variant")]
    if not all(isinstance(p, str) for p in parts[:2]):
        raise ExportError(f"the config of {manifest.digest} in {root} names no os/architecture")
    return "/".join(str(p) for p in parts if p)


def _read_blob(root: Path, descriptor: Descriptor, what: str) -> bytes:
    path = _blob_path(root, descriptor.digest)
    data = _read_bytes(path, f"the {what} {descriptor.digest}")
    algorithm = descriptor.digest.split(":", 1)[0]
    got = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    if got != descriptor.digest or len(data) != descriptor.size:
        raise ExportError(
            f"the {what} blob {descriptor.digest} in {root} does not match its descriptor"
            f" (it hashes to {got}, {len(data)} bytes of {descriptor.size})"
        )
    return data


def _blob_path(root: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not hexdigest.isalnum():
        raise ExportError(f"{digest!r} is not a digest")
    return root / "blobs" / algorithm / hexdigest


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_DOCUMENT:
            raise ExportError(f"{what} at {path} is larger than {_MAX_DOCUMENT} bytes")
        return path.read_bytes()
    except OSError:
        raise ExportError(f"{what} is missing from the OCI layout ({path})") from None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    data = _read_bytes(path, what)
    try:
        doc = json.loads(data)
    except ValueError:
        raise ExportError(f"{what} of the OCI layout at {path.parent} is not JSON") from None
    if not isinstance(doc, dict):
        raise ExportError(f"{what} of the OCI layout at {path.parent} is not a JSON object")
    return doc


def _descriptors(index: dict[str, Any], what: str) -> list[Descriptor]:
    try:
        return list(Manifest.from_bytes(json.dumps(index).encode(), _index_type(index)).children())
    except ValueError as exc:
        raise ExportError(f"{what} of the OCI layout: {exc}") from None


def _index_type(index: dict[str, Any]) -> str:
    media_type = index.get("mediaType")
    return (
        media_type if media_type in INDEX_MEDIA_TYPES else "application/vnd.oci.image.index.v1+json"
    )
