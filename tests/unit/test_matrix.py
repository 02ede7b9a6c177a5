"""`shipit matrix`: the images of a spec as a CI matrix, the skipped ones left out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shipit import matrix
from shipit.context import GitFacts, GitTag, History, Overrides, resolve
from shipit.errors import UsageError
from shipit.plan import Plan, make_plan
from shipit.spec import parse
from tests.conftest import write
from tests.support.cli import run_shipit
from tests.support.gitrepo import make_repo

SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
BASE = "0f" * 20

MONOREPO = """\
version: 1
registries: [ghcr.io/acme]
images:
  - name: backend
    context: services/backend
    release: {tag_pattern: "backend/v(?P<version>.*)"}
  - name: frontend
    context: services/frontend/app
    release: {tag_pattern: "frontend/v(?P<version>.*)"}
  - name: tools
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for sub in ("services/backend", "services/frontend/app", "."):
        write(tmp_path / sub / "Dockerfile", "FROM scratch\n")
    return tmp_path


def plan_for(project: Path, spec: str = MONOREPO, ref: str | None = None) -> Plan:
    facts = GitFacts(
        head=SHA,
        branch="main",
        commit_time=datetime(2024, 2, 29, tzinfo=UTC),
        tags=(GitTag(name="backend/v1.4.3", sha=BASE),),
        history=History(head=SHA, parents={BASE: (), SHA: (BASE,)}),
    )
    ctx = resolve(facts, {}, Overrides(ref=ref))
    return make_plan(parse(spec, project / "shipit.yml", {}), ctx)


def test_every_image_of_a_branch_build(project: Path) -> None:
    document = matrix.document(plan_for(project))
    assert document == {
        "include": [
            {"image": "backend", "version": "1.4.4-dev.1+g1a2b3c4", "context": "services/backend"},
            {
                "image": "frontend",
                "version": "0.0.0-dev.2+g1a2b3c4",
                "context": "services/frontend/app",
            },
            {"image": "tools", "version": "0.0.0-dev.2+g1a2b3c4", "context": "."},
        ]
    }


def test_a_monorepo_tag_fans_out_to_its_image_only(project: Path) -> None:
    plan = plan_for(project, ref="refs/tags/backend/v1.5.0")
    document = matrix.document(plan)
    assert document == {
        "include": [{"image": "backend", "version": "1.5.0", "context": "services/backend"}]
    }


def test_images_without_a_tag_are_left_out(project: Path) -> None:
    spec = MONOREPO.replace("  - name: tools\n", "  - name: tools\n    tags: [{type: semver}]\n")
    names = [e["image"] for e in matrix.document(plan_for(project, spec))["include"]]
    assert names == ["backend", "frontend"]


def test_json_is_one_line_for_shell_scripts(project: Path) -> None:
    text = matrix.to_json(matrix.document(plan_for(project)))
    assert "\n" not in text
    assert json.loads(text)["include"][0]["image"] == "backend"


def test_gitlab_snippet_is_a_parallel_matrix(project: Path) -> None:
    snippet = matrix.gitlab_snippet(matrix.document(plan_for(project)))
    assert yaml.safe_load(snippet) == {
        "parallel": {"matrix": [{"IMAGE": ["backend", "frontend", "tools"]}]}
    }
    assert "SHIPIT_ARGS: --image $IMAGE" in snippet


def test_gitlab_snippet_of_nothing_is_an_error() -> None:
    with pytest.raises(UsageError, match="no image to build"):
        matrix.gitlab_snippet({"include": []})


def test_github_output_only_in_github_actions(tmp_path: Path) -> None:
    output = tmp_path / "output"
    document = {"include": [{"image": "api", "version": "1.0.0", "context": "."}]}
    assert not matrix.write_github_output(document, {"GITHUB_OUTPUT": str(output)})
    assert not output.exists()
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output)}
    output.write_text("version=1\n", encoding="utf-8")
    assert matrix.write_github_output(document, env)
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "version=1"  # appended, never written over
    name, _, delimiter = lines[1].partition("<<")
    assert name == "matrix" and delimiter.startswith("ghadelimiter_")
    assert json.loads(lines[2]) == document
    assert lines[3] == delimiter


# -- the command -------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_repo(root, [{"tag": "backend/v1.0.0"}, {}], branch="main")
    for sub in ("services/backend", "services/frontend/app", "."):
        write(root / sub / "Dockerfile", "FROM scratch\n")
    write(root / "shipit.yml", MONOREPO)
    return root


run = run_shipit


def test_command_prints_the_matrix(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["matrix", "-C", str(repo)], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert [e["image"] for e in document["include"]] == ["backend", "frontend", "tools"]
    assert document["include"][0]["version"].startswith("1.0.1-dev.1+g")
    assert out.count("\n") == 1


def test_command_with_a_release_ref(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["matrix", "-C", str(repo), "--ref", "refs/tags/frontend/v2.0.0"], capsys)
    assert code == 0
    assert json.loads(out) == {
        "include": [{"image": "frontend", "version": "2.0.0", "context": "services/frontend/app"}]
    }


def test_command_json_flag_is_the_default(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, plain, _ = run(["matrix", "-C", str(repo)], capsys)
    _, flagged, _ = run(["matrix", "--json", "-C", str(repo)], capsys)
    assert plain == flagged


def test_command_gitlab_format(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["-C", str(repo), "matrix", "--format", "gitlab"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["parallel"]["matrix"] == [
        {"IMAGE": ["backend", "frontend", "tools"]}
    ]


def test_command_json_and_gitlab_conflict(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["matrix", "-C", str(repo), "--json", "--format", "gitlab"], capsys)
    assert code == 2 and out == ""
    assert "--json and --format gitlab" in err


def test_command_writes_the_github_output(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "github_output"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_REF": "refs/tags/backend/v1.1.0",
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_SHA": "",
    }
    code, out, err = run(["matrix", "-C", str(repo)], capsys, env)
    assert code == 0, err
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("matrix<<ghadelimiter_")
    assert json.loads(lines[1]) == json.loads(out)
    assert json.loads(out)["include"] == [
        {"image": "backend", "version": "1.1.0", "context": "services/backend"}
    ]


def test_command_spec_in_a_subfolder(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        repo / "ci" / "images.yml",
        "version: 1\nregistries: [ghcr.io/acme]\n"
        "images: [{name: backend, context: ../services/backend}, {name: root, context: ..}]\n",
    )
    code, out, err = run(["matrix", "-C", str(repo), "-f", "ci/images.yml"], capsys)
    assert code == 0, err
    contexts = [e["context"] for e in json.loads(out)["include"]]
    assert contexts == ["../services/backend", ".."]


def test_command_gitlab_format_with_nothing_to_build(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        repo / "shipit.yml",
        "version: 1\nregistries: [ghcr.io/acme]\nimage: {name: app, tags: [{type: semver}]}\n",
    )
    code, out, _ = run(["matrix", "-C", str(repo)], capsys)
    assert code == 0 and json.loads(out) == {"include": []}
    code, out, err = run(["matrix", "-C", str(repo), "--format", "gitlab"], capsys)
    assert code == 2 and out == ""
    assert "no image to build for this ref" in err


def test_command_warns_on_stderr(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["matrix", "-C", str(repo), "--ref", "refs/tags/backend/v1.1.0"], capsys)
    assert code == 0
    assert "warning: image frontend is skipped: tag backend/v1.1.0 releases backend" in err
    assert [e["image"] for e in json.loads(out)["include"]] == ["backend"]
