"""A real `shipit run` whose CI outputs cannot be written, after a real push.

The images are published by the time shipit writes GITHUB_OUTPUT, GITHUB_STEP_SUMMARY or
GitLab's dotenv; a file it cannot write there (gitlab-ci-local pointed CI_PROJECT_DIR at a
folder that did not exist) must be a clear error naming the file and the variable, with the
push intact in the registry and in the report, and exit 1, never an internal error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shipit.registry import Endpoint, Registry
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_lines(err: str) -> list[str]:
    """The errors on stderr: `error: X` (colours taken off) or GitHub's `::error::X`."""
    plain = ANSI.sub("", err).splitlines()
    return [
        re.split(r"^::error::|error: ", line, maxsplit=1)[1] for line in plain if "error:" in line
    ]


def published(reg: RunningRegistry, repository: str, tag: str) -> str:
    """The digest `repository:tag` has in the registry."""
    with Registry(Endpoint(host=reg.host)) as client:
        return client.manifest(repository, tag).digest


def assert_push_intact(report: dict[str, Any], reg: RunningRegistry, repository: str) -> None:
    assert report["status"] == "success"
    [image] = report["images"]
    assert image["status"] == "ok" and image["refs"]
    for ref in image["refs"]:
        assert ref["pushed"] and ref["error"] is None
        tag = ref["ref"].rpartition(":")[2]
        assert published(reg, repository, tag) == ref["digest"] == image["digest"]


def test_gitlab_with_a_ci_project_dir_that_does_not_exist(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/ci-outputs]\nimage: {{name: gitlab}}\n"
    project = make_project(tmp_path / "project", spec)
    missing = tmp_path / "builds" / "not-there"
    env = run_env(
        dockerd.host,
        tmp_path,
        GITLAB_CI="true",
        CI_PROJECT_DIR=str(missing),
        CI_COMMIT_BRANCH="main",
        CI_COMMIT_SHA=git(project, "rev-parse", "HEAD"),
    )
    code, out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    expected = (
        f"cannot write the CI output {missing / 'shipit.env'} (from CI_PROJECT_DIR):"
        " No such file or directory"
    )
    assert code == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert error_lines(err) == [expected], err
    assert "main" in out  # the summary table is still printed
    report = json.loads((project / "shipit-report.json").read_text(encoding="utf-8"))
    assert report["error"] == expected
    assert_push_intact(report, plain_registry, "ci-outputs/gitlab")
    assert not missing.exists()


def test_github_with_outputs_it_cannot_write(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/ci-outputs]\nimage: {{name: github}}\n"
    project = make_project(tmp_path / "project", spec)
    output = tmp_path / "runner" / "missing" / "output"
    summary = tmp_path / "summary"
    summary.mkdir()  # a folder where the summary file should be
    env = run_env(
        dockerd.host,
        tmp_path,
        GITHUB_ACTIONS="true",
        GITHUB_OUTPUT=str(output),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_REF="refs/heads/main",
        GITHUB_SHA=git(project, "rev-parse", "HEAD"),
        GITHUB_EVENT_NAME="push",
    )
    report_path = tmp_path / "out" / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report_path)], capsys, env
    )
    assert code == 1, err
    assert "internal error" not in err, err
    failures = [
        f"cannot write the CI output {output} (from GITHUB_OUTPUT): No such file or directory",
        f"cannot write the CI output {summary} (from GITHUB_STEP_SUMMARY): Is a directory",
    ]
    assert error_lines(err) == failures, err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["error"] == "; ".join(failures)
    assert_push_intact(report, plain_registry, "ci-outputs/github")
