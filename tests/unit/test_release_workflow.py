"""shipit's own release: .github/workflows/release.yml builds and signs with scripts/release,
attests provenance with a pinned actions/attest-build-provenance, publishes shipit's image with
shipit itself; the security page (SECURITY.md, and the same text in the docs site) gives the
commands that check it, naming that workflow's identity."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
ISSUER = "https://token.actions.githubusercontent.com"


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_it_runs_on_version_tags_with_no_default_permissions() -> None:
    data = workflow()
    assert data[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads `on` as True
    assert data["permissions"] == {}
    assert data["jobs"]["dist"]["permissions"] == {
        "contents": "write",
        "id-token": "write",
        "attestations": "write",
    }
    assert data["jobs"]["image"]["permissions"]["id-token"] == "write"


def test_every_remote_action_is_pinned_by_commit() -> None:
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            uses = step.get("uses", "")
            if uses and uses != "./":
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses


def test_the_files_are_built_signed_attested_and_checked() -> None:
    steps = workflow()["jobs"]["dist"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "scripts/release dist" in runs
    assert "--require-hashes --no-deps -r requirements/build.lock" in runs
    assert "requirements/downloads.sha256" in runs and "sha256sum -c" in runs
    [attest] = [s for s in steps if "attest-build-provenance" in s.get("uses", "")]
    assert attest["uses"].endswith("@a2bbfa25375fe432b6a289bc6b6cd05ecd0c4c32")  # v4.1.0
    assert attest["with"]["subject-path"].split() == ["dist/shipit-*.whl", "dist/shipit-*.tar.gz"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    assert names.index("Check the signatures as a user will") > names.index(
        "Build the wheel and the sdist, sign each keyless"
    )
    assert f"--certificate-oidc-issuer {ISSUER}" in runs
    assert runs.index('cosign" verify-blob') < runs.index("gh release create")


def test_shipit_publishes_its_own_image_with_itself() -> None:
    image = workflow()["jobs"]["image"]
    assert image["needs"] == "dist"
    [step] = [s for s in image["steps"] if s.get("uses") == "./"]
    assert step["with"]["spec"] == "shipit.yml"
    # the image holds the released wheel, its signature checked first, and the pinned
    # binaries scripts/image-inputs fetches, before the action builds it
    runs = [s.get("run", "") for s in image["steps"]]
    [inputs] = [i for i, run in enumerate(runs) if "scripts/image-inputs" in run]
    assert "gh release download" in runs[inputs]
    assert runs[inputs].index("verify-blob") < runs[inputs].index("scripts/image-inputs")
    assert inputs < image["steps"].index(step)


def test_the_security_page_is_the_same_in_the_docs_and_names_the_workflow() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    assert (ROOT / "docs" / "security.md").read_text(encoding="utf-8") == text
    section = text[text.index("## Verifying a release of shipit") :]
    identity = "https://github.com/OWNER/shipit/.github/workflows/release.yml@refs/tags/v0.1.0"
    assert f"--certificate-identity {identity}" in section
    assert section.count(f"--certificate-oidc-issuer {ISSUER}") == 3
    assert "cosign verify-blob --bundle shipit-0.1.0-py3-none-any.whl.sigstore.json" in section
    assert "gh attestation verify shipit-0.1.0-py3-none-any.whl --repo OWNER/shipit" in section
    assert "shipit verify" in section
    regexp = re.search(r"--certificate-identity-regexp '([^']+)'", section)
    assert regexp
    pattern = re.compile(regexp[1])
    assert pattern.search(identity)
    assert not pattern.search(identity.replace("OWNER/shipit", "evil/shipit-fork"))
    assert not pattern.search(identity.replace("release.yml", "release.yml.evil"))


def test_the_released_files_go_to_pypi_by_trusted_publishing() -> None:
    pypi = workflow()["jobs"]["pypi"]
    assert pypi["needs"] == "dist"
    assert pypi["permissions"] == {"contents": "read", "id-token": "write"}
    assert pypi["environment"]["name"] == "pypi"
    [fetch, publish] = pypi["steps"]
    assert "sha256sum -c" in fetch["run"] and "SHA256SUMS" in fetch["run"]
    assert publish["uses"].startswith("pypa/gh-action-pypi-publish@")
    assert publish["with"] == {"packages-dir": "pypi-dist/"}  # no password: trusted publishing
