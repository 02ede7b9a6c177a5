"""Real services for the integration tests: a Docker daemon and OCI registries on loopback.

Rules kept here:

* Everything listens on 127.0.0.1 only; every wait is bounded in time.
* We start our own ``dockerd`` only when none answers ``docker info``.
* Each registry gets its own port and its own storage folder.
* We stop exactly what we started, by PID (tests/support/processes.py: every process is
  started in its own session, SIGTERM first, SIGKILL after a timeout). Nothing is ever
  stopped by name.

Docker and loopback registries (checked with Docker Engine 20.10 from Debian 12 and the
docker 28 CLI): the daemon's default insecure-registry range is 127.0.0.0/8, so it pushes to
``127.0.0.1:PORT`` without any daemon configuration, both to a plain-HTTP registry and to a
TLS registry whose CA it does not know: for an insecure registry the daemon tries HTTPS with
certificate verification turned off, then falls back to plain HTTP. No ``certs.d`` entry and
no daemon restart are needed (tests/integration/test_services.py pushes to both).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from shipit.registry import Credentials, Endpoint
from shipit.registry import Registry as RegistryClient
from tests.support.processes import (
    ServiceError,
    exited,
    file_locked,
    log_tail,
    spawn,
    stop_process,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DOCKERD_START_TIMEOUT = 60.0
REGISTRY_START_TIMEOUT = 20.0

# Shared by every test session on this machine (several may run at once): which dockerd a
# test session started, and which sessions are using it. The last session to let go of a
# test-started daemon stops it; a daemon nobody of ours started is never stopped.
_DOCKERD_STATE = Path(os.environ.get("SHIPIT_TEST_STATE", "/tmp/shipit-test-state"))


class ToolMissingError(ServiceError):
    """An external tool the tests need is not installed."""


# --- tools -------------------------------------------------------------------------------


def _venv_bins() -> list[Path]:
    bins = [Path(sys.prefix) / "bin", REPO / ".venv" / "bin"]
    return list(dict.fromkeys(bins))


def tool_path(name: str) -> str:
    """The path of an external tool, as installed by scripts/install-tools.

    cosign and crane live in REPO/.tools/usr/bin, gitlab-ci-local in REPO/.tools/node, the
    tools that come as wheels (trivy, act, check-jsonschema, zizmor) in the venv's bin; any
    other name is looked up on PATH (docker, dockerd, docker-registry, htpasswd, openssl...).
    """
    if name in {"cosign", "crane"}:
        candidates = [REPO / ".tools" / "usr" / "bin" / name]
    elif name == "gitlab-ci-local":
        candidates = [REPO / ".tools" / "node" / "node_modules" / ".bin" / name]
    elif name in {"trivy", "act", "check-jsonschema", "zizmor"}:
        candidates = [b / name for b in _venv_bins()]
    else:
        found = shutil.which(name)
        candidates = [Path(found)] if found else []
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    where = ", ".join(str(c) for c in candidates) or "PATH"
    raise ToolMissingError(
        f"{name} is not installed (looked in {where}); run scripts/install-tools "
        f"(as root: bash {REPO / 'scripts' / 'install-tools'})"
    )


# --- dockerd -----------------------------------------------------------------------------


@dataclass
class Dockerd:
    host: str  # what DOCKER_HOST should be, e.g. "unix:///var/run/docker.sock"
    pid: int | None  # PID of the dockerd we started, None if we reused a running one


def _docker_answers(host: str, timeout: float = 10) -> bool:
    env = {**os.environ, "DOCKER_HOST": host}
    env.pop("DOCKER_CONTEXT", None)
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


@contextlib.contextmanager
def _dockerd_lock() -> Iterator[Path]:
    _DOCKERD_STATE.mkdir(parents=True, exist_ok=True)
    (_DOCKERD_STATE / "users").mkdir(exist_ok=True)
    # bounded: whoever holds the lock waits at most DOCKERD_START_TIMEOUT for dockerd
    with file_locked(_DOCKERD_STATE / "lock", timeout=DOCKERD_START_TIMEOUT + 30,
                     interval=0.1, error=ServiceError):  # fmt: skip
        yield _DOCKERD_STATE


def _image_ids(host: str) -> set[str] | None:
    """The id of every image the daemon at `host` holds (`docker images -aq`); None when it
    does not say."""
    env = {**os.environ, "DOCKER_HOST": host}
    env.pop("DOCKER_CONTEXT", None)
    done = subprocess.run(
        ["docker", "images", "-aq", "--no-trunc"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return set(done.stdout.split()) if done.returncode == 0 else None


def _remove_images_since(host: str, before: object) -> None:
    """Remove the images the test sessions left in the daemon they started, and only those:
    that daemon keeps its images in the machine's own data root, where a run's hundreds of
    test images would pile up run after run (48 GB on the development machine before this
    cleanup). What it held before the sessions (`before`, from its record) stays; without
    that record nothing is removed."""
    now = _image_ids(host)
    if not isinstance(before, list) or now is None:
        return
    left = sorted(now - {str(x) for x in before})
    env = {**os.environ, "DOCKER_HOST": host}
    env.pop("DOCKER_CONTEXT", None)
    for start in range(0, len(left), 200):
        subprocess.run(
            ["docker", "rmi", "-f", *left[start : start + 200]],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )


def _read_started() -> dict[str, object] | None:
    """The dockerd a test session started, if it still runs."""
    try:
        state = json.loads((_DOCKERD_STATE / "dockerd.json").read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if exited(pid) or not _is_dockerd(pid):
        return None
    return dict(state)


def _is_dockerd(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"dockerd"


def _live_users() -> list[Path]:
    users = []
    for f in (_DOCKERD_STATE / "users").iterdir():
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if pid != os.getpid() and not exited(pid):
            users.append(f)
        elif pid != os.getpid():
            f.unlink(missing_ok=True)
    return users


def ensure_dockerd(workdir: Path) -> Dockerd:
    """A Docker daemon that answers: a running one if any (DOCKER_HOST honoured), else ours.

    Ours is ``dockerd`` started with setsid, logging to workdir/dockerd.log, with its own
    --pidfile in workdir; we wait up to 60 s for ``docker info`` to answer.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    with _dockerd_lock() as state:
        (state / "users" / str(os.getpid())).touch()
        if _docker_answers(host):
            return Dockerd(host=host, pid=None)
        if not host.startswith("unix://"):
            # a remote daemon that does not answer: start our own on the default socket
            host = DEFAULT_DOCKER_HOST
            if _docker_answers(host):
                return Dockerd(host=host, pid=None)
        try:
            dockerd = tool_path("dockerd")
        except ToolMissingError:
            (state / "users" / str(os.getpid())).unlink(missing_ok=True)
            raise
        log = workdir / "dockerd.log"
        pid = spawn(
            [dockerd, "--host", host, "--pidfile", str(workdir / "dockerd.pid")],
            log,
        )

        def up() -> bool:
            if exited(pid):
                raise ServiceError(f"dockerd exited at start; {log}:\n{log_tail(log)}")
            return _docker_answers(host, timeout=5)

        try:
            ok = wait_until(up, DOCKERD_START_TIMEOUT, interval=0.3)
        except ServiceError:
            (state / "users" / str(os.getpid())).unlink(missing_ok=True)
            stop_process(pid)
            raise
        if not ok:
            (state / "users" / str(os.getpid())).unlink(missing_ok=True)
            stop_process(pid, timeout=20)
            raise ServiceError(
                f"dockerd did not answer `docker info` within {DOCKERD_START_TIMEOUT:.0f} s; "
                f"{log}:\n{log_tail(log)}"
            )
        record: dict[str, object] = {"pid": pid, "host": host, "log": str(log), "by": os.getpid()}
        held = _image_ids(host)  # what it held before the tests
        if held is not None:
            record["images"] = sorted(held)
        (state / "dockerd.json").write_text(json.dumps(record))
        return Dockerd(host=host, pid=pid)


def stop_dockerd(d: Dockerd) -> None:
    """Stop the dockerd a test session started, once no other test session uses it.

    A daemon that no test session started (d.pid is None and no record of ours) is left
    alone. When several test sessions share the daemon one of them started, the last one to
    finish stops it, so no session pulls the daemon from under another.
    """
    with _dockerd_lock() as state:
        (state / "users" / str(os.getpid())).unlink(missing_ok=True)
        started = _read_started()
        ours_pid = d.pid
        if started is None:
            (state / "dockerd.json").unlink(missing_ok=True)  # a stale record, if any
            if ours_pid is not None and not exited(ours_pid):
                # no record (it was removed): still stop what we started
                stop_process(ours_pid, timeout=30)
            return
        if started.get("host") != d.host or _live_users():
            return
        _remove_images_since(d.host, started.get("images"))
        stop_process(int(str(started["pid"])), timeout=30)
        (state / "dockerd.json").unlink(missing_ok=True)


# --- registries --------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    port: int
    root: Path  # its storage folder
    pid: int
    tls: bool
    ca_file: Path | None  # the CA that signed its certificate (tls only)
    username: str | None
    password: str | None
    log: Path
    config: Path | None = None  # the config file it was started with
    token: str = ""  # what it sends as IDENTITY_HEADER: tells it from another on a reused port

    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"


IDENTITY_HEADER = "X-Shipit-Test-Registry"


def answers_as(reg: Registry) -> bool:
    """Whether what answers on the registry's port is that registry (not a newcomer there)."""
    verify: str | bool = str(reg.ca_file) if reg.ca_file else True
    return _registry_answers(reg.url(), verify, reg.token)


# what the registry_factory fixture returns: start_registry's keywords, a fresh workdir each call
RegistryFactory = Callable[..., Registry]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(args: list[str], cwd: Path) -> None:
    done = subprocess.run(
        [tool_path("openssl"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def make_tls_files(
    folder: Path, names: str = "IP:127.0.0.1,DNS:localhost"
) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `names` (its subjectAltName: 127.0.0.1 and
    localhost unless told).

    Returns (ca.crt, server.crt, server.key), all in folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7"]
    ca += ["-subj", f"/CN=shipit test CA {secrets.token_hex(4)}"]
    ca += ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl(ca, folder)
    csr = ["req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr"]
    _openssl([*csr, "-subj", "/CN=127.0.0.1"], folder)
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={names}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    sign = ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"]
    sign += ["-days", "7", "-set_serial", f"0x{secrets.token_hex(8)}"]
    sign += ["-extfile", "server.ext", "-out", "server.crt"]
    _openssl(sign, folder)
    for key in ("ca.key", "server.key"):
        (folder / key).chmod(0o600)
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def _htpasswd(path: Path, username: str, password: str) -> None:
    done = subprocess.run(
        [tool_path("htpasswd"), "-Bbn", username, password],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"htpasswd failed:\n{done.stderr}")
    path.write_text(done.stdout.strip() + "\n")
    path.chmod(0o600)


def _registry_answers(url: str, verify: str | bool, token: str) -> bool:
    """GET /v2/ answers 200 or 401, from the registry that sends `token` (others may have
    taken a port between free_port() and our registry's bind: they do not count)."""
    try:
        r = requests.get(f"{url}/v2/", timeout=2, verify=verify)
    except requests.RequestException:
        return False
    return r.status_code in (200, 401) and r.headers.get(IDENTITY_HEADER) == token


def start_registry(
    workdir: Path,
    *,
    tls: bool = False,
    auth: tuple[str, str] | None = None,
    port: int | None = None,
    delete: bool = True,
    auth_config: Mapping[str, object] | None = None,
) -> Registry:
    """``docker-registry serve CONFIG`` on 127.0.0.1:PORT with its own config and storage.

    The registry's files (config, storage, certificates, htpasswd, log) go to a folder of its
    own under workdir. Waits up to 20 s for GET /v2/ to answer 200 or 401. `delete=False`
    turns deletes off, the registry's own default. `auth_config` is the config's `auth:` as
    it is (token auth: tests/support/tokenauth.py), instead of `auth`'s htpasswd.
    """
    chosen = port
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        p = chosen if chosen is not None else free_port()
        try:
            return _start_registry(
                workdir, tls=tls, auth=auth, port=p, delete=delete, auth_config=auth_config
            )
        except _PortTakenError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class _PortTakenError(ServiceError):
    pass


def _start_registry(
    workdir: Path,
    *,
    tls: bool,
    auth: tuple[str, str] | None,
    port: int,
    delete: bool = True,
    auth_config: Mapping[str, object] | None = None,
) -> Registry:
    folder = workdir / f"registry-{port}-{secrets.token_hex(3)}"
    root = folder / "storage"
    root.mkdir(parents=True)
    token = secrets.token_hex(8)
    http: dict[str, object] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"], IDENTITY_HEADER: [token]},
    }
    ca_file: Path | None = None
    if tls:
        ca_file, cert, key = make_tls_files(folder / "tls")
        http["tls"] = {"certificate": str(cert), "key": str(key)}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    username = password = None
    if auth is not None:
        username, password = auth
        htpasswd = folder / "htpasswd"
        _htpasswd(htpasswd, username, password)
        config["auth"] = {"htpasswd": {"realm": "shipit-test", "path": str(htpasswd)}}
    if auth_config is not None:
        config["auth"] = dict(auth_config)
    config_file = folder / "config.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    reg = Registry(
        host=f"127.0.0.1:{port}",
        port=port,
        root=root,
        pid=0,
        tls=tls,
        ca_file=ca_file,
        username=username,
        password=password,
        log=folder / "registry.log",
        config=config_file,
        token=token,
    )
    _serve(reg)
    return reg


def _serve(reg: Registry) -> None:
    """Start ``docker-registry serve`` for `reg` (its config and storage) and wait for /v2/."""
    assert reg.config is not None
    # REGISTRY_* variables override the config file: keep the caller's out of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log, port = reg.log, reg.port
    pid = spawn([tool_path("docker-registry"), "serve", str(reg.config)], log, env=env)
    reg.pid = pid

    def up() -> bool:
        if exited(pid):
            tail = log_tail(log)
            if "address already in use" in tail:
                raise _PortTakenError(f"port {port} is taken:\n{tail}")
            raise ServiceError(f"docker-registry exited at start; {log}:\n{tail}")
        return answers_as(reg)

    try:
        ok = wait_until(up, REGISTRY_START_TIMEOUT, interval=0.1)
    except ServiceError:
        stop_process(pid)
        raise
    if not ok:
        stop_process(pid)
        raise ServiceError(
            f"registry on {reg.host} did not answer GET /v2/ within "
            f"{REGISTRY_START_TIMEOUT:.0f} s; {log}:\n{log_tail(log)}"
        )


def garbage_collect(reg: Registry) -> str:
    """Stop the registry (by PID), run ``docker-registry garbage-collect CONFIG`` on its storage,
    start it again on the same port and storage; what the collector printed."""
    assert reg.config is not None
    stop_process(reg.pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    done = subprocess.run(
        [tool_path("docker-registry"), "garbage-collect", str(reg.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    _serve(reg)
    if done.returncode != 0:
        raise ServiceError(
            f"garbage-collect failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout + done.stderr


def registry_client(reg: Registry) -> RegistryClient:
    """shipit's own registry client for `reg`, with its CA and credentials."""
    credentials = (
        Credentials(username=reg.username, password=reg.password)
        if reg.username and reg.password
        else None
    )
    return RegistryClient(Endpoint(host=reg.host, ca_file=reg.ca_file, credentials=credentials))


def stop_registry(r: Registry) -> None:
    stop_process(r.pid)


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
        return True
