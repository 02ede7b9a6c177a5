"""What a run leaves behind: the result document (schema 1) and the summary table.

A leg of a distributed build writes its leg document (`shipit.legs`) instead, with `write_json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from shipit.execute import ImageResult, RunResult
from shipit.log import PLAIN, Style
from shipit.render import table
from shipit.stages.push import TargetResult
from shipit.stages.scan.findings import combined_json

REPORT_SCHEMA = 1


def document(result: RunResult) -> dict[str, Any]:
    """The result document of DESIGN section 6."""
    return {
        "schema": REPORT_SCHEMA,
        "version": result.version,
        "status": result.status,
        "error": result.error,
        "started": _time(result.started),
        "finished": _time(result.finished),
        "source": result.source.to_json() if result.source else None,
        "builder_id": result.builder_id,
        "images": [_image(image) for image in result.images],
    }


def _image(image: ImageResult) -> dict[str, Any]:
    refs = []
    for target in image.targets:
        signed = image.fully_signed(target)
        for ref in target.refs:
            pushed = ref in target.pushed
            refs.append(
                {
                    "registry": target.registry,
                    "ref": ref,
                    "digest": target.digest if pushed else None,
                    "pushed": pushed,
                    "signed": pushed and signed,
                    "error": None if pushed else (target.error or "not tagged"),
                }
            )
    return {
        "name": image.name,
        "version": image.version,
        "status": image.status,
        "error": image.error,
        "image_id": image.image_id,
        "digest": image.digest,
        "platforms": [{"platform": p.platform, "digest": p.digest} for p in image.platforms],
        "tags": list(image.tags),
        "refs": refs,
        "registries": [_registry(image, target) for target in image.targets],
        "scan": combined_json(image.scans),
    }


def _registry(image: ImageResult, target: TargetResult) -> dict[str, Any]:
    """What one registry holds: every manifest by digest, which are signed and carry the
    provenance attestation, which tags."""
    return {
        "registry": target.registry,
        "repository": f"{target.host}/{target.repository}",
        "digest": target.digest,
        "manifests": [
            {
                "digest": digest,
                "signed": image.signed(target.digest_ref(digest)),
                "attested": image.attested(target.digest_ref(digest)),
            }
            for digest in target.stored
        ],
        "tags": [ref.rpartition(":")[2] for ref in target.pushed],
        "error": target.error,
    }


def write(path: Path, result: RunResult) -> None:
    """Write the document atomically: a reader never sees half a report."""
    write_json(path, document(result))


def write_json(path: Path, value: Any) -> None:
    """Write `value` as JSON atomically (the result document, a leg document)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    Path(tmp).replace(path)


def summary(result: RunResult, style: Style = PLAIN) -> str:
    """The table at the end of a run: image, registry, tags, digest, status."""
    rows = []
    for image in result.images:
        if not image.targets:
            rows.append([image.name, "-", ", ".join(image.tags) or "-", "-", image.status])
            continue
        for target in image.targets:
            if target.ok:
                status = "signed" if image.fully_signed(target) else "pushed"
            elif target.pushed:
                status = f"partial ({len(target.pushed)}/{len(target.refs)}): {target.error}"
            elif target.complete:
                status = "stored, untagged"
            else:
                status = f"failed: {target.error}"
            tags = [ref.rpartition(":")[2] for ref in target.refs]
            digest = target.digest[:19] if target.digest and target.pushed else "-"
            rows.append([image.name, target.registry, ", ".join(tags), digest, status])
    status_column = 4

    def paint(column: int, cell: str) -> str:
        if column == status_column:
            return style.status(cell)
        return style.paint(cell, "dim") if column == 3 else cell

    headers = ["image", "registry", "tags", "digest", "status"]
    lines = [table(headers, rows, paint=paint, paint_header=lambda h: style.paint(h, "heading"))]
    lines.append(f"result: {style.status(result.status)}")
    return "\n".join(lines)


def _time(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
