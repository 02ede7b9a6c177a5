"""Signing is proven before a minute is spent building: whole runs through the command line
with the real cosign 3, the real Docker daemon and a real registry behind a FaultProxy that
records every request.

No request leaves 127.0.0.1. The runs that keep the public Sigstore URLs get HTTPS_PROXY and
HTTP_PROXY pointing at a closed loopback port in their environment: shipit's probes (and
cosign, were it asked) send every non-loopback request there, so they fail at once without
leaving the machine. A closed port is a socket bound and not listening: the kernel refuses
every connection to it for as long as the test holds it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from shipit.cli import main
from tests.support.faults import FaultProxy
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory, tool_path

pytestmark = pytest.mark.timeout(300)

COSIGN_DIR = str(Path(tool_path("cosign")).parent)


def run(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(args, env=env)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses every connection while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


@pytest.fixture
def watched(registry_factory: RegistryFactory) -> Iterator[FaultProxy]:
    """A fresh registry behind a proxy that records what reaches it."""
    upstream = registry_factory()
    with FaultProxy(f"http://{upstream.host}") as proxy:
        yield proxy


def project_with(tmp_path: Path, host: str, sign: str, files: dict[str, str] | None = None) -> Path:
    """A project pushing to `host/<namespace>/hello`; the namespace is the project's name."""
    namespace = f"pre-{secrets.token_hex(4)}"
    spec = f"version: 1\nregistries: [{host}/{namespace}]\nimage: {{name: hello}}\nsign: {sign}\n"
    return make_project(tmp_path / namespace, spec, files=files)


def environment(dockerd: Dockerd, home: Path, **extra: str) -> dict[str, str]:
    env = run_env(dockerd.host, home, **extra)
    env["PATH"] = COSIGN_DIR + os.pathsep + env["PATH"]
    return env


def offline(env: dict[str, str], port: int) -> dict[str, str]:
    """`env` with every proxied request sent to a closed loopback port."""
    proxy = f"http://127.0.0.1:{port}"
    return {**env, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy}


def images_of(dockerd: Dockerd, project: Path, host: str) -> list[str]:
    """The daemon's image tags for the project's repository (a build tags every ref it makes;
    the namespace is new, so a port reused from an earlier test names none of its images)."""
    client = docker.APIClient(base_url=dockerd.host)
    try:  # one listing call: other tests on this daemon may remove images meanwhile
        tags = [t for image in client.images() for t in image.get("RepoTags") or []]
    finally:
        client.close()
    return [t for t in tags if t.startswith(f"{host}/{project.name}/")]


def assert_nothing_started(
    code: int, err: str, dockerd: Dockerd, proxy: FaultProxy, project: Path
) -> None:
    """Exit 2 before the build: no build step, no image, not one request to the registry."""
    assert code == 2, err
    assert "==> build" not in err
    assert "Traceback" not in err and "internal error" not in err
    assert images_of(dockerd, project, proxy.host) == []
    with proxy.state.lock:
        assert proxy.state.requests == []  # signing is proven before the registry preflight
    assert not (project / "shipit-report.json").exists()


# -- the key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "said"),
    [
        ("not-the-password-31f4", "does not open with COSIGN_PASSWORD"),
        ("", "the password is wrong (it is empty)"),
        (None, "is encrypted and COSIGN_PASSWORD is not set"),
    ],
    ids=["wrong", "empty", "unset"],
)
def test_a_key_that_does_not_open_stops_the_run_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
    password: str | None,
    said: str,
) -> None:
    project = project_with(tmp_path, watched.host, f"{{key: {keys.private}, tlog: false}}")
    env = environment(dockerd, tmp_path)
    if password is not None:
        env["COSIGN_PASSWORD"] = password
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert f"the signing key {keys.private} " in err and said in err
    assert "hint: set COSIGN_PASSWORD to the password the key was made with" in err
    assert keys.password not in out + err
    if password:
        assert password not in out + err


def test_a_file_that_is_no_cosign_key_stops_the_run_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The public half given as the key: cosign says "unsupported pem type: PUBLIC KEY"."""
    project = project_with(tmp_path, watched.host, f"{{key: {keys.public}, tlog: false}}")
    env = environment(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert f"{keys.public} is not a cosign private key" in err
    assert "PUBLIC KEY" in err  # cosign's own words
    assert "cosign.key, not cosign.pub" in err


def test_a_key_in_a_variable_is_opened_the_same_way(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = project_with(tmp_path, watched.host, "{key: env://COSIGN_PRIVATE_KEY, tlog: false}")
    private = keys.private.read_text(encoding="utf-8")
    env = environment(
        dockerd, tmp_path, COSIGN_PRIVATE_KEY=private, COSIGN_PASSWORD="wrong-password-8812"
    )
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert "the signing key env://COSIGN_PRIVATE_KEY does not open with COSIGN_PASSWORD" in err
    assert private.strip() not in out + err


# -- the Sigstore services -----------------------------------------------------------------------------


def test_offline_with_the_log_stops_the_run_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tlog: true` (the default) with a key and the public Sigstore: cosign 3 would first read
    its signing config from the TUF repository, which cannot be reached."""
    project = project_with(tmp_path, watched.host, f"{{key: {keys.private}}}")
    env = offline(environment(dockerd, tmp_path, COSIGN_PASSWORD=keys.password), closed_port)
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert f"the signing key {keys.private} opens" in err  # the key was fine
    assert "the TUF repository at https://tuf-repo-cdn.sigstore.dev (cosign's default)" in err
    assert f"the proxy http://127.0.0.1:{closed_port} did not connect: connection refused" in err
    assert "sign with a key and `tlog: false`" in err  # what to change
    assert "sign.signing_config" in err and "TUF_MIRROR" in err and "HTTPS_PROXY" in err
    assert keys.password not in out + err


def test_a_rekor_url_that_does_not_answer_stops_the_run_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rekor = f"http://127.0.0.1:{closed_port}"
    project = project_with(tmp_path, watched.host, f"{{key: {keys.private}, rekor_url: {rekor}}}")
    env = offline(environment(dockerd, tmp_path, COSIGN_PASSWORD=keys.password), closed_port)
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert (
        f"the transparency log (Rekor) at {rekor} (the spec's sign.rekor_url) did not answer:"
        " connection refused"
    ) in err
    assert "TUF" not in err  # a key and a Rekor URL: cosign asks no TUF repository


def test_a_signing_config_whose_log_does_not_answer_stops_the_run_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A private Sigstore described by files cosign itself made: the signing config names a
    Rekor on a closed port, the trusted root its key (so cosign needs no TUF at all)."""
    rekor = f"http://127.0.0.1:{closed_port}"
    sigstore = tmp_path / "sigstore"
    sigstore.mkdir()
    cosign = tool_path("cosign")
    tools_env = offline({"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, closed_port)
    service = f"url={rekor},api-version=1,start-time=2024-01-01T00:00:00Z"
    run_tool(
        [
            cosign,
            "signing-config",
            "create",
            f"--rekor={service},operator=test",
            "--rekor-config=ANY",
            "--out",
            str(sigstore / "signing-config.json"),
        ],
        tools_env,
    )
    run_tool(
        [
            cosign,
            "trusted-root",
            "create",
            f"--rekor={service},public-key={keys.public}",
            "--out",
            str(sigstore / "trusted-root.json"),
        ],
        tools_env,
    )
    files = {
        name: (sigstore / name).read_text(encoding="utf-8")
        for name in ("signing-config.json", "trusted-root.json")
    }
    sign = (
        f"{{key: {keys.private}, signing_config: signing-config.json,"
        " trusted_root: trusted-root.json}"
    )
    project = project_with(tmp_path, watched.host, sign, files=files)
    env = offline(environment(dockerd, tmp_path, COSIGN_PASSWORD=keys.password), closed_port)
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    config = (project / "signing-config.json").resolve()
    assert f"the transparency log (Rekor) at {rekor} (the signing config {config})" in err
    assert "connection refused" in err
    assert "TUF" not in err


def test_keyless_without_a_token_stays_an_error_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = project_with(tmp_path, watched.host, "{}")
    env = offline(environment(dockerd, tmp_path), closed_port)
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert_nothing_started(code, err, dockerd, watched, project)
    assert "no signing key and no OIDC token to sign keyless" in err
    assert "id-token: write" in err


def test_a_good_key_without_the_log_passes_the_preflight_and_signs(
    tmp_path: Path,
    dockerd: Dockerd,
    watched: FaultProxy,
    keys: KeyPair,
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tlog: false` needs no Sigstore service: offline, the run signs and tags."""
    project = project_with(
        tmp_path, watched.host, f"{{key: {keys.private}, tlog: false, timeout: 2m}}"
    )
    env = offline(environment(dockerd, tmp_path, COSIGN_PASSWORD=keys.password), closed_port)
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert code == 0, err
    assert f"the signing key {keys.private} opens" in err
    assert err.index("==> signing preflight") < err.index("==> build")
    document: dict[str, Any] = json.loads((project / "shipit-report.json").read_text())
    refs = document["images"][0]["refs"]
    assert refs and all(r["pushed"] and r["signed"] for r in refs)
    assert images_of(dockerd, project, watched.host)  # what the other tests' check would see
    assert keys.password not in out + err


def run_tool(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
