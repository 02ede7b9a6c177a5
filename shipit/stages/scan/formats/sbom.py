"""The CycloneDX SBOM, written by `trivy image --format cyclonedx` from the image itself.

It is an inventory of the image rather than a view of the findings, so it is not a
`Format`: Trivy writes it right after the scan, while the scan holds the cache folder.
"""

from __future__ import annotations

from pathlib import Path

from shipit.spec import Reports
from shipit.stages.scan.formats.paths import safe_tag
from shipit.stages.scan.trivy import Trivy


def sbom_path(reports: Reports, root: Path, tag: str | None) -> Path:
    """`sbom.cdx.json` next to the JSON report (or the first report set), else in `root`."""
    anchor = reports.json or reports.sarif or reports.gitlab
    folder = anchor.parent if anchor else root
    return folder / (f"sbom.{safe_tag(tag)}.cdx.json" if tag else "sbom.cdx.json")


def write(trivy: Trivy, image: str, root: Path | None, suffix: str | None) -> tuple[Path, ...]:
    """The SBOM of `image`, when the policy asks for one (`scan.sbom: cyclonedx`)."""
    policy = trivy.policy
    if policy.sbom != "cyclonedx":
        return ()
    path = sbom_path(policy.reports, root or Path.cwd(), suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    trivy.run(trivy.sbom_argv(image, path))
    return (path,)
