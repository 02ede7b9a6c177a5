"""The JSON report: Trivy's own JSON, holding exactly what the gate saw.

When shipit dropped findings that are still in Trivy's JSON (the unfixed ones), Trivy
rewrites its JSON with exactly those suppressed (`trivy convert` with a generated ignore
file that names each one by id and package URL), so the JSON and SARIF reports hold what
the gate saw, whatever formats are asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shipit import log
from shipit.stages.scan.findings import Decision, sort_key
from shipit.stages.scan.formats.interface import Scanned
from shipit.stages.scan.ignores import suppression_file
from shipit.stages.scan.trivy import Trivy
from shipit.stages.scan.trivy_json import load_report, parse_findings

_log = log.get(__name__)


def write(scanned: Scanned, path: Path) -> None:
    """Trivy's JSON of what the gate saw, copied to `path`."""
    shutil.copyfile(scanned.gate_json, path)


def gate_json(trivy: Trivy, raw_json: Path, decision: Decision, work: Path) -> Path:
    """Trivy's JSON with what shipit dropped suppressed by Trivy itself; checked against
    shipit's own decision, so a disagreement is said out loud."""
    ignores = work / "shipit-ignore.yaml"
    ignores.write_text(json.dumps(suppression_file(decision.dropped), indent=2), encoding="utf-8")
    filtered = work / "trivy-filtered.json"
    trivy.run(trivy.convert_argv(raw_json, filtered, "json", ignores.name), cwd=work)
    theirs = sorted(sort_key(d) for d in parse_findings(load_report(filtered)))
    ours = sorted(sort_key(d) for d in decision.kept)
    if theirs != ours:
        _log.warning(
            "Trivy's rewritten report and shipit's gate disagree; the gate counts %d findings, "
            "the report holds %d",
            len(ours),
            len(theirs),
        )
    return filtered
