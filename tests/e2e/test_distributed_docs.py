"""docs/distributed.md holds workflows a user can paste: the GitHub one
passes GitHub's workflow schema and zizmor (only shipit's own `OWNER/shipit@v1` placeholder
is unpinned), the GitLab one passes GitLab's schema, and the three say the same as the
example that the end-to-end tests run (examples/multi-platform): the same jobs, the same
action inputs and templates, and a leg matrix that is what `shipit matrix --by platform
--format gitlab` prints for the page's spec.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_ci_schemas import check_jsonschema, zizmor_high
from tests.support.cli import run_shipit
from tests.support.gitrepo import make_repo
from tests.support.services import REPO

PAGE = REPO / "docs" / "distributed.md"
EXAMPLE = REPO / "examples" / "multi-platform"

pytestmark = pytest.mark.timeout(300)


def section() -> str:
    return PAGE.read_text(encoding="utf-8")


def block(marker: str) -> str:
    found = [b for b in re.findall(r"```yaml\n(.*?)```", section(), flags=re.S) if marker in b]
    assert len(found) == 1, f"docs/distributed.md: expected one yaml block with {marker!r}"
    return found[0]


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if step.get("uses") == action]


def test_the_github_workflow_is_valid_and_clean(tmp_path: Path) -> None:
    workflow = tmp_path / ".github" / "workflows" / "release.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(block("jobs:"), encoding="utf-8")
    check_jsonschema("vendor.github-workflows", workflow)
    findings = zizmor_high(workflow)
    assert {f["ident"] for f in findings} == {"unpinned-uses"}, json.dumps(findings, indent=2)
    assert all("OWNER/shipit@v1" in json.dumps(f) for f in findings)


def test_the_github_workflow_is_the_examples(tmp_path: Path) -> None:
    docs = yaml.safe_load(block("jobs:"))
    example = yaml.safe_load((EXAMPLE / ".github" / "workflows" / "release.yml").read_text())
    assert docs["env"] == example["env"]
    assert set(docs["jobs"]) == set(example["jobs"]) == {"plan", "leg", "merge"}
    for name in ("leg", "merge"):
        mine, theirs = docs["jobs"][name], example["jobs"][name]
        for key in ("needs", "runs-on", "permissions", "strategy", "outputs"):
            assert mine.get(key) == theirs.get(key), (name, key)
        [docs_step] = steps_using(mine, "OWNER/shipit@v1")
        [example_step] = steps_using(theirs, "./")
        example_inputs = dict(example_step["with"])
        assert example_inputs.pop("working-directory") == "examples/multi-platform"
        assert docs_step["with"] == example_inputs
    assert "shipit matrix --by platform" in docs["jobs"]["plan"]["steps"][-1]["run"]


def test_the_gitlab_pipeline_is_valid_and_is_the_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / ".gitlab-ci.yml"
    pipeline.write_text(block("extends: .shipit-leg"), encoding="utf-8")
    check_jsonschema("vendor.gitlab-ci", pipeline)
    docs = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    example = yaml.safe_load((EXAMPLE / ".gitlab-ci.yml").read_text(encoding="utf-8"))
    for name in ("leg", "merge"):
        mine, theirs = dict(docs[name]), dict(example[name])
        assert mine.pop("parallel", None) is not None or name == "merge"
        theirs.pop("parallel", None)
        assert mine == theirs, name
    # the leg matrix is what shipit prints for the page's spec
    repo = tmp_path / "repo"
    make_repo(repo)
    (repo / "shipit.yml").write_text(block("platforms: [linux/amd64, linux/arm64]"))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    code, out, err = run_shipit(
        ["matrix", "-C", str(repo), "--by", "platform", "--format", "gitlab"], capsys
    )
    assert code == 0, err
    assert docs["leg"]["parallel"] == yaml.safe_load(out)["parallel"]


def test_the_example_matrix_is_the_one_shipit_prints(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_shipit(
        ["matrix", "-C", str(EXAMPLE), "--by", "platform", "--format", "gitlab"], capsys
    )
    assert code == 0, err
    example = yaml.safe_load((EXAMPLE / ".gitlab-ci.yml").read_text(encoding="utf-8"))
    assert example["leg"]["parallel"] == yaml.safe_load(out)["parallel"]
