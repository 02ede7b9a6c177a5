"""The command line, in-process and as a real process: options, env, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_shipit
from tests.support.gitrepo import make_repo

SPEC = """\
version: 1
registries: [ghcr.io/acme, "localhost:5000"]
image: {name: app}
"""

BROKEN = """\
version: 1
registries: [ghcr.io/acme]
image:
  name: app
  tags:
    - {type: raw}
    - {type: semver, pattern: "{{ majr }}"}
  flavor: {latest: sometimes}
push: {retries: 99}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_repo(root, [{"tag": "v1.0.0"}, {}], branch="main")
    (root / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (root / "shipit.yml").write_text(SPEC, encoding="utf-8")
    return root


run = run_shipit


def test_plan_human_output(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["plan", "-C", str(repo)], capsys)
    assert code == 0
    assert "image app  version 1.0.1-dev.1+g" in out
    assert "stages   build -> push" in out
    assert "ghcr.io/acme/app:main" in out and "localhost:5000/app:main" in out


def test_shared_options_go_before_or_after_the_command(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, before, _ = run(["-C", str(repo), "tags", "--ref", "refs/tags/v2.0.0"], capsys)
    _, after, _ = run(["tags", "-C", str(repo), "--ref", "refs/tags/v2.0.0"], capsys)
    _, mixed, _ = run(["--ref", "refs/tags/v2.0.0", "tags", "-C", str(repo)], capsys)
    assert before == after == mixed
    assert "ghcr.io/acme/app:2.0.0\n" in before and "localhost:5000/app:latest\n" in before


def test_shipit_variables_fill_options_and_the_command_line_wins(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SHIPIT_DIRECTORY": str(repo), "SHIPIT_REF": "refs/tags/v3.0.0"}
    _, out, _ = run(["version"], capsys, env)
    assert out == "3.0.0\n"
    _, out, _ = run(["version", "--ref", "refs/tags/v4.0.0"], capsys, env)
    assert out == "4.0.0\n"
    _, out, _ = run(["--ref", "refs/tags/v5.0.0", "version"], capsys, env)
    assert out == "5.0.0\n"


def test_file_is_relative_to_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "ci").mkdir()
    (repo / "ci" / "other.yml").write_text(
        SPEC.replace("name: app", "name: other, context: .."), encoding="utf-8"
    )
    code, out, err = run(["tags", "-C", str(repo), "-f", "ci/other.yml"], capsys)
    assert code == 0, err
    assert out.startswith("ghcr.io/acme/other:")


def test_tags_json_document(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["tags", "--json", "-C", str(repo), "--ref", "refs/tags/v1.1.0"], capsys)
    document = json.loads(out)
    assert document["version"] == "1.1.0"
    [image] = document["images"]
    assert image["name"] == "app"
    assert image["tags"][:4] == ["1.1.0", "1.1", "1", "v1.1.0"]
    assert image["refs"][0] == "ghcr.io/acme/app:1.1.0"
    assert len(image["refs"]) == 2 * len(image["tags"])


def test_plan_json_is_the_plan(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["plan", "--json", "-C", str(repo), "--skip", "push"], capsys)
    document = json.loads(out)
    assert document["schema"] == 1
    assert document["images"][0]["stages"] == ["build"]


def test_validate_lists_every_problem_with_its_location(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "shipit.yml").write_text(BROKEN, encoding="utf-8")
    code, out, err = run(["validate", "-C", str(repo)], capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    spec = f"{repo}/shipit.yml"
    assert lines == [
        f"{spec}:6:7: a 'raw' tag rule needs a `value`",
        f"{spec}:7:31: pattern: unknown name 'majr' in template (did you mean 'major'?)",
        f"{spec}:8:20: latest must be one of auto, true, false, not 'sometimes'",
        f"{spec}:9:17: retries must be at most 10, not 99",
        "shipit: 4 problems in the spec",
    ]
    assert "Traceback" not in err


def test_validate_of_a_good_spec(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", "-C", str(repo)], capsys)
    assert code == 0 and out.endswith("valid (1 image)\n")


def test_spec_problems_become_github_annotations(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "shipit.yml").write_text(BROKEN, encoding="utf-8")
    code, _, err = run(["validate", "-C", str(repo)], capsys, {"GITHUB_ACTIONS": "true"})
    assert code == 2
    assert (
        f"::error file={repo}/shipit.yml,line=9,col=17::retries must be at most 10, not 99" in err
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "--event", "merge"], "Invalid value for '--event'"),
        (["plan", "--ref", "main"], "shipit: error: --ref must be a full ref, not 'main'"),
        (["plan", "--pr", "x"], "Invalid value for '--pr'"),
        (
            ["plan", "--skip", "lint"],
            "shipit: error: --skip takes build, scan, push, sign; not lint",
        ),
        (["launch"], "No such command 'launch'"),
        (["plan", "-f", "missing.yml"], "shipit: error: no spec at"),
    ],
)
def test_bad_usage_exits_2_with_a_message(
    repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run([*args, "-C", str(repo)], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["plan", "-C", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such folder" in err


def test_schema_command_prints_the_packaged_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schema"], capsys)
    assert code == 0
    assert json.loads(out)["title"] == "shipit.yml"


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "plan" in out and "validate" in out
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "shipit, version" in out


def test_plan_runs_as_a_process_without_docker_and_without_importing_it(
    repo: Path, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from shipit.cli import main\n"
        f"code = main(['plan', '-C', {str(repo)!r}])\n"
        "assert 'docker' not in sys.modules, 'plan imported the Docker SDK'\n"
        "sys.exit(code)\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "version 1.0.1-dev.1+g" in result.stdout


def test_python_dash_m_shipit(repo: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "shipit", "version", "-C", str(repo)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1.0.1-dev.1+g")


@pytest.mark.parametrize(
    ("args", "code", "stream", "text"),
    [(["--version"], 0, "out", "shipit, version"), (["plan", "-C", "/nonexistent"], 2, "err",
      "no such folder")],
)  # fmt: skip
def test_the_command_leaves_with_its_code_its_output_and_every_atexit_handler_run(
    args: list[str], code: int, stream: str, text: str
) -> None:
    """`run_main` leaves with os._exit (no interpreter teardown): what atexit was asked to
    do still happens, after the output, and nothing written is lost."""
    program = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        f"sys.argv = ['shipit', *{args!r}]\n"
        "from shipit.cli import run_main\n"
        "run_main()\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == code
    assert text in (done.stdout if stream == "out" else done.stderr)
    assert done.stdout.endswith("atexit ran\n") and "not reached" not in done.stdout
