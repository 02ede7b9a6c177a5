"""The scan stage: Trivy reads the built image, shipit decides the gate, reports are written.

One module per concern:

- stage.py: `scan_image`, the stage itself, in the order a scan runs.
- trivy.py: running Trivy (the binary, command lines, cache lock, timeouts, failures).
- trivy_json.py: Trivy's JSON report read into findings.
- findings.py: the frozen result types (`Finding`, `Detected`, `Decision`, `ScanReport`).
- ignores.py: `.trivyignore` and `.trivyignore.yaml`, read as Trivy reads them.
- matching.py: doublestar paths and package URLs, matched as Trivy matches them.
- gate.py: what is dropped, what blocks, and the text that says why.
- formats/: the report files, one module per format (JSON, SARIF, GitLab, SBOM).

The rest of shipit uses only what this package exports.
"""

from __future__ import annotations

from shipit.stages.scan.findings import ScanReport
from shipit.stages.scan.gate import blocking_text
from shipit.stages.scan.stage import scan_image
from shipit.stages.scan.trivy import Trivy, find_trivy

__all__ = ["ScanReport", "Trivy", "blocking_text", "find_trivy", "scan_image"]
