"""The `scan:` section (Trivy): the gate, the scanners, the ignore file, reports, the DB.

A mergeable section that `scan: false` turns off; a spec without `scan:` does not scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from yaml.nodes import Node

from shipit.spec.nodes import Reader
from shipit.spec.paths import PathProblem, kind, shown
from shipit.spec.records import SCANNERS, SEVERITIES, Reports, ScanPolicy
from shipit.spec.sections import Mergeable, Section

_KEYS = (
    "fail_on", "ignore_unfixed", "scanners", "ignorefile", "reports", "timeout",
    "db_repository", "cache_dir", "skip_db_update", "sbom",
)  # fmt: skip


def read_scan(r: Reader, section: Section) -> ScanPolicy | None:
    """The merged `scan:` section; None when the image is not scanned."""
    if not section.on:
        return None
    e = section.entries
    ignore_node = e.get("ignorefile")
    if ignore_node is not None:
        ignorefile = r.existing_file(ignore_node, "ignorefile")
    else:
        ignorefile = _default_ignorefile(r.root)
    return ScanPolicy(
        fail_on=r.field(
            e, "fail_on", lambda n: r.choice(n, "fail_on", (*SEVERITIES, "never")), "HIGH"
        ),
        ignore_unfixed=r.field(
            e, "ignore_unfixed", lambda n: r.boolean(n, "ignore_unfixed"), False
        ),
        scanners=r.field(e, "scanners", lambda n: _scanners(r, n), ("vuln", "secret")),
        ignorefile=ignorefile,
        ignorefile_explicit=ignore_node is not None,
        reports=r.field(e, "reports", lambda n: _reports(r, n), Reports()),
        timeout=r.field(e, "timeout", lambda n: r.duration(n, "timeout"), 600),
        db_repository=r.field(e, "db_repository", lambda n: r.string_list(n, "db_repository"), ()),
        cache_dir=r.field(e, "cache_dir", lambda n: r.path(n, "cache_dir"), None),
        skip_db_update=r.field(
            e, "skip_db_update", lambda n: r.boolean(n, "skip_db_update"), False
        ),
        sbom=r.field(e, "sbom", lambda n: r.choice(n, "sbom", ("cyclonedx",)), None),
    )


SCAN: Final = Mergeable(key="scan", keys=_KEYS, read=read_scan, switchable=True)


def _scanners(r: Reader, node: Node) -> tuple[str, ...] | None:
    values = r.string_list(node, "scanners")
    if values is None:
        return None
    for value in values:
        if value not in SCANNERS:
            r.error(node, f"unknown scanner {shown(value)} (scanners: {', '.join(SCANNERS)})")
            return None
    if not values:
        r.error(node, "scanners is empty: write `scan: false` to turn scanning off")
        return None
    return tuple(dict.fromkeys(values))


def _reports(r: Reader, node: Node) -> Reports | None:
    entries = r.mapping(node, "reports", ("json", "sarif", "gitlab"))
    if entries is None:
        return None
    paths = {key: r.path(value, f"reports.{key}") for key, value in entries.items()}
    return Reports(json=paths.get("json"), sarif=paths.get("sarif"), gitlab=paths.get("gitlab"))


def _default_ignorefile(root: Path) -> Path | None:
    """`.trivyignore` beside the spec, when there is one (and it can be looked at)."""
    default = root / ".trivyignore"
    try:
        return default if kind(default) == "file" else None
    except PathProblem:
        return None
