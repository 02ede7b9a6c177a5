"""Leg records: a leg document kept in the registry, where `shipit merge` finds it.

Matrix jobs of one GitHub Actions job share their output names, and a merge job can only
`needs:` the whole matrix; so a leg run with `--leg-record` also stores its leg document in
every registry of its image, as a small OCI artifact (an image manifest whose `artifactType`
and one layer are `application/vnd.shipit.leg.v1+json`, with the empty config
`application/vnd.oci.empty.v1+json`, as the OCI image spec 1.1 describes artifacts), under
the tag `legs.record_tag(commit, version, platform)`. The tag points at that artifact, never
at an image, so no image is tagged before the merge. `shipit merge` with no files computes
the same tag for every planned platform and reads the record from the first registry that
has it; the record's contents are then checked like a leg file's (`legs.match`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

from shipit.legs import LEG_MEDIA_TYPE, Leg, record_tag
from shipit.log import Console
from shipit.plan import ImagePlan
from shipit.registry import OCI_MANIFEST, Descriptor, Manifest, RegistryError
from shipit.registry.oci import compute_digest
from shipit.stages.preflight import Access

EMPTY_MEDIA_TYPE: Final = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG: Final = b"{}"
MAX_RECORD: Final = 256 * 1024


def record_manifest(leg: Leg, document: bytes, empty: Descriptor) -> Manifest:
    """The artifact manifest of one leg record (`document` is its one layer)."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": LEG_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.digest, "size": empty.size},
        "layers": [
            {
                "mediaType": LEG_MEDIA_TYPE,
                "digest": compute_digest(document),
                "size": len(document),
            }
        ],
        "annotations": {
            "org.opencontainers.image.revision": leg.commit,
            "org.opencontainers.image.version": leg.version,
            "dev.shipit.leg.image": leg.image,
            "dev.shipit.leg.platform": leg.platform,
        },
    }
    return Manifest.from_bytes(json.dumps(body, indent=2).encode() + b"\n", OCI_MANIFEST)


def store(image: ImagePlan, leg: Leg, access: Mapping[str, Access], console: Console) -> list[str]:
    """Store `leg` in every registry of `image`; the problems, one per registry that failed."""
    document = json.dumps(leg.to_json(), indent=2).encode() + b"\n"
    tag = record_tag(leg.commit, leg.version, leg.platform)
    problems = []
    with console.group(f"record the leg {image.name} {leg.platform}"):
        for target in image.targets:
            client = access[target.registry].client
            try:
                empty = client.upload_blob(target.repository, EMPTY_CONFIG)
                client.upload_blob(target.repository, document)
                client.put_manifest(target.repository, tag, record_manifest(leg, document, empty))
            except RegistryError as exc:
                problems.append(f"{target.registry}: the leg record was not stored: {exc}")
                continue
            console.write(f"{target.registry}: leg recorded as {target.repository}:{tag}")
    return problems


def find(
    images: Sequence[ImagePlan], commit: str, access: Mapping[str, Access], console: Console
) -> list[Leg]:
    """The legs recorded for this commit, each read from the first registry that has it.

    A platform with no record anywhere is simply not in the list (`legs.match` then names
    it); a record that is there but unreadable is a `ValueError` naming where it is."""
    found = []
    with console.group("find the legs in the registries"):
        for image in images:
            for platform in image.build.platforms:
                leg = _find_one(image, platform, commit, access, console)
                if leg is not None:
                    found.append(leg)
    return found


def _find_one(
    image: ImagePlan, platform: str, commit: str, access: Mapping[str, Access], console: Console
) -> Leg | None:
    tag = record_tag(commit, image.version.text, platform)
    for target in image.targets:
        client = access[target.registry].client
        where = f"{target.host}/{target.repository}:{tag}"
        try:
            if not client.has_manifest(target.repository, tag):
                console.write(f"{target.registry}: no leg record {tag}")
                continue
            manifest = client.manifest(target.repository, tag)
            layers = [b for b in manifest.blobs() if b.media_type == LEG_MEDIA_TYPE]
            if len(layers) != 1:
                raise ValueError(f"{where} is not a shipit leg record")
            data = client.read_blob(target.repository, layers[0], limit=MAX_RECORD)
        except RegistryError as exc:
            console.write(f"{target.registry}: the leg record {tag} cannot be read: {exc}")
            continue
        try:
            document = json.loads(data)
        except ValueError:
            raise ValueError(f"{where} holds no JSON leg document") from None
        leg = Leg.from_json(document, where)
        console.write(f"{image.name} {platform}: leg {leg.digest} (recorded in {target.registry})")
        return leg
    return None
