"""Soak: many consecutive `shipit run`s of the hello example against a flaky registry.

Each run builds `examples/hello`'s Dockerfile with a spec of the example's shape (scan off,
or `--scan secret` for its secret-only scan; signing off: a key-less spec) and pushes to a
local registry behind `tests.support.faults.FaultProxy`, which fails requests at random from
a seeded generator: by default about 10 % are answered 503 and about 5 % are hung up on
(a TCP reset). Before every run hello.txt changes and is committed, so every run uploads new
blobs and writes new manifests rather than finding everything there.

A run counts as a success when shipit exits 0, its result document says success, every ref
was pushed with one digest, and the registry (asked directly, not through the proxy) serves
that digest under every tag. It prints each run, then the successes, the retries seen in the
logs (the `retry <registry>: ...` lines) against the faults the proxy injected, and the worst
and median run time; it exits 1 if any run failed.

    .venv/bin/python -m benchmarks.soak [--runs 50] [--seed 20240611] [--scan off|secret]

The spec's `push.retries` is 5 (`--retries`): with 15 % of requests failing, a request fails
for good only after six failures in a row (15 %^6, about 1 in 90,000), so over some 2,000
requests a run of 50 should not lose one to chance. With the default 3 it would (15 %^4 is 1
in 2,000).

It starts a dockerd only if none answers and its own registry on a free 127.0.0.1 port, and
stops exactly what it started, by PID. Every run is bounded in time (`--timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shipit.registry import Endpoint, Registry  # noqa: E402
from tests.support import services  # noqa: E402
from tests.support.faults import FaultProxy  # noqa: E402
from tests.support.gitrepo import git, make_repo  # noqa: E402

EXAMPLE = REPO / "examples" / "hello"
RETRY_LINE = re.compile(r"^retry (?P<registry>\S+): (?P<what>.*)$")
NAMESPACE = "soak"


@dataclass
class Outcome:
    number: int
    seconds: float
    ok: bool
    retries: list[str] = field(default_factory=list)
    problem: str | None = None


def _spec(registry: str, *, scan: str, retries: int) -> str:
    """examples/hello/shipit.yml with our registry, the scan asked for, and no signing."""
    spec: dict[str, Any] = yaml.safe_load((EXAMPLE / "shipit.yml").read_text(encoding="utf-8"))
    spec["registries"] = [{"url": f"{registry}/{NAMESPACE}"}]
    spec.pop("sign", None)  # key-less: no signing
    if scan == "off":
        spec.pop("scan", None)
    else:
        spec["scan"] = {"fail_on": "HIGH", "scanners": ["secret"]}
    spec["push"] = {"retries": retries}
    return yaml.safe_dump(spec, sort_keys=False)


def _project(root: Path, registry: str, *, scan: str, retries: int) -> Path:
    project = root / "hello"
    make_repo(project, [{}])
    (project / "Dockerfile").write_text(
        (EXAMPLE / "Dockerfile").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (project / "hello.txt").write_text("hello\n", encoding="utf-8")
    (project / "shipit.yml").write_text(
        _spec(registry, scan=scan, retries=retries), encoding="utf-8"
    )
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "hello")
    return project


def _next_commit(project: Path, number: int) -> None:
    (project / "hello.txt").write_text(f"hello, run {number}\n", encoding="utf-8")
    git(project, "commit", "-q", "-am", f"run {number}")


def _check(document: dict[str, Any], upstream: Registry) -> str | None:
    """None if every ref was pushed with one digest that the registry really serves."""
    if document.get("status") != "success":
        return f"status {document.get('status')}: {document.get('error')}"
    [image] = document["images"]
    refs = image["refs"]
    if not refs or not all(r["pushed"] for r in refs):
        return "not every ref was pushed"
    digests = {r["digest"] for r in refs}
    if len(digests) != 1 or None in digests:
        return f"refs with different digests: {sorted(map(str, digests))}"
    [digest] = digests
    for ref in refs:
        tag = ref["ref"].rpartition(":")[2]
        served = upstream.manifest(f"{NAMESPACE}/{image['name']}", tag).digest
        if served != digest:
            return f"the registry serves {served} as {tag}, the report says {digest}"
    return None


def _run_once(
    number: int, project: Path, env: dict[str, str], upstream: Registry, timeout: float
) -> Outcome:
    shipit = str(Path(sys.executable).parent / "shipit")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [shipit, "run", "-C", str(project), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(number, time.monotonic() - started, False, problem=f"over {timeout:.0f}s")
    seconds = time.monotonic() - started
    retries = [m["what"] for line in done.stderr.splitlines() if (m := RETRY_LINE.match(line))]
    problem: str | None
    if done.returncode != 0:
        problem = f"exit {done.returncode}: {_error_text(done.stderr)}"
    else:
        try:
            problem = _check(json.loads(done.stdout), upstream)
        except (ValueError, KeyError) as exc:
            problem = f"unreadable result document: {exc}"
    return Outcome(number, seconds, problem is None, retries, problem)


def _error_text(stderr: str) -> str:
    """The run's last error message with its continuation lines, on one line."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("error:", "shipit: error:"))]
    if not starts:
        return "(no error line)"
    return " / ".join(line.strip() for line in lines[starts[-1] :] if line.strip())


def _reason(what: str) -> str:
    """The kind of a retried failure, from the retry line's text."""
    for needle, kind in (
        ("503 Service Unavailable", "503"),
        ("reset by peer", "connection reset"),
        ("Remote end closed", "connection closed"),
        ("refused", "connection refused"),
        ("did not answer", "timeout"),
    ):
        if needle in what:
            return kind
    return "other"


def _soak(args: argparse.Namespace, work: Path) -> int:
    dockerd = services.ensure_dockerd(work / "dockerd")
    registry = None
    proxy = None
    try:
        registry = services.start_registry(work / "registry")
        proxy = FaultProxy(f"http://{registry.host}")
        project = _project(work, proxy.host, scan=args.scan, retries=args.retries)
        env = {"PATH": os.environ["PATH"], "HOME": str(work), "DOCKER_HOST": dockerd.host}
        if os.environ.get("PYTHONPATH"):  # to soak a patched checkout of shipit
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        proxy.flaky(args.p503, args.preset, seed=args.seed)
        print(
            f"soak: {args.runs} runs of examples/hello (scan {args.scan}, push.retries"
            f" {args.retries}) to {proxy.host} -> {registry.host}: {args.p503:.0%} of requests"
            f" answered 503, {args.preset:.0%} reset, seed {args.seed}"
        )
        outcomes: list[Outcome] = []
        with Registry(Endpoint(host=registry.host)) as upstream:
            for number in range(1, args.runs + 1):
                _next_commit(project, number)
                outcome = _run_once(number, project, env, upstream, args.timeout)
                outcomes.append(outcome)
                state = "ok    " if outcome.ok else "FAILED"
                print(
                    f"run {number:3d}  {state}  {outcome.seconds:6.2f}s"
                    f"  {len(outcome.retries):2d} retries"
                    + (f"  {outcome.problem}" if outcome.problem else ""),
                    flush=True,
                )
        injected = Counter(item.split()[0] for item in proxy.state.injected)
        requests_seen = len(proxy.state.requests)
    finally:
        if proxy is not None:
            proxy.stop()
        if registry is not None:
            services.stop_registry(registry)
        services.stop_dockerd(dockerd)
    return _summary(outcomes, injected, requests_seen)


def _summary(outcomes: list[Outcome], injected: Counter[str], requests_seen: int) -> int:
    times = [o.seconds for o in outcomes]
    successes = sum(o.ok for o in outcomes)
    retries = [r for o in outcomes for r in o.retries]
    kinds = Counter(_reason(r) for r in retries)
    print()
    print(f"successes:  {successes}/{len(outcomes)}")
    print(
        f"retries:    {len(retries)} seen in the logs ("
        + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
        + ")"
    )
    print(
        f"injected:   {sum(injected.values())} faults in {requests_seen} requests ("
        + ", ".join(f"{kind} {n}" for kind, n in injected.most_common())
        + ")"
    )
    print(f"run time:   median {statistics.median(times):.2f}s, worst {max(times):.2f}s")
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"failed run {outcome.number}: {outcome.problem}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--p503", type=float, default=0.10, help="share of requests answered 503")
    parser.add_argument("--preset", type=float, default=0.05, help="share of requests reset")
    parser.add_argument("--retries", type=int, default=5, help="the spec's push.retries")
    parser.add_argument("--scan", choices=["off", "secret"], default="off")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 10_000:
        parser.error("--runs must be between 1 and 10000")
    with tempfile.TemporaryDirectory(prefix="shipit-soak-") as tmp:
        return _soak(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
