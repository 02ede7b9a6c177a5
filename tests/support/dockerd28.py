"""sid's dockerd 28 on the containerd image store, next to the bookworm daemon, for BuildKit.

scripts/install-tools unpacks Debian sid's docker.io 28.5 and containerd 2.1 into
REPO/.tools/docker28; bookworm's dockerd 20.10 stays the system's daemon (services.py starts
it, and the ``dockerd`` fixture owns the session's DOCKER_HOST). This module starts a second
pair, a containerd and a dockerd, on sockets and folders of their own under one workdir:

    W/ctd.toml            containerd config (version 3): root W/containerd/root, state
                          W/containerd/state, gRPC on W/containerd.sock
    W/daemon.json         {"features": {"containerd-snapshotter": true}}
    W/docker.sock         dockerd's API: DOCKER_HOST=unix://W/docker.sock
    W/docker, W/exec      --data-root, --exec-root
    W/*.log, W/*.pid      logs (shown when a start fails) and dockerd's --pidfile

Networking (checked on this machine, iptables 1.8.9 nf_tables): the default bridge is
docker0, which bookworm's daemon owns, and dockerd only takes another bridge that already
exists (``--bridge NAME``). So we create one of our own (``ip link add NAME type bridge``,
a free 10.x.y.0/24 in it) and start dockerd with ``--bridge NAME --iptables=false
--ip6tables=false``. Then RUN steps and containers get a network namespace on that bridge
and need no ``--network none``. With ``--bridge none`` instead (as TOOLCHAIN.md had it),
``docker run`` falls back to no network but every RUN step fails with "network bridge not
found" unless the build says ``--network none``. No iptables rules are written: nothing is
routed beyond the bridge (there is no internet here anyway).

Every process is started with setsid and stopped by PID; containerd's shims leave its
process tree (their parent becomes PID 1) but stay in its session, which is how
stop_process(whole_session=True) finds them. The bridge is deleted at the end; a bridge
left by a test session that died is deleted by the next start (its alias names the owner).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import (
    ServiceError,
    exited,
    file_locked,
    log_tail,
    spawn,
    start_time,
    stop_process,
    wait_until,
)
from tests.support.services import REPO, ToolMissingError

DOCKER28 = REPO / ".tools" / "docker28"
DOCKERD = DOCKER28 / "usr" / "sbin" / "dockerd"
CONTAINERD = DOCKER28 / "usr" / "bin" / "containerd"
START_TIMEOUT = 60.0
# `docker info` on a daemon with the containerd image store: Driver "overlayfs" and
# DriverStatus [["driver-type", "io.containerd.snapshotter.v1"]] (dockerd 28.5.2)
SNAPSHOTTER = "io.containerd.snapshotter.v1"
_BRIDGE_PREFIX = "shipit28-"  # + 6 hex digits: 15 characters, the most a Linux name takes
_ALIAS = "shipit-test dockerd28 owner="
_LOCK = Path(os.environ.get("SHIPIT_TEST_STATE", "/tmp/shipit-test-state")) / "bridges.lock"


@dataclass(frozen=True, kw_only=True)
class Dockerd28:
    host: str  # DOCKER_HOST for this daemon: "unix://W/docker.sock"
    workdir: Path
    dockerd_pid: int
    containerd_pid: int
    containerd_address: Path  # containerd's gRPC socket, W/containerd.sock
    bridge: str  # the bridge its containers and RUN steps are on
    subnet: str  # that bridge's IPv4 network, e.g. "10.213.7.0/24"
    dockerd_log: Path
    containerd_log: Path

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """base (os.environ by default) with DOCKER_HOST set to this daemon, no context."""
        env = dict(os.environ if base is None else base)
        env["DOCKER_HOST"] = self.host
        for name in ("DOCKER_CONTEXT", "BUILDX_BUILDER", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(name, None)
        return env


def _binaries() -> tuple[str, str, str]:
    paths = [DOCKERD, CONTAINERD, DOCKER28 / "usr" / "bin" / "containerd-shim-runc-v2"]
    for p in paths:
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ToolMissingError(
                f"{p} is missing (Debian sid's docker.io and containerd); run "
                f"scripts/install-tools (as root: bash {REPO / 'scripts' / 'install-tools'})"
            )
    ip = shutil.which("ip")
    if ip is None:
        raise ToolMissingError(
            "ip (iproute2) is missing; run scripts/install-tools "
            f"(as root: bash {REPO / 'scripts' / 'install-tools'})"
        )
    return str(DOCKERD), str(CONTAINERD), ip


def _env() -> dict[str, str]:
    # containerd finds containerd-shim-runc-v2 on PATH, dockerd docker-proxy; runc comes
    # from bookworm (/usr/sbin/runc 1.1.5 works with both)
    bins = f"{DOCKER28 / 'usr' / 'sbin'}:{DOCKER28 / 'usr' / 'bin'}"
    return {**os.environ, "PATH": f"{bins}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}


# --- the bridge ----------------------------------------------------------------------------


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise ServiceError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _bridges_locked() -> contextlib.AbstractContextManager[None]:
    """Test sessions choosing bridge names and subnets at once take turns (bounded wait)."""
    return file_locked(_LOCK, timeout=60, interval=0.1, error=ServiceError)


def _owner() -> str:
    """This test session as pid:starttime, so a reused PID is not taken for it."""
    return f"{os.getpid()}:{start_time(os.getpid())}"


def _owner_alive(owner: str) -> bool:
    pid, _, start = owner.partition(":")
    return pid.isdigit() and start_time(int(pid)) == start


def _remove_stale_bridges() -> None:
    """Delete bridges an earlier test session made and did not delete (it died)."""
    for link in json.loads(_ip("-j", "link", "show", "type", "bridge") or "[]"):
        name, alias = link.get("ifname", ""), link.get("ifalias", "")
        ours = name.startswith(_BRIDGE_PREFIX) and alias.startswith(_ALIAS)
        if ours and not _owner_alive(alias.removeprefix(_ALIAS)):
            _ip("link", "delete", name, "type", "bridge")


def _taken_networks() -> list[ipaddress.IPv4Network]:
    taken = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(route.get("dst", ""), strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            taken.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return [n for n in taken if n.prefixlen > 0]  # "default" routes cover everything


def _make_bridge() -> tuple[str, ipaddress.IPv4Network]:
    """A new bridge on a free 10.200-254.x.0/24, its first address for the host."""
    with _bridges_locked():
        _remove_stale_bridges()
        taken = _taken_networks()
        rng = random.Random(secrets.randbits(64))
        for _ in range(200):
            net = ipaddress.IPv4Network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.0/24")
            if not any(net.overlaps(t) for t in taken):
                break
        else:
            raise ServiceError("no free 10.200-254.x.0/24 network for dockerd 28's bridge")
        name = _BRIDGE_PREFIX + secrets.token_hex(3)
        _ip("link", "add", "name", name, "type", "bridge")
        try:
            _ip("link", "set", "dev", name, "alias", _ALIAS + _owner())
            _ip("addr", "add", f"{net[1]}/{net.prefixlen}", "dev", name)
            _ip("link", "set", "dev", name, "up")
        except ServiceError:
            _ip("link", "delete", name, "type", "bridge")
            raise
        return name, net


def _delete_bridge(name: str) -> None:
    names = {link.get("ifname") for link in json.loads(_ip("-j", "link", "show") or "[]")}
    if name in names:
        _ip("link", "delete", name, "type", "bridge")


# --- containerd and dockerd ------------------------------------------------------------------


def _containerd_config(w: Path) -> str:
    # containerd 2.x config format, version 3 (containerd's docs/PLUGINS.md, RELEASES.md).
    # The CRI plugins (the kubelet's API) are not needed; off, they look for no CNI folders.
    return "\n".join(
        [
            "version = 3",
            f'root = "{w / "containerd" / "root"}"',
            f'state = "{w / "containerd" / "state"}"',
            "disabled_plugins = [",
            '  "io.containerd.grpc.v1.cri",',
            '  "io.containerd.cri.v1.runtime",',
            '  "io.containerd.cri.v1.images",',
            "]",
            "[grpc]",
            f'  address = "{w / "containerd.sock"}"',
            "[ttrpc]",
            f'  address = "{w / "containerd.sock.ttrpc"}"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            "",
        ]
    )


def dockerd_argv(dockerd: str, w: Path, bridge: str) -> list[str]:
    """The command line of dockerd 28 in workdir w, on the containerd at w/containerd.sock."""
    return [
        dockerd,
        "--config-file", str(w / "daemon.json"),
        "--host", f"unix://{w / 'docker.sock'}",
        "--data-root", str(w / "docker"),
        "--exec-root", str(w / "exec"),
        "--pidfile", str(w / "dockerd.pid"),
        "--containerd", str(w / "containerd.sock"),
        "--bridge", bridge,
        "--iptables=false",
        "--ip6tables=false",
    ]  # fmt: skip


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def docker_info(host: str, timeout: float = 10) -> dict[str, object] | None:
    """`docker info` of the daemon at host as JSON, None while it does not answer."""
    env = {k: v for k, v in os.environ.items() if k not in {"DOCKER_CONTEXT", "DOCKER_HOST"}}
    try:
        done = subprocess.run(
            ["docker", "--host", host, "info", "--format", "{{json .}}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return None
    if done.returncode != 0:
        return None
    try:
        info = json.loads(done.stdout)
    except ValueError:
        return None
    return info if isinstance(info, dict) and info.get("ServerVersion") else None


def driver_type(info: Mapping[str, object]) -> str | None:
    """The "driver-type" of `docker info`'s DriverStatus: the containerd snapshotter, or None
    (the classic store's overlay2 lists "Backing Filesystem", "Supports d_type"...)."""
    status = info.get("DriverStatus")
    pairs = status if isinstance(status, list) else []
    types = [p[1] for p in pairs if isinstance(p, list) and len(p) == 2 and p[0] == "driver-type"]
    return str(types[0]) if types else None


def _wait_for(pid: int, log: Path, what: str, ready: Callable[[], bool]) -> None:
    def up() -> bool:
        if exited(pid):
            raise ServiceError(f"{what} exited at start; {log}:\n{log_tail(log)}")
        return ready()

    if not wait_until(up, START_TIMEOUT, interval=0.2):
        raise ServiceError(
            f"{what} did not answer within {START_TIMEOUT:.0f} s; {log}:\n{log_tail(log)}"
        )


def start_dockerd28(workdir: Path) -> Dockerd28:
    """containerd 2 and dockerd 28 (containerd image store) in workdir, on a bridge of ours.

    Waits up to 60 s for each; a start that fails stops what did start and says why, with
    the end of the log. The caller stops it all with stop_dockerd28.
    """
    dockerd, containerd, _ = _binaries()
    w = workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    (w / "ctd.toml").write_text(_containerd_config(w))
    (w / "daemon.json").write_text(json.dumps({"features": {"containerd-snapshotter": True}}))
    bridge, net = _make_bridge()
    ctd = pid = None
    try:
        ctd_log = w / "containerd.log"
        ctd = spawn([containerd, "--config", str(w / "ctd.toml")], ctd_log, env=_env())
        _wait_for(ctd, ctd_log, "containerd", lambda: _socket_answers(w / "containerd.sock"))
        d_log = w / "dockerd.log"
        pid = spawn(dockerd_argv(dockerd, w, bridge), d_log, env=_env())
        host = f"unix://{w / 'docker.sock'}"
        _wait_for(pid, d_log, "dockerd 28", lambda: docker_info(host, timeout=5) is not None)
        info = docker_info(host) or {}
        if driver_type(info) != SNAPSHOTTER:
            raise ServiceError(
                f"dockerd 28 is not on the containerd image store: Driver {info.get('Driver')},"
                f" DriverStatus {info.get('DriverStatus')}; {d_log}:\n{log_tail(d_log)}"
            )
    except BaseException:
        _stop_all(w, pid, ctd, bridge)
        raise
    return Dockerd28(
        host=host,
        workdir=w,
        dockerd_pid=pid,
        containerd_pid=ctd,
        containerd_address=w / "containerd.sock",
        bridge=bridge,
        subnet=str(net),
        dockerd_log=d_log,
        containerd_log=ctd_log,
    )


def stop_dockerd28(d: Dockerd28) -> None:
    """Stop dockerd (it stops its containers), then containerd and its shims, by PID; then
    unmount what a killed daemon left under the workdir and delete the bridge."""
    _stop_all(d.workdir, d.dockerd_pid, d.containerd_pid, d.bridge)


def _stop_all(w: Path, dockerd: int | None, containerd: int | None, bridge: str) -> None:
    errors: list[BaseException] = []
    # dockerd first: a containerd stopped under it leaves containers behind. dockerd gives
    # running containers 10 s to stop, then kills them; what is left in containerd's session
    # after it (shims and their containers, when dockerd was killed) gets 15 s.
    for pid, timeout in ((dockerd, 40), (containerd, 15)):
        if pid is None:
            continue
        try:
            stop_process(pid, timeout=timeout, whole_session=True)
        except ServiceError as e:
            errors.append(e)
    for step in (lambda: _unmount_below(w), lambda: _delete_bridge(bridge)):
        try:
            step()
        except ServiceError as e:
            errors.append(e)
    if errors:
        raise errors[0]


def _unmount_below(w: Path) -> None:
    """Unmount what is still mounted under w (deepest first): only after a daemon was killed."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if Path(point).is_relative_to(w):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        done = subprocess.run(
            ["umount", point], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise ServiceError(f"umount {point} failed: {done.stderr.strip()}")


# --- a private classic-store daemon ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PrivateDockerd:
    host: str  # "unix://W/docker.sock"
    workdir: Path
    pid: int
    bridge: str


def start_private_dockerd(workdir: Path) -> PrivateDockerd:
    """bookworm's dockerd 20.10 (the classic image store) in workdir, on a bridge of ours:
    for what must empty a daemon's images and build cache (benchmarks/push_fanout.py's cold
    rows) without touching the daemon other test sessions share. It starts its own managed
    containerd under W/exec (dockerd's default without --containerd); both are in dockerd's
    session, and stop_private_dockerd stops that session by PID."""
    _, _, _ = _binaries()  # ip is needed for the bridge
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise ToolMissingError(
            f"dockerd is missing; run scripts/install-tools (as root: bash "
            f"{REPO / 'scripts' / 'install-tools'})"
        )
    w = workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    bridge, _ = _make_bridge()
    pid = None
    try:
        log = w / "dockerd.log"
        argv = [
            dockerd,
            "--host", f"unix://{w / 'docker.sock'}",
            "--data-root", str(w / "docker"),
            "--exec-root", str(w / "exec"),
            "--pidfile", str(w / "dockerd.pid"),
            "--bridge", bridge,
            "--iptables=false",
            "--ip6tables=false",
        ]  # fmt: skip
        pid = spawn(argv, log)
        host = f"unix://{w / 'docker.sock'}"
        _wait_for(pid, log, "dockerd", lambda: docker_info(host, timeout=5) is not None)
    except BaseException:
        _stop_all(w, pid, None, bridge)
        raise
    return PrivateDockerd(host=host, workdir=w, pid=pid, bridge=bridge)


def stop_private_dockerd(d: PrivateDockerd) -> None:
    _stop_all(d.workdir, d.pid, None, d.bridge)
