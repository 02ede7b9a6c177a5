"""Fan-out benchmark: build and push one image, shipit against the plain tools, in one run.

The image: a static busybox and three layers of random bytes (`--mb` each, 48 by default:
about 153 MB; random bytes do not compress, the worst case). Every measurement pushes to
registries of its own, started fresh for the round (new processes, new storage), so no
registry holds a layer already; each row's registries listen on the same ports every round,
as CI pushes to the same registries run after run (so shipit's spec, which is in the build
context, is the same each round too). Measured from outside, per round, in an order that
turns from round to round:

  docker one x1       `docker build` (BuildKit) then `docker push` to 1 registry
  shell loop x3       the same build, then `docker push` to 3 registries, one after another
  buildx --push x3    `docker buildx build --push` with the 3 registries' tags in one command
                      (how a build-push-action user reaches three registries)
  shipit buildx x3    `shipit run --skip scan --skip sign`, `engine: buildx`, 3 registries
  shipit sdk x3       the same with `engine: sdk` (the classic builder, context re-sent)
  shipit buildah x3   the same with `engine: buildah` (daemonless; storage of the run's own)

`--image debian` measures a realistic image instead: the multi-stage Python web app of
tests/e2e/test_real_images.py on a Debian bookworm base made with mmdebstrap
(tests/support/debian_base.py), served from a loopback registry of the benchmark's own: apt
from local .deb files in two stages, a venv with two wheels, a non-root user; 7 layers of
compressible files (the cold rows pull the base again, as a fresh runner does).

The matrix: each image store (`--store`: bookworm's dockerd 20.10 on the classic store, and a
dockerd 28 on the containerd image store started beside it, tests/support/dockerd28.py)
times each cache state (`--cache`):

  warm   every tool built the image once before the first round, and shipit pushed it once
         (its export cache and build memo hold it), as on a runner that built it before
  cold   before every measurement (not timed): `docker builder prune -af`, every image
         removed from the daemon, buildah's storage emptied, and shipit given an empty cache
         folder, as on a fresh hosted runner

Prints every round (and the 1-minute load average when it started), then per cell the
medians with each one's ratio to docker's one push, to the shell loop and to `buildx --push`,
shipit's stages (from its log groups) with how busy the machine's cores were through each
(/proc/stat), its peak memory (VmHWM of the shipit process, read from /proc while it runs),
and each row's CPU seconds by party: what the row ran itself (docker, buildx, shipit and its
children), the daemon's processes and the registries (proc(5)'s utime and stime). Where the
cores are busy through a stage, running its work side by side cannot make it shorter; that
is where a row's time is the machine's, not the tool's. At the end the whole matrix as
ratios. Every shipit run must end with one digest in all three registries.

    .venv/bin/python -m benchmarks.push_fanout [--rounds 5] [--mb 48] [--only ROW ...]
        [--store classic containerd] [--cache warm cold] [--image random|debian]

It starts daemons of its own (a dockerd 20.10 and a dockerd 28, each with its own folders,
sockets and bridge: the cold rows empty their images and build caches), and stops exactly what
it started, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import dockerd28, services  # noqa: E402
from tests.support.gitrepo import git, make_repo  # noqa: E402

SHIPIT = str(Path(sys.executable).parent / "shipit")
LOCAL = "fanout-bench:local"
DOCKER_ONE, LOOP, BUILDX_PUSH = "docker one x1", "shell loop x3", "buildx --push x3"
ROWS = (DOCKER_ONE, LOOP, BUILDX_PUSH, "shipit buildx x3", "shipit sdk x3", "shipit buildah x3")
REGISTRIES = {row: 1 if row == DOCKER_ONE else 3 for row in ROWS}
STAGES = ("preflight", "build", "export", "push", "tag")
STORES = ("classic", "containerd")
CACHES = ("warm", "cold")


@dataclass
class ShipitRun:
    seconds: float
    peak_rss: int  # bytes, the shipit process's own high-water mark
    stages: dict[str, float] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)  # the cores' busy share per stage


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds (user + system) one measurement cost each party: what the row ran itself
    (docker, buildx, shipit and what it ran, buildah included), the daemon's own processes
    (dockerd, containerd and its shims; not RUN steps' processes, which exit unreaped by
    them), and the registries."""

    clients: float
    daemon: float
    registries: float

    @property
    def total(self) -> float:
        return self.clients + self.daemon + self.registries


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (proc(5)): field 3 (state) is index 0."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _cpu_seconds(fields: list[str]) -> float:
    """utime + stime + cutime + cstime (proc(5) fields 14 to 17): the process's own CPU and
    that of the children it waited for."""
    return sum(int(v) for v in fields[11:15]) / _TICK if len(fields) > 14 else 0.0


def _sessions_cpu(leaders: list[int]) -> float:
    """CPU seconds so far of every process in the sessions these processes lead (the
    daemons are started with setsid, and containerd's shims stay in its session)."""
    wanted = {str(pid) for pid in leaders}
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if len(fields) > 3 and fields[3] in wanted:  # field 6: the session id
                total += _cpu_seconds(fields)
    return total


def _machine_jiffies() -> tuple[int, int]:
    """(busy, all) clock ticks of every core so far: /proc/stat's `cpu` line (proc(5)); idle
    and iowait are not busy."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


@dataclass
class Cell:
    """One store and cache state: where the daemon is, and what each round measured."""

    store: str
    cache: str
    env: dict[str, str]
    work: Path
    sessions: list[int] = field(default_factory=list)  # the daemon's session leaders
    rounds: list[dict[str, float]] = field(default_factory=list)
    runs: list[dict[str, ShipitRun]] = field(default_factory=list)
    cpu: list[dict[str, CpuUse]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.store} store, {self.cache}"


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def _project(root: Path, megabytes: int) -> Path:
    project = root / "project"
    make_repo(project, [{}])
    shutil.copy("/bin/busybox", project / "busybox")
    for name in ("a", "b", "c"):
        with (project / name).open("wb") as out:
            for _ in range(megabytes):
                out.write(os.urandom(1024 * 1024))
    (project / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY a /a\nCOPY b /b\nCOPY c /c\n",
        encoding="utf-8",
    )
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "payload")
    return project


def _debian_project(root: Path, base_ref: str) -> Path:
    """The web app of tests/e2e/test_real_images.py, its .debs and wheels in the context."""
    from tests.e2e import test_real_images as real
    from tests.support import debian_base

    base = debian_base.base_image("python")
    project = root / "project"
    make_repo(project, [{}])
    files = {"Dockerfile": real.DOCKERFILE, **real.web_app_files(base)}
    for name, data in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(data.encode() if isinstance(data, str) else data)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "the web app")
    BUILD_ARGS["BASE"] = base_ref
    return project


BUILD_ARGS: dict[str, str] = {}  # what every row's build gets: the Debian base's reference


def _spec(project: Path, hosts: list[str], engine: str) -> None:
    registries = ", ".join(f'"{h}/bench"' for h in hosts)
    args = ", ".join(f"{k}: {v}" for k, v in BUILD_ARGS.items())
    (project / "shipit.yml").write_text(
        f"version: 1\nregistries: [{registries}]\n"
        f"image: {{name: fanout, engine: {engine}, build_args: {{{args}}},"
        " tags: [{type: raw, value: bench}]}\n",
        encoding="utf-8",
    )


def _debian(work: Path, stops: list[Callable[[], None]]) -> tuple[Path, Path]:
    """The Debian web app's project, its base served from a loopback registry of its own
    (stopped with the rest), and the registries.conf that lets buildah pull from it."""
    from tests.support.debian_base import base_image, debian_registries_conf, serve_base

    registry = services.start_registry(work / "base")
    stops.append(lambda: services.stop_registry(registry))
    project = _debian_project(work, serve_base(base_image("python"), registry))
    return project, debian_registries_conf(work / "registries.conf", registry.host)


def _daemon(store: str, work: Path, stops: list[Callable[[], None]]) -> tuple[str, list[int]]:
    """A daemon of the benchmark's own on `store` (the cold rows empty its images and build
    cache), stopped with the rest; its DOCKER_HOST, and the leaders of its processes'
    sessions (dockerd 20.10 starts its containerd itself)."""
    if store == "containerd":
        d28 = dockerd28.start_dockerd28(work / "dockerd28")
        stops.append(lambda: dockerd28.stop_dockerd28(d28))
        return d28.host, [d28.dockerd_pid, d28.containerd_pid]
    daemon = dockerd28.start_private_dockerd(work / "dockerd20")
    stops.append(lambda: dockerd28.stop_private_dockerd(daemon))
    return daemon.host, [daemon.pid]


def _build_args() -> list[str]:
    return [f"--build-arg={k}={v}" for k, v in BUILD_ARGS.items()]


def _vmhwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _shipit(project: Path, env: dict[str, str]) -> ShipitRun:
    """One `shipit run`, timed from outside; its peak memory and when each stage began."""
    argv = [SHIPIT, "run", "-C", str(project), "--skip", "scan", "--skip", "sign", "--json"]
    started, started_ticks = time.monotonic(), _machine_jiffies()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks: dict[str, float] = {}
    ticks: dict[str, tuple[int, int]] = {}
    tail: list[bytes] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail[:] = [*tail[-40:], line]
            if line.startswith(b"==> "):
                stage = line.split()[1].decode()
                if stage not in marks:
                    marks[stage], ticks[stage] = time.monotonic(), _machine_jiffies()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _vmhwm(proc.pid))
        time.sleep(0.01)
    ended, ended_ticks = time.monotonic(), _machine_jiffies()
    reader.join(10)
    out = proc.stdout.read() if proc.stdout else b""
    if proc.returncode != 0:
        raise SystemExit(f"shipit failed ({proc.returncode}):\n{b''.join(tail).decode()}")
    digests = {ref["digest"] for ref in json.loads(out)["images"][0]["refs"]}
    if len(digests) != 1 or None in digests:
        raise SystemExit(f"the registries hold different digests: {digests}")
    points = [started] + [marks[s] for s in STAGES if s in marks] + [ended]
    names = ["startup"] + [s for s in STAGES if s in marks]
    stages = {name: b - a for name, a, b in zip(names, points, points[1:], strict=False)}
    counts = [started_ticks] + [ticks[s] for s in STAGES if s in ticks] + [ended_ticks]
    busy = {
        name: (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0
        for name, a, b in zip(names, counts, counts[1:], strict=False)
    }
    return ShipitRun(seconds=ended - started, peak_rss=peak, stages=stages, busy=busy)


def _docker_rows(project: Path, env: dict[str, str]) -> dict[str, Callable[[list[str]], float]]:
    build_env = {**env, "DOCKER_BUILDKIT": "1"}

    def build_and_push(hosts: list[str]) -> float:
        total = _run(
            ["docker", "build", "-q", *_build_args(), "-t", LOCAL, str(project)], build_env
        )
        for host in hosts:  # one after another, as a shell loop does
            ref = f"{host}/bench/fanout:bench"
            total += _run(["docker", "tag", LOCAL, ref], env)
            total += _run(["docker", "push", "-q", ref], env)
        return total

    def buildx_push(hosts: list[str]) -> float:
        argv = ["docker", "buildx", "build", "--push", "--provenance=false", "--sbom=false"]
        for host in hosts:
            argv += ["-t", f"{host}/bench/fanout:bench"]
        return _run([*argv, *_build_args(), "--progress", "quiet", str(project)], env)

    return {DOCKER_ONE: build_and_push, LOOP: build_and_push, BUILDX_PUSH: buildx_push}


def _storage_env(work: Path) -> dict[str, str]:
    """containers-storage of the benchmark's own, for the buildah engine (storage.conf(5))."""
    root = work / "containers"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\n'
        f'runroot = "{root / "run"}"\n',
        encoding="utf-8",
    )
    return {"CONTAINERS_STORAGE_CONF": str(conf)}


def _make_cold(cell: Cell, row: str) -> dict[str, str]:
    """Everything a build could reuse removed (not timed); the environment for the row,
    with an empty shipit cache folder when the row is shipit's."""
    env = cell.env
    _run(["docker", "builder", "prune", "-af"], env)
    _run(["docker", "image", "prune", "-af"], env)
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, check=False)
    _run(["buildah", "rmi", "--all", "--force"], env)
    cache = Path(env["SHIPIT_CACHE_DIR"])
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    return env


def _round(
    cell: Cell, index: int, project: Path, order: list[str], ports: dict[str, list[int]]
) -> tuple[dict[str, float], dict[str, ShipitRun], dict[str, CpuUse]]:
    times: dict[str, float] = {}
    runs: dict[str, ShipitRun] = {}
    cpu: dict[str, CpuUse] = {}
    docker_rows = _docker_rows(project, cell.env)
    for row in order:
        if cell.cache == "cold":
            _make_cold(cell, row)
        folder = cell.work / f"round{index}" / row.replace(" ", "-")
        regs = [services.start_registry(folder, port=p) for p in ports[row]]
        try:
            hosts = [r.host for r in regs]
            clients, daemon = _children_cpu(), _sessions_cpu(cell.sessions)
            if row in docker_rows:
                times[row] = docker_rows[row](hosts)
            else:
                _spec(project, hosts, row.split()[1])
                runs[row] = _shipit(project, cell.env)
                times[row] = runs[row].seconds
            cpu[row] = CpuUse(
                clients=_children_cpu() - clients,
                daemon=_sessions_cpu(cell.sessions) - daemon,
                registries=sum(_cpu_seconds(_stat_fields(r.pid)) for r in regs),
            )
        finally:
            for reg in regs:
                services.stop_registry(reg)
        shutil.rmtree(folder, ignore_errors=True)
    return times, runs, cpu


def _ports(rows: list[str]) -> dict[str, list[int]]:
    """A loopback port for each registry of each row, all different."""
    taken: set[int] = set()
    ports: dict[str, list[int]] = {}
    for row in rows:
        while len(ports.setdefault(row, [])) < REGISTRIES[row]:
            port = services.free_port()
            if port not in taken:
                taken.add(port)
                ports[row].append(port)
    return ports


def _warm_up(cell: Cell, project: Path, rows: list[str], ports: dict[str, list[int]]) -> None:
    """Build once with every tool, so every round builds from a warm cache; shipit also pushes
    once (to a registry of the warm-up's own), so its export cache holds the image, as it does
    on a machine that has built it before."""
    env = cell.env
    build_env = {**env, "DOCKER_BUILDKIT": "1"}
    _run(["docker", "build", "-q", *_build_args(), "-t", LOCAL, str(project)], build_env)
    if BUILDX_PUSH in rows:  # its cache: the same build through buildx, pushed nowhere
        _run(
            ["docker", "buildx", "build", *_build_args(), "--progress", "quiet", str(project)], env
        )
    for row in rows:
        if row.startswith("shipit"):
            folder = cell.work / "warm-up" / row.replace(" ", "-")
            regs = [services.start_registry(folder, port=p) for p in ports[row]]
            try:
                _spec(project, [r.host for r in regs], row.split()[1])
                _run([SHIPIT, "run", "-C", str(project), "--skip", "scan", "--skip", "sign"], env)
            finally:
                for reg in regs:
                    services.stop_registry(reg)


def _medians(cell: Cell, rows: list[str]) -> dict[str, float]:
    return {row: statistics.median(r[row] for r in cell.rounds) for row in rows}


def _ratio(value: float, unit: float | None) -> str:
    return f"{value / unit:5.2f}x" if unit else "    -"


def _report(cell: Cell, rows: list[str]) -> None:
    medians = _medians(cell, rows)
    units = [medians.get(DOCKER_ONE), medians.get(LOOP), medians.get(BUILDX_PUSH)]
    print(f"\n{cell.name}: medians of {len(cell.rounds)} rounds; ratios to docker one x1,"
          " the shell loop x3, buildx --push x3:")  # fmt: skip
    for row in rows:
        ratios = "  ".join(_ratio(medians[row], unit) for unit in units)
        print(f"  {row:<20} {medians[row]:6.2f}s  {ratios}")
    for row in (r for r in rows if r.startswith("shipit")):
        peak = max(r[row].peak_rss for r in cell.runs)
        stages = {s: statistics.median(r[row].stages.get(s, 0.0) for r in cell.runs) for s in
                  ("startup", *STAGES)}  # fmt: skip
        busy = {s: statistics.median(r[row].busy.get(s, 0.0) for r in cell.runs) for s in stages}
        text = ", ".join(f"{s} {v:.2f}s ({busy[s]:.0%})" for s, v in stages.items())
        print(f"  {row}: peak RSS {peak / 1e6:.0f} MB; median stages (the cores' busy share):"
              f" {text}")  # fmt: skip
    _report_cpu(cell, rows)


def _report_cpu(cell: Cell, rows: list[str]) -> None:
    """Median CPU seconds per party, and how busy that kept the machine's cores: where the
    cores are busy through a row, running side by side cannot make it much shorter."""
    cores = os.cpu_count() or 1
    print(f"  CPU seconds, medians (clients / daemon / registries = total; the {cores} cores'"
          " share of the row's time):")  # fmt: skip
    for row in rows:
        uses = [r[row] for r in cell.cpu]
        parts = [statistics.median(getattr(u, p) for u in uses) for p in
                 ("clients", "daemon", "registries", "total")]  # fmt: skip
        busy = statistics.median(
            u.total / (r[row] * cores) for u, r in zip(uses, cell.rounds, strict=True)
        )
        print(f"  {row:<20} {parts[0]:5.2f} / {parts[1]:5.2f} / {parts[2]:5.2f} = "
              f"{parts[3]:5.2f}  {busy:4.0%}")  # fmt: skip


def _matrix(cells: list[Cell], rows: list[str]) -> None:
    """Every cell's shipit rows as ratios to the shell loop and to `buildx --push`."""
    print("\nthe matrix (median seconds; ratio to the shell loop x3 / to buildx --push x3):")
    print(f"  {'':<20} " + "  ".join(f"{c.name:>28}" for c in cells))
    for row in rows:
        shown = []
        for cell in cells:
            medians = _medians(cell, rows)
            loop, push = medians.get(LOOP), medians.get(BUILDX_PUSH)
            text = f"{medians[row]:.2f}s"
            if row.startswith("shipit"):
                text += f" ({_ratio(medians[row], loop).strip()} / {_ratio(medians[row], push).strip()})"
            shown.append(f"{text:>28}")
        print(f"  {row:<20} " + "  ".join(shown))


def _measure(cell: Cell, project: Path, rows: list[str], rounds: int, mb: int) -> None:
    ports = _ports(rows)
    if cell.cache == "warm":
        _warm_up(cell, project, rows, ports)
    image = f"3 layers of {mb} MiB + busybox" if not BUILD_ARGS else "the Debian web app"
    print(f"\n{cell.name}: {len(rows)} rows, {rounds} rounds, {image};"
          f" {os.cpu_count()} cores", flush=True)  # fmt: skip
    for index in range(rounds):
        order = rows[index % len(rows) :] + rows[: index % len(rows)]
        load = os.getloadavg()[0]
        times, shipit_runs, cpu = _round(cell, index, project, order, ports)
        cell.rounds.append(times)
        cell.runs.append(shipit_runs)
        cell.cpu.append(cpu)
        shown = ", ".join(f"{row} {times[row]:.2f}s" for row in rows)
        print(f"round {index + 1} (load {load:.2f}): {shown}", flush=True)
    _report(cell, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=48, help="size of each random layer, in MiB")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="measure only these rows")
    parser.add_argument("--store", nargs="+", choices=STORES, default=list(STORES),
                        help="the image stores to measure (default: both)")  # fmt: skip
    parser.add_argument("--cache", nargs="+", choices=CACHES, default=list(CACHES),
                        help="the cache states to measure (default: both)")  # fmt: skip
    parser.add_argument("--image", choices=("random", "debian"), default="random",
                        help="random layers (--mb), or the multi-stage Debian web app")  # fmt: skip
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r in args.only]
    work = Path(tempfile.mkdtemp(prefix="shipit-bench-"))
    stops: list[Callable[[], None]] = []
    cells: list[Cell] = []
    try:
        conf = None
        if args.image == "debian":
            project, conf = _debian(work, stops)
        else:
            project = _project(work, args.mb)
        # compiled first, as pip does when it installs a package (an editable install under
        # PYTHONDONTWRITEBYTECODE, as here, would compile every module at every start)
        _run([sys.executable, "-m", "compileall", "-q", str(REPO / "shipit")], dict(os.environ))
        for store in args.store:
            host, sessions = _daemon(store, work, stops)
            for cache in args.cache:
                folder = work / f"{store}-{cache}"
                env = {**os.environ, "DOCKER_HOST": host, "HOME": str(folder)}
                env |= _storage_env(folder)
                if conf is not None:  # buildah pulls the base over plain HTTP
                    env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
                env["SHIPIT_CACHE_DIR"] = str(folder / "shipit-cache")
                for name in ("DOCKER_CONFIG", "DOCKER_CONTEXT", "BUILDX_BUILDER"):
                    env.pop(name, None)
                cell = Cell(store=store, cache=cache, env=env, work=folder, sessions=sessions)
                cells.append(cell)
                _measure(cell, project, rows, args.rounds, args.mb)
        if len(cells) > 1:
            _matrix(cells, rows)
    finally:
        for cell in cells:
            storage = {**os.environ, **_storage_env(cell.work)}
            subprocess.run(
                ["buildah", "rm", "--all"], env=storage, capture_output=True, check=False
            )
            subprocess.run(["buildah", "rmi", "--all", "--force"], env=storage,
                           capture_output=True, check=False)  # fmt: skip
        for stop in reversed(stops):
            stop()
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(folder: Path) -> None:
    """Any mount buildah left below the folder, innermost first (/proc/self/mountinfo)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if Path(p).is_relative_to(folder)), key=len)[::-1]:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


if __name__ == "__main__":
    main()
