"""What a run leaves behind: the result document (schema 1) and the summary table."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from shipit.execute import ImageResult, RunResult
from shipit.log import PLAIN, Style
from shipit.render import table

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
        "images": [_image(image) for image in result.images],
    }


def _image(image: ImageResult) -> dict[str, Any]:
    refs = []
    for target in image.targets:
        digest_ref = target.digest_ref()
        for ref in target.refs:
            pushed = ref in target.pushed
            refs.append(
                {
                    "registry": target.registry,
                    "ref": ref,
                    "digest": target.digest if pushed else None,
                    "pushed": pushed,
                    "signed": pushed and image.signed(digest_ref),
                    "error": None if pushed else target.error,
                }
            )
    return {
        "name": image.name,
        "version": image.version,
        "status": image.status,
        "error": image.error,
        "image_id": image.image_id,
        "tags": list(image.tags),
        "refs": refs,
        "scan": image.scan.to_json() if image.scan is not None else None,
    }


def write(path: Path, result: RunResult) -> None:
    """Write the document atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document(result), indent=2) + "\n"
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
                status = "signed" if image.signed(target.digest_ref()) else "pushed"
            elif target.pushed:
                status = f"partial ({len(target.pushed)}/{len(target.refs)}): {target.error}"
            else:
                status = f"failed: {target.error}"
            tags = [ref.rpartition(":")[2] for ref in target.refs]
            digest = target.digest[:19] if target.digest else "-"
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
