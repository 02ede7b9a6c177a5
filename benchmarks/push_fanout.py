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
shipit's stages (from its log groups) and its peak memory (VmHWM of the shipit process, read
from /proc while it runs); at the end the whole matrix as ratios. Every shipit run must end
with one digest in all three registries.

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


@dataclass
class Cell:
    """One store and cache state: where the daemon is, and what each round measured."""

    store: str
    cache: str
    env: dict[str, str]
    work: Path
    rounds: list[dict[str, float]] = field(default_factory=list)
    runs: list[dict[str, ShipitRun]] = field(default_factory=list)

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


def _daemon(store: str, work: Path, stops: list[Callable[[], None]]) -> str:
    """A daemon of the benchmark's own on `store` (the cold rows empty its images and build
    cache), stopped with the rest; its DOCKER_HOST."""
    if store == "containerd":
        d28 = dockerd28.start_dockerd28(work / "dockerd28")
        stops.append(lambda: dockerd28.stop_dockerd28(d28))
        return d28.host
    daemon = dockerd28.start_private_dockerd(work / "dockerd20")
    stops.append(lambda: dockerd28.stop_private_dockerd(daemon))
    return daemon.host


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
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks: dict[str, float] = {}
    tail: list[bytes] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail[:] = [*tail[-40:], line]
            if line.startswith(b"==> "):
                marks.setdefault(line.split()[1].decode(), time.monotonic())

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _vmhwm(proc.pid))
        time.sleep(0.01)
    ended = time.monotonic()
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
    return ShipitRun(seconds=ended - started, peak_rss=peak, stages=stages)


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
) -> tuple[dict[str, float], dict[str, ShipitRun]]:
    times: dict[str, float] = {}
    runs: dict[str, ShipitRun] = {}
    docker_rows = _docker_rows(project, cell.env)
    for row in order:
        if cell.cache == "cold":
            _make_cold(cell, row)
        folder = cell.work / f"round{index}" / row.replace(" ", "-")
        regs = [services.start_registry(folder, port=p) for p in ports[row]]
        try:
            hosts = [r.host for r in regs]
            if row in docker_rows:
                times[row] = docker_rows[row](hosts)
            else:
                _spec(project, hosts, row.split()[1])
                runs[row] = _shipit(project, cell.env)
                times[row] = runs[row].seconds
        finally:
            for reg in regs:
                services.stop_registry(reg)
        shutil.rmtree(folder, ignore_errors=True)
    return times, runs


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
        text = ", ".join(f"{s} {v:.2f}s" for s, v in stages.items())
        print(f"  {row}: peak RSS {peak / 1e6:.0f} MB; median stages: {text}")


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
        times, shipit_runs = _round(cell, index, project, order, ports)
        cell.rounds.append(times)
        cell.runs.append(shipit_runs)
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
            host = _daemon(store, work, stops)
            for cache in args.cache:
                folder = work / f"{store}-{cache}"
                env = {**os.environ, "DOCKER_HOST": host, "HOME": str(folder)}
                env |= _storage_env(folder)
                if conf is not None:  # buildah pulls the base over plain HTTP
                    env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
                env["SHIPIT_CACHE_DIR"] = str(folder / "shipit-cache")
                for name in ("DOCKER_CONFIG", "DOCKER_CONTEXT", "BUILDX_BUILDER"):
                    env.pop(name, None)
                cell = Cell(store=store, cache=cache, env=env, work=folder)
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
