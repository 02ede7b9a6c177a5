"""Fan-out benchmark: one image to three registries, shipit against the plain tools.

In one run, on the same image (about 150 MB: a static busybox and three 48 MB layers of
random bytes, which compress to nothing), it measures:

  docker push x1     one `docker push` to one registry (the unit)
  docker push x3     a shell-style loop of `docker push` to three registries
  shipit run x3      `shipit run --skip scan --skip sign` to three registries, end to end
                     (preflight, a cached build, push, copies); and its push stage alone

Every measurement pushes to fresh registries (new processes, new storage folders) so no
registry already holds a layer. Rounds alternate the order of the three measurements.
Prints each round and the medians, and the ratios against one `docker push`.

    .venv/bin/python -m benchmarks.push_fanout [--rounds 5] [--mb 48]

It starts its own dockerd if none answers, and stops exactly what it started.
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
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import services  # noqa: E402
from tests.support.gitrepo import git, make_repo  # noqa: E402


def _docker(*args: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {result.stderr}")
    return time.monotonic() - started


def _project(root: Path, megabytes: int) -> Path:
    project = root / "project"
    make_repo(project, [{}])
    shutil.copy("/bin/busybox", project / "busybox")
    for name in ("a", "b", "c"):
        (project / name).write_bytes(os.urandom(megabytes * 1024 * 1024))
    (project / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY a /a\nCOPY b /b\nCOPY c /c\n",
        encoding="utf-8",
    )
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "payload")
    return project


def _spec(project: Path, hosts: list[str]) -> None:
    registries = ", ".join(f'"{h}/bench"' for h in hosts)
    (project / "shipit.yml").write_text(
        f"version: 1\nregistries: [{registries}]\n"
        "image: {name: fanout, tags: [{type: raw, value: bench}]}\n",
        encoding="utf-8",
    )


def _shipit(project: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds for the whole run and for its stages, from when each log group starts."""
    shipit = str(Path(sys.executable).parent / "shipit")
    started = time.monotonic()
    proc = subprocess.Popen(
        [shipit, "run", "-C", str(project), "--skip", "scan", "--skip", "sign", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marks: dict[str, float] = {}
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("==> "):
            marks.setdefault(line.split()[1], time.monotonic())
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    ended = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"shipit failed ({proc.returncode}): {out}")
    document = json.loads(out)
    digests = {ref["digest"] for ref in document["images"][0]["refs"]}
    if len(digests) != 1 or None in digests:
        raise SystemExit(f"registries hold different digests: {digests}")
    return {
        "shipit run x3 (all)": ended - started,
        "shipit build (cached)": marks["export"] - marks["build"],
        "shipit push x3": ended - marks["export"],
    }


def _round(work: Path, project: Path, env: dict[str, str], order: list[str]) -> dict[str, float]:
    regs = [services.start_registry(work / f"reg{i}") for i in range(7)]
    try:
        one, loop, ours = regs[0], regs[1:4], regs[4:7]
        _spec(project, [r.host for r in ours])
        image = "fanout-bench:local"
        timings: dict[str, float] = {}

        def docker_one() -> None:
            ref = f"{one.host}/bench/fanout:bench"
            _docker("tag", image, ref, env=env)
            timings["docker push x1"] = _docker("push", "-q", ref, env=env)

        def docker_loop() -> None:
            total = 0.0
            for reg in loop:
                ref = f"{reg.host}/bench/fanout:bench"
                _docker("tag", image, ref, env=env)
                total += _docker("push", "-q", ref, env=env)
            timings["docker push x3"] = total

        def shipit() -> None:
            timings.update(_shipit(project, env))

        steps: dict[str, Callable[[], None]] = {
            "one": docker_one,
            "loop": docker_loop,
            "shipit": shipit,
        }
        for name in order:
            steps[name]()
        return timings
    finally:
        for reg in regs:
            services.stop_registry(reg)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--mb", type=int, default=48, help="size of each of the three random layers"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipit-bench-"))
    daemon = services.ensure_dockerd(work)
    env = {**os.environ, "DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "0", "HOME": str(work)}
    try:
        project = _project(work, args.mb)
        # Build once with shipit's own builder so every round pushes the same image.
        _spec(project, ["127.0.0.1:9"])
        shipit = str(Path(sys.executable).parent / "shipit")
        subprocess.run(
            [shipit, "run", "-C", str(project), "--no-push", "--skip", "scan"],
            env=env,
            check=True,
            capture_output=True,
        )
        image_id = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", "127.0.0.1:9/bench/fanout:bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        _docker("tag", image_id, "fanout-bench:local", env=env)
        size = int(
            subprocess.run(
                ["docker", "image", "inspect", "-f", "{{.Size}}", image_id],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        print(
            f"image {image_id[:19]}, {size / 1e6:.0f} MB; {args.rounds} rounds, fresh registries each round"
        )
        orders = [["one", "loop", "shipit"], ["shipit", "one", "loop"], ["loop", "shipit", "one"]]
        rounds = []
        for index in range(args.rounds):
            timings = _round(work / f"round{index}", project, env, orders[index % len(orders)])
            rounds.append(timings)
            print(f"round {index + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        unit = medians["docker push x1"]
        print("\nmedians, and the ratio to one docker push:")
        for key, value in medians.items():
            print(f"  {key:<22} {value:6.2f}s  {value / unit:5.2f}x")
    finally:
        services.stop_dockerd(daemon)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
