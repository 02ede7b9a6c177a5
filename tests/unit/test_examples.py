"""Every example under examples/ plans and validates offline, with no Docker and no variables.

Their CI files are checked too: YAML that parses, only inputs the action has, and a GitLab
matrix that agrees with `shipit matrix --format gitlab`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "shipit.yml").is_file())
# The action's inputs, as action.yml declares them (this list when it is not there yet).
ACTION_INPUTS = {
    "spec", "working-directory", "args", "push", "dry-run", "image", "skip", "report", "verbose",
    "leg", "platform", "leg-record", "merge", "legs", "install-tools",
}  # fmt: skip


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """shipit in-process with nothing of the developer's environment but PATH."""
    code = main(args, env={"PATH": os.environ["PATH"]})
    out, err = capsys.readouterr()
    return code, out, err


def ci_files(name: str) -> list[Path]:
    folder = EXAMPLES / name
    return sorted([*folder.glob(".github/workflows/*.yml"), *folder.glob(".gitlab-ci.yml")])


def test_the_examples_are_there() -> None:
    assert {"hello", "monorepo", "multi-registry"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_plan(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", "--json", "-C", str(EXAMPLES / name)], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["schema"] == 1
    assert plan["images"], "an example builds at least one image"
    for image in plan["images"]:
        assert image["skipped"] is None
        assert image["stages"][0] == "build" and "push" in image["stages"]
        assert image["tags"] and image["refs"]
        assert len(image["refs"]) == len(image["tags"]) * len(image["targets"])
        assert Path(image["build"]["context"]).is_relative_to(EXAMPLES / name)
    assert "Traceback" not in err


@pytest.mark.parametrize("name", NAMES)
def test_validate(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", "-C", str(EXAMPLES / name)], capsys)
    assert code == 0, err
    assert "valid (" in out


@pytest.mark.parametrize("name", NAMES)
def test_a_release_plans_too(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["matrix", "-C", str(EXAMPLES / name)], capsys)
    assert code == 0, err
    images = json.loads(out)["include"]
    for image in images:
        ref = "refs/tags/v1.0.0" if name != "monorepo" else f"refs/tags/{image['image']}/v1.0.0"
        code, out, err = run(["version", "-C", str(EXAMPLES / name), "--ref", ref], capsys)
        assert code == 0, err
        assert out == "1.0.0\n"


def test_monorepo_matrix_of_a_release_tag(capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(EXAMPLES / "monorepo")
    code, out, err = run(["matrix", "-C", folder, "--ref", "refs/tags/api/v1.0.0"], capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "include": [{"image": "api", "version": "1.0.0", "context": "services/api"}]
    }
    code, out, _ = run(["matrix", "-C", folder, "--ref", "refs/tags/web/v2.1.0"], capsys)
    assert [i["image"] for i in json.loads(out)["include"]] == ["web"]
    code, out, _ = run(["matrix", "-C", folder], capsys)
    assert [(i["image"], i["context"]) for i in json.loads(out)["include"]] == [
        ("api", "services/api"),
        ("web", "services/web"),
    ]


def test_monorepo_gitlab_matrix_is_the_one_shipit_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["matrix", "-C", str(EXAMPLES / "monorepo"), "--format", "gitlab"], capsys)
    assert code == 0, err
    pipeline = yaml.safe_load((EXAMPLES / "monorepo" / ".gitlab-ci.yml").read_text("utf-8"))
    assert pipeline["release"]["parallel"] == yaml.safe_load(out)["parallel"]
    assert pipeline["release"]["extends"] == ".shipit"
    assert pipeline["release"]["variables"]["SHIPIT_ARGS"] == "--image $IMAGE"


def test_monorepo_workflow_fans_out_over_the_matrix() -> None:
    workflow = load(EXAMPLES / "monorepo" / ".github" / "workflows" / "release.yml")
    plan, release = workflow["jobs"]["plan"], workflow["jobs"]["release"]
    assert any("shipit matrix" in step.get("run", "") for step in plan["steps"])
    assert plan["outputs"]["matrix"] == "${{ steps.matrix.outputs.matrix }}"
    assert release["needs"] == "plan"
    assert release["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    [action] = [step for step in release["steps"] if step.get("uses") == "./"]
    assert action["with"]["image"] == "${{ matrix.image }}"


@pytest.mark.parametrize("name", NAMES)
def test_ci_files_use_the_action_and_template_as_declared(name: str) -> None:
    inputs = action_inputs()
    for path in ci_files(name):
        document = load(path)
        if ".github" in path.parts:
            for job in document["jobs"].values():
                for step in job["steps"]:
                    assert "${{" not in step.get("run", ""), f"{path}: an expression in run:"
                    if step.get("uses") == "./":
                        assert set(step.get("with", {})) <= inputs, path
        else:
            jobs = {k: v for k, v in document.items() if isinstance(v, dict) and k != "variables"}
            templates = {".shipit", ".shipit-leg", ".shipit-merge", ".shipit-buildah"}
            assert any(
                job.get("extends") in templates or key == "shipit" for key, job in jobs.items()
            )


@pytest.mark.parametrize("name", [n for n in NAMES if ci_files(n)])
def test_ci_files_match_the_providers_schemas(name: str) -> None:
    for path in ci_files(name):
        schema = "vendor.github-workflows" if ".github" in path.parts else "vendor.gitlab-ci"
        result = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def action_inputs() -> set[str]:
    action = ROOT / "action.yml"
    if action.is_file():
        return set(load(action).get("inputs", {}))
    return ACTION_INPUTS
