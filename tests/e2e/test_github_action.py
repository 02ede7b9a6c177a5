"""The GitHub Action, for real: act runs a workflow on the host (self-hosted mode) that checks
out a repository and uses shipit's action.yml, copied into that repository as ./shipit.

What this shows: the composite action installs shipit from its own checkout into a virtual
environment under RUNNER_TEMP with the runner's python3, reuses it for a second use in the
same job, turns inputs into options (a quoted `args` value with a space survives), builds,
scans (Trivy, secrets only: no database needed) and pushes the image to a loopback
registry, and hands back the step outputs a later step reads through `env:`.

act, offline: `--pull=false` and `--action-offline-mode` (no image or action is fetched;
`actions/checkout` of the repository being run is skipped by act, which copies the work tree
itself), `--no-cache-server`, no artifact server (none without `--artifact-server-path`),
ACT_DISABLE_VERSION_CHECK (no call home), the event from a JSON file (`-e`). act copies the
repository into $HOME/.cache/act/<random>/hostexecutor and deletes it at the end, so
everything the test reads afterwards is written to absolute paths outside it. pip reads
PIP_NO_INDEX and PIP_FIND_LINKS: a folder of the wheels requirements/*.lock pin
(tests/support/wheelhouse.py, downloaded once into .cache/locked-wheels), so the action
installs offline, and from the lock: its log shows `pip install --require-hashes --no-deps
-r requirements/shipit.lock`, and a wheel the lock does not name could not be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from shipit.cli import main
from tests.support.gitrepo import git, make_repo
from tests.support.services import REPO, Dockerd, Registry, stop_process, tool_path
from tests.support.wheelhouse import locked_wheels, runner_python

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ACT_TIMEOUT = 600.0  # seconds for one `act` run; then it is stopped by PID
RELEASE = "v1.2.3"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# -- the wheelhouse ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """The locked wheels (shipit's dependencies, its build backend, Trivy) for the python3 on
    PATH, the interpreter the action uses."""
    return locked_wheels(runner_python())


# -- the repository act runs -----------------------------------------------------------------

WORKFLOW = """\
name: release
on: push
permissions: {{}}
jobs:
  release:
    runs-on: ubuntu-latest
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          persist-credentials: false
      - name: Ship
        id: ship
        uses: ./shipit
        with:
          working-directory: app
          args: {args}
      - name: Plan with the same action again (its environment is reused)
        uses: ./shipit
        with:
          working-directory: app
          dry-run: true
      - name: Record the outputs
        env:
          VERSION: ${{{{ steps.ship.outputs.version }}}}
          TAGS: ${{{{ steps.ship.outputs.tags }}}}
          DIGEST: ${{{{ steps.ship.outputs.digest }}}}
          RESULT: ${{{{ steps.ship.outputs.json }}}}
          OUTPUTS_FILE: {outputs}
        run: |
          python3 -c 'import json, os; names = ("VERSION", "TAGS", "DIGEST", "RESULT"); json.dump({{n: os.environ[n] for n in names}}, open(os.environ["OUTPUTS_FILE"], "w"))'
"""

SPEC = """\
version: 1
registries: [{registry}/e2e]
image: {{name: hello}}
scan: {{scanners: [secret], fail_on: HIGH}}
sign: false
"""


def copy_action(dest: Path) -> None:
    """What `uses:` needs of shipit: action.yml and what `pip install .` builds from."""
    dest.mkdir(parents=True)
    for name in ("action.yml", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "requirements", dest / "requirements")
    shutil.copytree(
        REPO / "shipit", dest / "shipit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


def make_action_repo(root: Path, files: dict[str, str]) -> Path:
    """A committed repository holding ./shipit (the action) and `files`, tagged RELEASE."""
    make_repo(root)
    copy_action(root / "shipit")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the app, its workflow and the action")
    git(root, "tag", "-a", "-m", f"release {RELEASE}", RELEASE)
    # act names the repository after this remote (nothing is ever fetched from it)
    git(root, "remote", "add", "origin", "https://github.com/example/hello.git")
    return root


def write_event(path: Path, repo: Path) -> Path:
    sha = git(repo, "rev-parse", "HEAD")
    event = {
        "ref": f"refs/tags/{RELEASE}",
        "after": sha,
        "head_commit": {"id": sha},
        "repository": {"full_name": "example/hello", "default_branch": "main"},
    }
    path.write_text(json.dumps(event), encoding="utf-8")
    return path


def run_act(
    repo: Path, event: Path, env: dict[str, str], log: Path, extra: Sequence[str] = ()
) -> tuple[int, str]:
    """`act push` on the host, bounded by ACT_TIMEOUT; returns (exit code, its log).
    `extra`: more act options (`--var NAME=VALUE`, more `--platform` labels)."""
    argv = [
        tool_path("act"),
        "push",
        "--workflows",
        str(repo / ".github" / "workflows"),
        "--eventpath",
        str(event),
        "--platform",
        "ubuntu-latest=-self-hosted",
        "--pull=false",
        "--action-offline-mode",
        "--no-cache-server",
        "--defaultbranch",
        "main",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=ACT_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_process(proc.pid)
            pytest.fail(f"act did not finish in {ACT_TIMEOUT:.0f} s; its log:\n{_tail(log)}")
        finally:  # interrupted (pytest-timeout, Ctrl-C): act and what it started go too
            if proc.poll() is None:
                stop_process(proc.pid)
    return code, log.read_text(encoding="utf-8", errors="replace")


def act_env(home: Path, path: str, **extra: str) -> dict[str, str]:
    """What act (and so every step) gets: nothing of the developer's but PATH."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": path,
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "ACT_DISABLE_VERSION_CHECK": "1",
        **extra,
    }


def _tail(log: Path, lines: int = 80) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def manifest_digest(registry: Registry, repository: str, tag: str) -> str:
    r = requests.head(
        f"{registry.url()}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def registry_tags(registry: Registry, repository: str) -> list[str]:
    r = requests.get(f"{registry.url()}/v2/{repository}/tags/list", timeout=10)
    r.raise_for_status()
    return list(r.json().get("tags") or [])


# -- the tests -------------------------------------------------------------------------------


def test_the_action_releases_under_act_and_sets_its_outputs(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: Registry,
    wheelhouse: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs_file = tmp_path / "outputs.json"
    report_file = tmp_path / "report folder" / "the result.json"  # a space, to test `args`
    report_file.parent.mkdir()
    args = f'--report "{report_file}" -v'
    repo = make_action_repo(
        tmp_path / "repo",
        {
            ".github/workflows/release.yml": WORKFLOW.format(
                args=json.dumps(args), outputs=json.dumps(str(outputs_file))
            ),
            "app/shipit.yml": SPEC.format(registry=plain_registry.host),
            "app/Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n",
            "app/hello.txt": "hello from the action\n",
        },
    )
    # trivy on PATH (shipit runs it from there), and nothing else of the venv
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "trivy").symlink_to(tool_path("trivy"))
    env = act_env(
        tmp_path / "home",
        f"{tools}{os.pathsep}{os.environ['PATH']}",
        DOCKER_HOST=dockerd.host,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
    )
    code, log = run_act(repo, write_event(tmp_path / "event.json", repo), env, tmp_path / "act.log")
    assert code == 0, f"act failed ({code}); its log:\n{_tail(tmp_path / 'act.log', 150)}"

    # the action installed shipit once, from the lock, and reused it for its second use
    assert log.count("installed earlier in this job") == 1, log
    locked = "+ pip install --require-hashes --no-deps -r requirements/shipit.lock"
    assert log.count(locked) == 1, log
    assert log.count("+ pip install --no-deps --no-build-isolation") == 1, log
    assert "+ shipit run --report" in log and "--dry-run" in log

    outputs = json.loads(outputs_file.read_text(encoding="utf-8"))
    assert outputs["VERSION"] == "1.2.3"

    # every ref a release of 1.2.3 publishes, as `shipit tags` says for that ref
    code = main(["tags", "-C", str(repo / "app"), "--ref", f"refs/tags/{RELEASE}"], env={})
    expected = capsys.readouterr().out.split()
    assert code == 0 and expected
    refs = outputs["TAGS"].splitlines()
    assert sorted(refs) == sorted(expected)
    name = f"{plain_registry.host}/e2e/hello"
    assert {f"{name}:1.2.3", f"{name}:1.2", f"{name}:1", f"{name}:latest"} <= set(refs)

    # the registry has exactly those tags, all at the digest the action reported
    tags = [ref.rpartition(":")[2] for ref in refs]
    assert sorted(registry_tags(plain_registry, "e2e/hello")) == sorted(tags)
    assert outputs["DIGEST"].startswith("sha256:")
    for tag in tags:
        assert manifest_digest(plain_registry, "e2e/hello", tag) == outputs["DIGEST"]

    # the json output is the result document, also written where `args` asked
    document: dict[str, Any] = json.loads(outputs["RESULT"])
    assert document["status"] == "success"
    assert document["version"] == "1.2.3"
    pushed = document["images"][0]["refs"]
    assert sorted(r["ref"] for r in pushed) == sorted(refs)
    assert all(r["pushed"] and r["digest"] == outputs["DIGEST"] for r in pushed)
    assert json.loads(report_file.read_text(encoding="utf-8")) == document


def test_without_python3_the_action_says_what_to_do(tmp_path: Path) -> None:
    # a PATH with bash and the basics but no python3 (the runner's python3 is missing)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "env", "cat", "git", "mkdir", "rm"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    repo = make_action_repo(
        tmp_path / "repo",
        {
            ".github/workflows/release.yml": (
                "on: push\n"
                "permissions: {}\n"
                "jobs:\n"
                "  release:\n"
                "    runs-on: ubuntu-latest\n"
                "    steps:\n"
                "      - uses: actions/checkout@v4\n"
                "        with: {persist-credentials: false}\n"
                "      - uses: ./shipit\n"
            ),
        },
    )
    env = act_env(tmp_path / "home", str(bin_dir))
    event = write_event(tmp_path / "event.json", repo)
    code, log = run_act(repo, event, env, tmp_path / "act.log")
    if code != 0 and "python3 was not found" not in log and "Failure - Main Install shipit" in log:
        # act streams a step's output while the step runs; of a step that prints one line and
        # exits within milliseconds it once showed no line at all (a loaded machine, this
        # test's only failure): run the job again, and the second run must say it
        code, log = run_act(repo, event, env, tmp_path / "act-again.log")
    assert code != 0, log
    assert "python3 was not found on PATH" in log, log
    assert "actions/setup-python" in log
