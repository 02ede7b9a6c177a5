"""The SDK engine against Podman's Docker API (`podman system service` on a socket of the test's
own, storage of its own): the pipeline end to end (build, scan, push, sign, verify), `network:
none` that really isolates, a failing step named, no container left; and credentials found
only where the containers tools look (no Docker config at all), against a TLS registry with
htpasswd, and registries.conf's insecure entries."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_buildah import TOOLS_PATH, mounts_under
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project
from tests.support.services import Registry as RunningRegistry
from tests.support.services import RegistryFactory, registry_client

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Podman:
    root: Path
    socket: Path
    pid: int

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.root / "graph"), "--runroot", str(self.root / "run")]
        argv += ["--tmpdir", str(self.root / "tmp"), "--events-backend", "file", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _bridge_present() -> bool:
    return Path("/sys/class/net/docker0").exists()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """`podman system service --time=0` on a socket and storage of its own; stopped by PID,
    its storage (and any overlay mount left under it) removed afterwards."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: apt-get install -y podman (TOOLCHAIN.md)")
    bridge = _bridge_present()
    root = tmp_path_factory.mktemp("podman")
    service = Podman(root=root, socket=root / "podman.sock", pid=0)
    argv = ["podman", "--root", str(root / "graph"), "--runroot", str(root / "run")]
    argv += ["--tmpdir", str(root / "tmp"), "--events-backend", "file"]
    with (root / "service.log").open("wb") as log:
        process = subprocess.Popen(
            [*argv, "system", "service", "--time=0", f"unix://{service.socket}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Podman(root=root, socket=service.socket, pid=process.pid)
    try:
        deadline = time.monotonic() + 60
        while not service.socket.exists():
            assert process.poll() is None, (root / "service.log").read_text()
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        yield service
    finally:
        service.podman("rm", "--all", "--force")
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for mount in reversed(mounts_under(root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        if bridge:
            assert _bridge_present(), "Docker's docker0 bridge went missing during the Podman tests"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


def busybox_project(root: Path, spec: str, steps: tuple[str, ...]) -> Path:
    dockerfile = "\n".join(
        [
            "FROM scratch",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
            "COPY hello.txt /hello.txt",
            *steps,
        ]
    )
    project = make_project(root, spec, dockerfile=dockerfile + "\n")
    shutil.copy2(BUSYBOX, project / "busybox")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "busybox")
    return project


def env_for(home: Path, podman: Podman, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{TOOLS_PATH}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "DOCKER_HOST": podman.host,
        "XDG_RUNTIME_DIR": str(home / "run"),
        **extra,
    }


class Listener:
    """A loopback TCP server that counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.sendall(b"reached\n")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_the_pipeline_end_to_end_through_podman(
    tmp_path: Path,
    podman: Podman,
    plain_registry: RunningRegistry,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"pm{os.urandom(3).hex()}"
    spec = f"""\
version: 1
registries: [{plain_registry.host}/{namespace}]
image:
  name: app
  labels: {{org.example.team: podman}}
scan: {{scanners: [secret]}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = busybox_project(tmp_path / "project", spec, ("RUN uname -m > /arch",))
    report = tmp_path / "report.json"
    env = env_for(tmp_path / "home", podman, COSIGN_PASSWORD=keys.password)
    args = ["run", "-C", str(project), "--report", str(report), "-v"]
    code, _, err = run_shipit(args, capsys, env)
    assert code == 0, err
    assert "STEP 3/" in err
    document = json.loads(report.read_text())
    [image] = document["images"]
    digest = image["digest"]
    assert image["scan"]["blocked"] is False
    assert all(r["pushed"] and r["signed"] and r["digest"] == digest for r in image["refs"])
    registry = registry_client(plain_registry)
    for tag in image["tags"]:
        assert registry.manifest(f"{namespace}/app", tag).digest == digest
    for base in image.get("bases") or []:
        assert base.get("digest") is None  # Podman's RepoDigests are not trusted
    code, _, verr = run_shipit(
        ["verify", "-C", str(project), "--report", str(report), "--key", str(keys.public)],
        capsys,
        env,
    )
    assert code == 0, verr
    # a second run: the build memo reads Podman's step lines and sends nothing
    code, _, err = run_shipit(args, capsys, env)
    assert code == 0, err
    assert "the context was not sent" in err
    assert podman.podman("ps", "--all", "--storage", "--quiet").stdout.strip() == ""


def test_network_none_isolates_on_podman(
    tmp_path: Path,
    podman: Podman,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listener = Listener()
    try:
        reach = (
            f"RUN echo {os.urandom(4).hex()}; if echo x | nc -w 3 127.0.0.1 {listener.port};"
            " then echo REACHED; else echo NOT-REACHED; fi"
        )
        spec = f"version: 1\nregistries: [{plain_registry.host}/net]\nimage: {{name: app}}\nnetwork: none\n"
        project = busybox_project(tmp_path / "none", spec, (reach,))
        env = env_for(tmp_path / "home", podman)
        code, _, err = run_shipit(["run", "-C", str(project), "--skip", "push", "-v"], capsys, env)
        assert code == 0, err
        assert "NOT-REACHED" in err and listener.hits == 0
        # the same step with the default network reaches it: the check itself works
        spec = spec.replace("network: none\n", "")
        project = busybox_project(tmp_path / "host", spec, (reach.replace("echo ", "echo h", 1),))
        code, _, err = run_shipit(["run", "-C", str(project), "--skip", "push", "-v"], capsys, env)
        assert code == 0, err
        assert listener.hits == 1
    finally:
        listener.close()
    assert podman.podman("ps", "--all", "--storage", "--quiet").stdout.strip() == ""


def test_a_failing_step_is_named_and_no_container_is_left(
    tmp_path: Path,
    podman: Podman,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/broken]\nimage: {{name: app}}\n"
    project = busybox_project(tmp_path / "project", spec, ("RUN exit 3",))
    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env_for(tmp_path / "h", podman))
    assert code == 1
    assert "build: image app: step 5/" in err and "(RUN exit 3) failed" in err
    assert registry_client(plain_registry).tags("broken/app") == []
    assert podman.podman("ps", "--all", "--storage", "--quiet").stdout.strip() == ""


# -- credentials where the containers tools look ---------------------------------------------


@pytest.fixture(scope="module")
def tls_auth_registry(registry_factory: RegistryFactory) -> RunningRegistry:
    return registry_factory(tls=True, auth=("podman", base64.b32encode(os.urandom(10)).decode()))


PLACES = {
    "REGISTRY_AUTH_FILE": lambda home: home / "given" / "auth.json",
    "XDG_RUNTIME_DIR": lambda home: home / "run" / "containers" / "auth.json",
    "XDG_CONFIG_HOME": lambda home: home / "xdg" / "containers" / "auth.json",
    "~/.config": lambda home: home / ".config" / "containers" / "auth.json",
    "~/.dockercfg": lambda home: home / ".dockercfg",
}


@pytest.mark.parametrize("place", list(PLACES))
def test_credentials_only_in_a_containers_auth_file(
    tmp_path: Path,
    podman: Podman,
    tls_auth_registry: RunningRegistry,
    keys: KeyPair,
    place: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = tls_auth_registry
    assert reg.username and reg.password and reg.ca_file
    home = tmp_path / "home"
    path = PLACES[place](home)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    entries = {reg.host: {"auth": token}}
    path.write_text(json.dumps(entries if place == "~/.dockercfg" else {"auths": entries}))
    extra = {"COSIGN_PASSWORD": keys.password}
    if place == "REGISTRY_AUTH_FILE":
        extra["REGISTRY_AUTH_FILE"] = str(path)
    if place == "XDG_CONFIG_HOME":
        extra["XDG_CONFIG_HOME"] = str(home / "xdg")
    env = env_for(home, podman, **extra)
    assert not (home / ".docker").exists() and "DOCKER_CONFIG" not in env
    namespace = f"cred{os.urandom(3).hex()}"
    spec = f"""\
version: 1
registries: [{{url: {reg.host}/{namespace}, ca_file: {reg.ca_file}}}]
image: {{name: app}}
scan: false
sign: {{key: {keys.private}, tlog: false}}
"""
    project = busybox_project(tmp_path / "project", spec, ())
    report = tmp_path / "report.json"
    args = ["run", "-C", str(project), "--report", str(report), "-v"]
    code, out, err = run_shipit(args, capsys, env)
    assert code == 0, err
    assert f"credentials of {reg.username} from {path}" in out + err
    assert reg.password not in out + err + report.read_text()
    [image] = json.loads(report.read_text())["images"]
    assert image["refs"] and all(r["pushed"] and r["signed"] for r in image["refs"])
    assert registry_client(reg).tags(f"{namespace}/app")


def test_a_registries_conf_insecure_entry_is_honoured(
    tmp_path: Path,
    podman: Podman,
    tls_auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = tls_auth_registry
    home = tmp_path / "home"
    auth = home / "run" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    token = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    auth.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    spec = f"version: 1\nregistries: [{reg.host}/insecure]\nimage: {{name: app}}\nscan: false\n"
    project = busybox_project(tmp_path / "project", spec, ())
    env = env_for(home, podman)
    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 1  # its certificate is from a CA nobody trusts here
    assert "certificate" in err or "x509" in err or "SSL" in err
    conf = home / ".config" / "containers" / "registries.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 0, err
    assert registry_client(reg).tags("insecure/app")
