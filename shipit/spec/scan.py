"""The `scan:` section (Trivy): the gate, the scanners, the ignore file, reports, the DB.

A mergeable section that `scan: false` turns off; a spec without `scan:` does not scan.
"""

from __future__ import annotations

import re
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
_DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,9})s)?")
_SECONDS = re.compile(r"()()([0-9]{1,9})")  # plain seconds, as the same three groups
MAX_TIMEOUT: Final = 7 * 24 * 3600  # seconds: a week (a scan takes minutes)


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
        timeout=r.field(e, "timeout", lambda n: _duration(r, n), 600),
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


def _duration(r: Reader, node: Node) -> int | None:
    """Seconds, or a duration like 10m or 1h30m, as seconds."""
    text = r.string(node, "timeout")
    if text is None:
        return None
    match = _SECONDS.fullmatch(text) or _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        r.error(node, f"timeout {shown(text)} must be seconds or a duration like 10m or 1h30m")
        return None
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_TIMEOUT:
        r.error(node, f"timeout {shown(text)} is longer than {MAX_TIMEOUT // 3600}h")
        return None
    return total


def _default_ignorefile(root: Path) -> Path | None:
    """`.trivyignore` beside the spec, when there is one (and it can be looked at)."""
    default = root / ".trivyignore"
    try:
        return default if kind(default) == "file" else None
    except PathProblem:
        return None
