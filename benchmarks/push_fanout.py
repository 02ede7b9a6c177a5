"""Fan-out benchmark: build and push one image, shipit against the plain tools, in one run.

The image: a static busybox and three layers of random bytes (`--mb` each, 48 by default:
about 153 MB; random bytes do not compress, the worst case). Every tool builds from a warm
cache (each builds once before the first round), and every measurement pushes to registries
of its own, started fresh for the round (new processes, new storage), so no registry holds a
layer already; each row's registries listen on the same ports every round, as CI pushes to
the same registries run after run (so shipit's spec, which is in the build context, is the
same each round too). Measured from outside, per round, in an order that turns from round to round:

  docker build + push x1   `docker build` (BuildKit, cached) then `docker push` to 1 registry
  docker loop x3           the same build, then `docker push` to 3 registries, one after another
  buildx --push x1         `docker buildx build --push` to 1 registry (build-push-action's way)
  shipit buildx x3         `shipit run --skip scan --skip sign`, `engine: buildx`, 3 registries
  shipit sdk x3            the same with `engine: sdk` (the classic builder, context re-sent)

Prints every round (and the 1-minute load average when it started), the medians, each
median's ratio to the first row, shipit's stages (from its log groups) and shipit's peak
memory (VmHWM of the shipit process, read from /proc while it runs). Every shipit run must
end with one digest in all three registries.

    .venv/bin/python -m benchmarks.push_fanout [--rounds 5] [--mb 48] [--only ROW ...]
        [--store classic|containerd] [--export-cache on|off]

It starts its own dockerd if none answers, and stops exactly what it started, by PID. With
`--store containerd` every row runs against a dockerd 28 on the containerd image store that
it starts beside the other on sockets and folders of its own (tests/support/dockerd28.py):
there `docker push` sends the stored gzipped layers as they are, and buildx writes shipit an
OCI layout instead of going through `docker save`.
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
ROWS = ("docker build + push x1", "docker loop x3", "buildx --push x1", "shipit buildx x3",
        "shipit sdk x3")  # fmt: skip
REGISTRIES = {ROWS[0]: 1, ROWS[1]: 3, ROWS[2]: 1, ROWS[3]: 3, ROWS[4]: 3}
STAGES = ("preflight", "build", "export", "push", "tag")


@dataclass
class ShipitRun:
    seconds: float
    peak_rss: int  # bytes, the shipit process's own high-water mark
    stages: dict[str, float] = field(default_factory=dict)


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


def _spec(project: Path, hosts: list[str], engine: str) -> None:
    registries = ", ".join(f'"{h}/bench"' for h in hosts)
    (project / "shipit.yml").write_text(
        f"version: 1\nregistries: [{registries}]\n"
        f"image: {{name: fanout, engine: {engine}, tags: [{{type: raw, value: bench}}]}}\n",
        encoding="utf-8",
    )


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
        total = _run(["docker", "build", "-q", "-t", LOCAL, str(project)], build_env)
        for host in hosts:  # one after another, as a shell loop does
            ref = f"{host}/bench/fanout:bench"
            total += _run(["docker", "tag", LOCAL, ref], env)
            total += _run(["docker", "push", "-q", ref], env)
        return total

    def buildx_push(hosts: list[str]) -> float:
        [host] = hosts
        argv = ["docker", "buildx", "build", "--push", "--provenance=false", "--sbom=false"]
        argv += ["--progress", "quiet", "-t", f"{host}/bench/fanout:bench", str(project)]
        return _run(argv, env)

    return {ROWS[0]: build_and_push, ROWS[1]: build_and_push, ROWS[2]: buildx_push}


def _round(
    work: Path, project: Path, env: dict[str, str], order: list[str], ports: dict[str, list[int]]
) -> tuple[dict[str, float], dict[str, ShipitRun]]:
    times: dict[str, float] = {}
    runs: dict[str, ShipitRun] = {}
    docker_rows = _docker_rows(project, env)
    for row in order:
        regs = [services.start_registry(work / row.replace(" ", "-"), port=p) for p in ports[row]]
        try:
            hosts = [r.host for r in regs]
            if row in docker_rows:
                times[row] = docker_rows[row](hosts)
            else:
                _spec(project, hosts, row.split()[1])
                runs[row] = _shipit(project, env)
                times[row] = runs[row].seconds
        finally:
            for reg in regs:
                services.stop_registry(reg)
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


def _warm_up(
    work: Path, project: Path, env: dict[str, str], rows: list[str], ports: dict[str, list[int]]
) -> None:
    """Build once with every tool, so every round builds from a warm cache; shipit also pushes
    once (to a registry of the warm-up's own), so its export cache holds the image, as it does
    on a machine that has built it before. shipit's bytecode is compiled first, as pip does
    when it installs a package (an editable install under PYTHONDONTWRITEBYTECODE, as here,
    would compile every module at every start)."""
    _run([sys.executable, "-m", "compileall", "-q", str(REPO / "shipit")], env)
    _run(["docker", "build", "-q", "-t", LOCAL, str(project)], {**env, "DOCKER_BUILDKIT": "1"})
    for row in rows:
        if row.startswith("shipit"):
            folder = work / "warm-up" / row.replace(" ", "-")
            regs = [services.start_registry(folder, port=p) for p in ports[row]]
            try:
                _spec(project, [r.host for r in regs], row.split()[1])
                _run([SHIPIT, "run", "-C", str(project), "--skip", "scan", "--skip", "sign"], env)
            finally:
                for reg in regs:
                    services.stop_registry(reg)


def _report(
    rows: list[str], rounds: list[dict[str, float]], runs: list[dict[str, ShipitRun]]
) -> None:
    medians = {row: statistics.median(r[row] for r in rounds) for row in rows}
    unit = medians.get(ROWS[0])
    print(f"\nmedians of {len(rounds)} rounds" + (", ratio to the first row:" if unit else ":"))
    for row in rows:
        ratio = f"  {medians[row] / unit:5.2f}x" if unit else ""
        print(f"  {row:<24} {medians[row]:6.2f}s{ratio}")
    for row in (r for r in rows if r.startswith("shipit")):
        peak = max(r[row].peak_rss for r in runs)
        stages = {s: statistics.median(r[row].stages.get(s, 0.0) for r in runs) for s in
                  ("startup", *STAGES)}  # fmt: skip
        text = ", ".join(f"{s} {v:.2f}s" for s, v in stages.items())
        print(f"  {row}: peak RSS {peak / 1e6:.0f} MB; median stages: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=48, help="size of each random layer, in MiB")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="measure only these rows")
    parser.add_argument(
        "--export-cache", choices=("on", "off"), default="on",
        help="shipit's export cache (on: an image built again is not exported again; off: every"
        " run exports the image from the daemon, as on a machine that never built it)",
    )  # fmt: skip
    parser.add_argument(
        "--store", choices=("classic", "containerd"), default="classic",
        help="the image store of the daemon: bookworm's dockerd 20.10 (classic), or a dockerd"
        " 28 on the containerd store started for the run",
    )  # fmt: skip
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r in args.only]
    work = Path(tempfile.mkdtemp(prefix="shipit-bench-"))
    if args.store == "containerd":
        d28 = dockerd28.start_dockerd28(work / "dockerd28")
        host, stop = d28.host, lambda: dockerd28.stop_dockerd28(d28)
    else:
        daemon = services.ensure_dockerd(work)
        host, stop = daemon.host, lambda: services.stop_dockerd(daemon)
    env = {**os.environ, "DOCKER_HOST": host, "HOME": str(work)}
    env["SHIPIT_CACHE_DIR"] = str(work / "export-cache") if args.export_cache == "on" else "off"
    env.pop("DOCKER_CONFIG", None)
    env.pop("DOCKER_CONTEXT", None)
    try:
        project = _project(work, args.mb)
        # every row pushes to the same addresses each round (registries started afresh, with
        # empty storage): as CI pushes to the same registries run after run, so the spec (in
        # the build context) is the same each round too
        ports = _ports(rows)
        _warm_up(work, project, env, rows, ports)
        print(f"{len(rows)} rows, {args.rounds} rounds, 3 layers of {args.mb} MiB + busybox;"
              f" {os.cpu_count()} cores; {args.store} image store;"
              f" shipit's export cache {args.export_cache}")  # fmt: skip
        rounds, runs = [], []
        for index in range(args.rounds):
            order = rows[index % len(rows) :] + rows[: index % len(rows)]
            load = os.getloadavg()[0]
            times, shipit_runs = _round(work / f"round{index}", project, env, order, ports)
            rounds.append(times)
            runs.append(shipit_runs)
            shown = ", ".join(f"{row} {times[row]:.2f}s" for row in rows)
            print(f"round {index + 1} (load {load:.2f}): {shown}", flush=True)
        _report(rows, rounds, runs)
    finally:
        stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
