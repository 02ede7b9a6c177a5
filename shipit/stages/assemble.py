"""The OCI image index shipit writes for a multi-platform image.

BuildKit can write an index itself, but shipit assembles its own from the platform manifests
it pushes: the bytes are made once and uploaded unchanged everywhere, so every registry holds
the same index digest; and the index lists images only: no `unknown/unknown` attestation
entries, which some registries and runtimes reject (provenance goes next to the image, as a
cosign attestation, instead).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shipit.registry import OCI_INDEX, Manifest


@dataclass(frozen=True, kw_only=True)
class PlatformPart:
    """One platform of a multi-platform image: its name and its pushed manifest."""

    platform: str  # os/architecture[/variant]
    manifest: Manifest


def platform_fields(platform: str) -> dict[str, str]:
    """`linux/arm64/v8` as the index's platform object (os, architecture, variant)."""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {platform!r} is not os/architecture[/variant]")
    fields = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        fields["variant"] = parts[2]
    return fields


def image_index(parts: Sequence[PlatformPart], annotations: Mapping[str, str]) -> Manifest:
    """An OCI image index of `parts`, in their order, with `annotations` (sorted by key)."""
    if not parts:
        raise ValueError("an image index needs at least one platform")
    platforms = [p.platform for p in parts]
    if len(set(platforms)) != len(platforms):
        raise ValueError(f"platforms listed twice: {', '.join(platforms)}")
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": part.manifest.media_type,
                "digest": part.manifest.digest,
                "size": len(part.manifest.data),
                "platform": platform_fields(part.platform),
            }
            for part in parts
        ],
    }
    if annotations:
        document["annotations"] = dict(sorted(annotations.items()))
    return Manifest.from_bytes(json.dumps(document, indent=2).encode() + b"\n", OCI_INDEX)
