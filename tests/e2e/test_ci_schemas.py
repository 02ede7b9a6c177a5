"""The GitHub files the project ships are valid and clean: action.yml against the GitHub
Actions metadata schema, the example workflows and the one in docs/github-actions.md against
the workflow schema (check-jsonschema's bundled copies), and zizmor reports nothing of high
severity on any of them. The spec in the docs is a valid spec.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main
from tests.support.gitrepo import make_repo
from tests.support.services import REPO, tool_path

ACTION = REPO / "action.yml"
DOCS = REPO / "docs" / "github-actions.md"
WORKFLOWS = sorted(REPO.glob("examples/*/.github/workflows/*.yml")) + sorted(
    REPO.glob(".github/workflows/*.yml")
)
TOOL_TIMEOUT = 120

pytestmark = pytest.mark.timeout(300)


def run_tool(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def check_jsonschema(schema: str, path: Path) -> None:
    done = run_tool([tool_path("check-jsonschema"), "--builtin-schema", schema, str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


def zizmor_high(*paths: Path) -> list[dict[str, Any]]:
    """zizmor's findings of high severity (offline audits, JSON), after ignore comments."""
    done = run_tool(
        [
            tool_path("zizmor"),
            "--offline",
            "--no-progress",
            "--min-severity",
            "high",
            "--format",
            "json",
            *map(str, paths),
        ]
    )
    # exit codes: 0 clean, 10-14 findings by severity, anything else a failure of zizmor
    assert done.returncode in (0, 10, 11, 12, 13, 14), done.stdout + done.stderr
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return findings


def docs_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def docs_block(marker: str) -> str:
    found = [block for block in docs_blocks() if marker in block]
    assert len(found) == 1, f"docs/github-actions.md: expected one yaml block with {marker!r}"
    return found[0]


# -- schemas ---------------------------------------------------------------------------------


def test_action_matches_githubs_action_schema() -> None:
    check_jsonschema("vendor.github-actions", ACTION)


def test_there_are_example_workflows() -> None:
    assert REPO / "examples" / "hello" / ".github" / "workflows" / "release.yml" in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: str(p.relative_to(REPO)))
def test_workflow_matches_githubs_workflow_schema(path: Path) -> None:
    check_jsonschema("vendor.github-workflows", path)


def test_the_docs_workflow_matches_githubs_workflow_schema(tmp_path: Path) -> None:
    workflow = tmp_path / "release.yml"
    workflow.write_text(docs_block("name: release\n"), encoding="utf-8")
    check_jsonschema("vendor.github-workflows", workflow)


def test_the_docs_container_job_matches_githubs_workflow_schema(tmp_path: Path) -> None:
    # a fragment (`jobs:` alone): made a workflow with the trigger of the one above
    workflow = tmp_path / "container.yml"
    job = docs_block("container: ghcr.io/")
    workflow.write_text(f"name: release\non:\n  push:\n    tags: ['v*']\n{job}", encoding="utf-8")
    check_jsonschema("vendor.github-workflows", workflow)


# -- zizmor ----------------------------------------------------------------------------------


def test_zizmor_finds_nothing_high_in_the_action_and_the_example_workflows() -> None:
    findings = zizmor_high(ACTION, *WORKFLOWS)
    assert findings == [], json.dumps(findings, indent=2)


def test_zizmor_on_the_docs_workflow_asks_only_to_pin_shipit_itself(tmp_path: Path) -> None:
    # `uses: OWNER/shipit@v1` is a placeholder the docs explain (pin it by sha); every other
    # action in the docs is pinned by sha already.
    workflow = tmp_path / ".github" / "workflows" / "release.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(docs_block("name: release\n"), encoding="utf-8")
    findings = zizmor_high(workflow)
    assert [f["ident"] for f in findings] == ["unpinned-uses"], json.dumps(findings, indent=2)
    assert "OWNER/shipit@v1" in json.dumps(findings)


# -- the action's own rules ------------------------------------------------------------------


def test_inputs_reach_the_scripts_only_through_env() -> None:
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    used: set[str] = set()
    for step in steps:
        assert "uses" not in step, "the action must not need another action"
        assert "${{" not in step["run"], f"an expression inside run: of {step['name']}"
        for value in (step.get("env") or {}).values():
            used.update(re.findall(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", str(value)))
    assert used == set(action["inputs"]), "every input is passed to a script, and only those"
    outputs = action["outputs"]
    assert set(outputs) == {"version", "tags", "digest", "json", "leg"}
    for name, output in outputs.items():
        assert output["value"] == f"${{{{ steps.run.outputs.{name} }}}}"


def test_the_docs_spec_is_valid_and_publishes_what_the_docs_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo)[0]
    (repo / "shipit.yml").write_text(docs_block("registries:"), encoding="utf-8")
    (repo / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    env = {
        "GITHUB_REPOSITORY_OWNER": "Example",
        "GITHUB_ACTOR": "octocat",
        "DOCKERHUB_USERNAME": "example",
    }
    code = main(["validate", "-C", str(repo)], env=env)
    out, err = capsys.readouterr()
    assert code == 0, out + err

    def published(ref: str) -> set[str]:
        code = main(["tags", "-C", str(repo), "--ref", ref], env=env)
        out, err = capsys.readouterr()
        assert code == 0, err
        return set(out.split())

    short = f"sha-{sha[:7]}"
    registries = ("ghcr.io/example/myapp", "docker.io/example/myapp")
    on_main = published("refs/heads/main")
    assert on_main == {f"{r}:{t}" for r in registries for t in ("main", short)}
    release = published("refs/tags/v1.4.3")
    tags = ("1.4.3", "1.4", "1", "latest", "v1.4.3", short)
    assert release == {f"{r}:{t}" for r in registries for t in tags}
