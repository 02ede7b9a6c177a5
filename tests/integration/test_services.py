"""The integration fixtures start real services, and these fail when a service is broken."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import ServiceError
from tests.support.services import (
    Dockerd,
    Registry,
    RegistryFactory,
    ToolMissingError,
    answers_as,
    free_port,
    port_is_free,
    stop_process,
    stop_registry,
    tool_path,
)

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: a static binary
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the session's daemon (DOCKER_HOST is set by the fixture)."""
    env = dict(os.environ)
    # The classic builder: with the buildx plugin installed, `docker build` is `docker buildx
    # build`; without the plugin, the docker 28 CLI refuses BuildKit ("BuildKit is enabled but
    # the buildx component is missing"). BuildKit is tested in test_buildkit_services.py.
    env["DOCKER_BUILDKIT"] = "0"
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def scratch_image(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FROM scratch image holding a static busybox, built with the docker CLI."""
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: run scripts/install-tools (busybox-static)")
    ctx = tmp_path_factory.mktemp("scratch-image")
    shutil.copy2(BUSYBOX, ctx / "busybox")
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        'CMD ["/bin/sh"]\n'
    )
    tag = f"shipit-test/busybox:{secrets.token_hex(4)}"
    ok(docker("build", "--quiet", "--tag", tag, str(ctx), timeout=300))
    yield tag
    docker("image", "rm", "--force", tag)


def push(image: str, reg: Registry, name: str) -> str:
    """Tag image into reg as name:latest, `docker push` it, return the pushed digest."""
    ref = f"{reg.host}/{name}:latest"
    ok(docker("tag", image, ref))
    try:
        out = ok(docker("push", ref, timeout=300))
    finally:
        docker("image", "rm", ref)
    digests = [w for line in out.splitlines() for w in line.split() if w.startswith("sha256:")]
    assert digests, f"no digest in docker push output:\n{out}"
    return digests[-1]


def remote_manifest(reg: Registry, name: str, ref: str) -> requests.Response:
    return requests.get(
        f"{reg.url()}/v2/{name}/manifests/{ref}",
        headers={"Accept": MANIFEST_TYPES},
        verify=str(reg.ca_file) if reg.ca_file else True,
        auth=(reg.username, reg.password) if reg.username and reg.password else None,
        timeout=10,
    )


# --- the daemon --------------------------------------------------------------------------


def test_docker_info_answers_through_the_fixture_host(dockerd: Dockerd) -> None:
    assert os.environ["DOCKER_HOST"] == dockerd.host
    info = json.loads(ok(docker("--host", dockerd.host, "info", "--format", "{{json .}}")))
    assert info["ServerVersion"]
    assert "127.0.0.0/8" in info["RegistryConfig"]["InsecureRegistryCIDRs"]
    if dockerd.pid is not None:  # we started it: the PID we hold is that dockerd
        argv0 = Path(f"/proc/{dockerd.pid}/cmdline").read_bytes().split(b"\0")[0]
        assert argv0.endswith(b"dockerd")


def test_scratch_image_runs(scratch_image: str) -> None:
    out = ok(docker("run", "--rm", "--network", "none", scratch_image, "/bin/echo", "hello"))
    assert out.strip() == "hello"


# --- pushing -----------------------------------------------------------------------------


def test_docker_push_to_plain_registry(scratch_image: str, plain_registry: Registry) -> None:
    digest = push(scratch_image, plain_registry, "shipit-test/plain")
    r = remote_manifest(plain_registry, "shipit-test/plain", "latest")
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    # the blobs landed in this registry's own storage folder
    repo = plain_registry.root / "docker/registry/v2/repositories/shipit-test/plain"
    assert (repo / "_manifests/revisions/sha256" / digest.removeprefix("sha256:")).is_dir()


def test_docker_push_to_tls_registry(scratch_image: str, tls_registry: Registry) -> None:
    # The daemon has no certs.d entry for this registry and does not know its CA: the push
    # works because 127.0.0.0/8 is an insecure-registry range by default (see services.py).
    digest = push(scratch_image, tls_registry, "shipit-test/tls")
    r = remote_manifest(tls_registry, "shipit-test/tls", "latest")
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    repo = tls_registry.root / "docker/registry/v2/repositories/shipit-test/tls"
    assert repo.is_dir()


def test_crane_reads_the_pushed_image(scratch_image: str, plain_registry: Registry) -> None:
    digest = push(scratch_image, plain_registry, "shipit-test/crane")
    done = subprocess.run(
        [tool_path("crane"), "digest", "--insecure", f"{plain_registry.host}/shipit-test/crane"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest


# --- auth and TLS ------------------------------------------------------------------------


def test_auth_registry_wants_credentials(auth_registry: Registry) -> None:
    assert auth_registry.username == "shipit"
    assert auth_registry.password
    url = f"{auth_registry.url()}/v2/"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = requests.get(url, auth=("shipit", "not-the-password"), timeout=10)
    assert wrong.status_code == 401
    right = requests.get(url, auth=(auth_registry.username, auth_registry.password), timeout=10)
    assert right.status_code == 200


def test_plain_registry_answers_without_credentials(plain_registry: Registry) -> None:
    assert plain_registry.url() == f"http://127.0.0.1:{plain_registry.port}"
    r = requests.get(f"{plain_registry.url()}/v2/", timeout=10)
    assert r.status_code == 200


def test_tls_certificate_verifies_with_its_ca(tls_registry: Registry) -> None:
    assert tls_registry.ca_file is not None
    assert tls_registry.url() == f"https://127.0.0.1:{tls_registry.port}"
    ca = str(tls_registry.ca_file)
    assert requests.get(f"{tls_registry.url()}/v2/", verify=ca, timeout=10).status_code == 200
    # the SAN covers localhost too
    by_name = f"https://localhost:{tls_registry.port}/v2/"
    assert requests.get(by_name, verify=ca, timeout=10).status_code == 200
    # and the system's CAs do not know it: it is really our CA that makes it verify
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_registry.url()}/v2/", timeout=10)
    # it speaks only TLS: Go's server answers plain HTTP with a 400
    plain = requests.get(f"http://{tls_registry.host}/v2/", timeout=10)
    assert plain.status_code == 400
    assert "HTTPS server" in plain.text


def test_registries_do_not_share_ports_or_storage(
    plain_registry: Registry, tls_registry: Registry, auth_registry: Registry
) -> None:
    regs = [plain_registry, tls_registry, auth_registry]
    assert len({r.port for r in regs}) == 3
    assert len({r.root for r in regs}) == 3
    assert len({r.pid for r in regs}) == 3
    for r in regs:
        assert r.host == f"127.0.0.1:{r.port}"
        assert r.root.is_dir()


# --- stopping ----------------------------------------------------------------------------


def test_stopping_a_registry_frees_its_port(registry_factory: RegistryFactory) -> None:
    reg = registry_factory()
    assert requests.get(f"{reg.url()}/v2/", timeout=10).status_code == 200
    assert not port_is_free(reg.port)
    stop_registry(reg)
    assert not Path(f"/proc/{reg.pid}").exists() or _is_zombie(reg.pid)
    # what matters: it no longer answers there. (Whether the port is free is not ours to
    # say: other test runs on this machine may take it the moment it is.)
    assert not answers_as(reg)
    stop_registry(reg)  # a second stop is harmless


def test_a_registry_on_a_chosen_port(registry_factory: RegistryFactory) -> None:
    for _ in range(5):  # a port free a moment ago may be taken by the time it is bound
        port = free_port()
        try:
            reg = registry_factory(port=port)
        except ServiceError as exc:
            if "is taken" not in str(exc):
                raise
            continue
        break
    else:
        pytest.fail("five chosen ports were all taken before the registry could bind them")
    assert reg.port == port
    assert reg.host == f"127.0.0.1:{port}"
    assert answers_as(reg)
    stop_process(reg.pid, timeout=5)
    assert not answers_as(reg)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- tools -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("cosign", ["version"]),
        ("crane", ["version"]),
        ("trivy", ["--version"]),
        ("act", ["--version"]),
        ("gitlab-ci-local", ["--version"]),
    ],
)
def test_tool_path_finds_installed_tools(name: str, args: list[str]) -> None:
    path = tool_path(name)
    done = subprocess.run([path, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_tool_path_names_the_install_script() -> None:
    with pytest.raises(ToolMissingError, match="scripts/install-tools"):
        tool_path("no-such-tool-shipit")
