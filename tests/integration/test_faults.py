"""shipit under faults: registries that are down, flaky, dying midway or refusing; a Docker
daemon that goes away during a build; scanners and signers that crash, hang or are missing;
two runs at once; hostile branch names; secrets that must never show.

Everything runs on loopback: real registries behind `tests.support.faults.FaultProxy`, the real
Docker daemon behind `UnixSocketProxy`, fake `trivy` / `cosign` scripts first on PATH. Every
wait is bounded in time, every loop in count.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shipit.cli import main
from shipit.registry import Registry
from tests.support.faults import FaultProxy, UnixSocketProxy
from tests.support.gitrepo import git
from tests.support.keys import cosign_key_pair
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory, registry_client, tool_path
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SHIPIT = str(Path(sys.executable).parent / "shipit")
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RETRY = re.compile(r"retry (\d+)/(\d+)")


# -- helpers -------------------------------------------------------------------------------


def run(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(args, env=env)
    out, err = capsys.readouterr()
    return code, out, err


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def client(reg: RunningRegistry) -> Registry:
    return registry_client(reg)


def tags(reg: RunningRegistry, repository: str) -> list[str]:
    with client(reg) as registry:
        return sorted(registry.tags(repository))


def refs_by_registry(document: dict[str, Any], image: int = 0) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for ref in document["images"][image]["refs"]:
        found.setdefault(ref["registry"], []).append(ref)
    return found


def pushed_tags(refs: list[dict[str, Any]]) -> list[str]:
    return sorted(r["ref"].rpartition(":")[2] for r in refs if r["pushed"])


def table_line(out: str, registry: str) -> str:
    """The summary table's row for `registry`."""
    rows = [line for line in out.splitlines() if f" {registry} " in f" {line} "]
    assert len(rows) == 1, out
    return rows[0]


def retries_logged(err: str) -> set[tuple[int, int]]:
    """Every distinct `retry N/M` the log mentions."""
    return {(int(a), int(b)) for a, b in RETRY.findall(err)}


def retry_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if RETRY.search(line)]


def come_up_after_retries(
    proxy: FaultProxy, waits: int, monkeypatch: pytest.MonkeyPatch
) -> list[float]:
    """Bring `proxy` up when shipit starts its `waits`-th wait to retry (the real wait still
    happens): a downtime counted in retries, so it cannot end before shipit ever tried."""
    from shipit.registry import transport

    seen: list[float] = []
    lock = threading.Lock()
    real_sleep = transport._sleep

    def sleep(seconds: float) -> None:
        with lock:
            seen.append(seconds)
            if len(seen) == waits:
                proxy.come_up()
        real_sleep(seconds)

    monkeypatch.setattr(transport, "_sleep", sleep)
    return seen


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def path_without(*names: str) -> str:
    """This PATH minus every folder holding one of `names`."""
    folders = [
        d
        for d in os.environ["PATH"].split(os.pathsep)
        if d and not any((Path(d) / n).exists() for n in names)
    ]
    return os.pathsep.join(folders)


def cosign_dir() -> str:
    return str(Path(tool_path("cosign")).parent)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a `shipit` child process: it imports the same shipit as this process."""
    if os.environ.get("PYTHONPATH"):
        return {**env, "PYTHONPATH": os.environ["PYTHONPATH"]}
    return env


def upstream_of(reg: RunningRegistry) -> str:
    return f"http://{reg.host}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A cosign key pair whose private half is encrypted with a random password."""
    pair = cosign_key_pair(tmp_path_factory.mktemp("keys"))
    return pair.private, pair.password


# -- 1. transient faults are retried ----------------------------------------------------------


def test_a_registry_down_for_a_while_then_answering_503_is_retried(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), down_for=3600, fail_first=3) as proxy:
        spec = (
            f"version: 1\nregistries: [{proxy.host}/downthen503]\n"
            "image: {name: hello}\npush: {retries: 5}\n"
        )
        project = make_project(tmp_path / "project", spec)
        waits = come_up_after_retries(proxy, 2, monkeypatch)  # down until the second retry
        code, out, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
        injected = list(proxy.state.injected)
    assert code == 0, err
    assert "result: success" in out
    # it really waited for the registry to come up: refused, waited, refused, waited, then up
    assert len(waits) >= 2 and all(w > 0 for w in waits)
    assert len([line for line in retry_lines(err) if "Connection refused" in line]) == 2
    # the log says what was retried and why: refused while down, then the 503s
    assert "Connection refused" in err
    assert "503 Service Unavailable" in err
    assert f"retry {proxy.host}/downthen503:" in err
    assert all(n <= total == 5 for n, total in retries_logged(err))
    assert [i.split()[0] for i in injected] == ["503", "503", "503"]
    assert tags(upstream, "downthen503/hello") != []


def test_resets_and_503s_during_the_push_are_retried_and_the_digest_is_intact(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    # from the first blob check on (a preflight sends no HEAD): two resets, then two 503s
    with FaultProxy(upstream_of(upstream), reset_first=2, fail_first=2, start_on="HEAD ") as proxy:
        spec = f"version: 1\nregistries: [{proxy.host}/pushflaky]\nimage: {{name: hello}}\n"
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, _, err = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
        injected = list(proxy.state.injected)
    assert code == 0, err
    assert [i.split()[0] for i in injected] == ["reset", "reset", "503", "503"]
    assert "Connection reset by peer" in err
    assert "503 Service Unavailable" in err
    assert all(n <= total == 3 for n, total in retries_logged(err))  # push.retries defaults to 3
    refs = report_of(report)["images"][0]["refs"]
    assert all(r["pushed"] for r in refs)
    [digest] = {r["digest"] for r in refs}
    with client(upstream) as registry:
        for ref in refs:
            assert registry.manifest("pushflaky/hello", ref["ref"].rpartition(":")[2]).digest == (
                digest
            )


def test_resets_right_after_a_downtime_are_retried_in_preflight(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Down (refused) until shipit retries, then the first requests are hung up on, then 503s: all within
    push.retries, so the run succeeds. (A plain-HTTP registry on loopback: shipit probes
    HTTPS first, which fails with a TLS error; a reset of the HTTP probe is still transient.)"""
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), down_for=3600, reset_first=2, fail_first=2) as proxy:
        spec = (
            f"version: 1\nregistries: [{proxy.host}/downthenreset]\n"
            "image: {name: hello}\npush: {retries: 5}\n"
        )
        project = make_project(tmp_path / "project", spec)
        come_up_after_retries(proxy, 1, monkeypatch)  # down until the first retry
        code, out, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
        injected = list(proxy.state.injected)
    assert code == 0, err
    assert "result: success" in out
    assert [i.split()[0] for i in injected] == ["reset", "reset", "503", "503"]
    assert "Connection refused" in err and "Connection reset by peer" in err
    assert "503 Service Unavailable" in err
    assert "TLS" not in err
    assert tags(upstream, "downthenreset/hello") != []


def test_each_retry_is_logged_once(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), fail_first=2, start_on="HEAD ") as proxy:
        spec = f"version: 1\nregistries: [{proxy.host}/once]\nimage: {{name: hello}}\n"
        project = make_project(tmp_path / "project", spec)
        code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
        injected = list(proxy.state.injected)
    assert code == 0, err
    assert len(injected) == 2
    lines = retry_lines(err)
    assert len(lines) == len(injected), "\n".join(lines)
    assert all(line.startswith(f"retry {proxy.host}/once: ") for line in lines)


# -- 2. a registry that stays down -------------------------------------------------------------


def test_a_registry_down_from_the_start_fails_preflight_and_nothing_is_built(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), down_for=3600) as proxy:  # never comes up
        spec = (
            f"version: 1\nregistries: [{plain_registry.host}/downfromstart, {proxy.host}/dead]\n"
            "image: {name: hello}\npush: {retries: 1}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, out, err = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
        assert proxy.state.requests == []
    assert code == 1
    assert f"{proxy.host}/dead" in err
    assert "preflight" in err and "nothing was built" in err
    assert "Connection refused" in err
    assert "==> build" not in err and "Traceback" not in err
    assert "result: failed" in out
    document = report_of(report)
    assert document["status"] == "failed"
    assert document["images"][0]["refs"] == []
    assert document["images"][0]["image_id"] is None
    assert tags(plain_registry, "downfromstart/hello") == []


@pytest.mark.parametrize("retries", [0, 2])
def test_the_retry_count_of_a_registry_that_stays_down_follows_push_retries(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
    retries: int,
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), down_for=3600) as proxy:
        spec = (
            f"version: 1\nregistries: [{proxy.host}/r{retries}]\n"
            f"image: {{name: hello}}\npush: {{retries: {retries}}}\n"
        )
        project = make_project(tmp_path / "project", spec)
        code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
    assert code == 1
    assert f"{proxy.host}/r{retries}" in err and "Connection refused" in err
    assert retries_logged(err) == {(n, retries) for n in range(1, retries + 1)}
    assert "==> build" not in err


def test_a_registry_failing_every_request_after_preflight_leaves_no_registry_tagged(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = [registry_factory(), registry_factory()]
    doomed = registry_factory()
    with FaultProxy(upstream_of(doomed), fail_first=10**6, start_on="HEAD ") as proxy:
        spec = (
            f"version: 1\nregistries: [{good[0].host}/p, {proxy.host}/p, {good[1].host}/p]\n"
            "image: {name: hello}\npush: {retries: 2}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, out, err = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
    assert code == 1
    assert (2, 2) in retries_logged(err) and not any(n > 2 for n, _ in retries_logged(err))
    document = report_of(report)
    assert document["status"] == "failed"
    by_registry = refs_by_registry(document)
    digest = document["images"][0]["digest"]
    for reg in good:  # every blob and the manifest by digest, but not one tag
        assert pushed_tags(by_registry[f"{reg.host}/p"]) == [] == tags(reg, "p/hello")
        assert client(reg).has_manifest("p/hello", digest)
        assert "stored, untagged" in table_line(out, f"{reg.host}/p")
    assert pushed_tags(by_registry[f"{proxy.host}/p"]) == [] == tags(doomed, "p/hello")
    assert all("503" in r["error"] for r in by_registry[f"{proxy.host}/p"])
    assert "failed: " in table_line(out, f"{proxy.host}/p")
    assert "nothing was tagged in any registry" in err
    assert "result: failed" in out


def test_a_registry_dying_after_the_first_tag_is_reported_with_exactly_what_it_holds(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), mode="dead_after_first_manifest") as proxy:
        proxy.state.manifests_to_live = 2  # the manifest by digest, then the first tag
        spec = (
            f"version: 1\nregistries: [{proxy.host}/half]\n"
            "image: {name: hello}\npush: {retries: 1}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, out, _ = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
    assert code == 1
    document = report_of(report)
    assert document["status"] == "failed"
    refs = refs_by_registry(document)[f"{proxy.host}/half"]
    held = tags(upstream, "half/hello")
    assert len(held) == 1  # the first tag went through before the registry died
    # the report says exactly what the registry holds: the first tag pushed, the rest not
    assert pushed_tags(refs) == held
    assert "partial (1/2)" in table_line(out, f"{proxy.host}/half")


# -- 3. a registry that refuses the manifest --------------------------------------------------


def test_a_rejected_manifest_fails_clearly_and_no_registry_is_tagged(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream), mode="reject_manifests") as proxy:
        spec = (
            f"version: 1\nregistries: [{plain_registry.host}/rejected, {proxy.host}/rejected]\n"
            "image: {name: hello}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, out, _ = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
        blob_puts = [r for r in proxy.state.requests if r.startswith("PUT ") and "/blobs/" in r]
    assert code == 1
    assert blob_puts  # the blobs went in; only the manifest was refused
    document = report_of(report)
    assert document["status"] == "failed"
    by_registry = refs_by_registry(document)
    assert not any(r["pushed"] for r in by_registry[f"{plain_registry.host}/rejected"])
    assert tags(plain_registry, "rejected/hello") == []
    digest = document["images"][0]["digest"]
    assert client(plain_registry).has_manifest("rejected/hello", digest)
    assert not any(r["pushed"] for r in by_registry[f"{proxy.host}/rejected"])
    assert all("MANIFEST_INVALID" in r["error"] for r in by_registry[f"{proxy.host}/rejected"])
    assert "MANIFEST_INVALID" in table_line(out, f"{proxy.host}/rejected")
    assert "result: failed" in out and "success" not in out
    assert tags(upstream, "rejected/hello") == []


def test_an_expired_token_on_the_manifest_put_is_a_clear_failure(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory(auth=("shipit", "pw-" + secrets.token_urlsafe(12)))
    with FaultProxy(upstream_of(upstream), mode="unauthorized_manifests") as proxy:
        spec = (
            f"version: 1\nregistries: [{{url: {proxy.host}/expired, username: shipit,"
            " password_env: REGISTRY_PASSWORD}]\nimage: {name: hello}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        env = run_env(dockerd.host, tmp_path, REGISTRY_PASSWORD=upstream.password or "")
        code, out, err = run(
            ["run", "-C", str(project), "--report", str(report), "-v"], env, capsys
        )
        requests_seen = list(proxy.state.requests)
    assert code == 1
    assert any(r.startswith("PUT ") and "/blobs/" in r for r in requests_seen)
    document = report_of(report)
    assert document["status"] == "failed"
    refs = document["images"][0]["refs"]
    assert refs and not any(r["pushed"] or r["signed"] or r["digest"] for r in refs)
    assert all("401" in r["error"] for r in refs)
    row = table_line(out, f"{proxy.host}/expired")
    assert "failed" in row and "401" in row
    assert "result: failed" in out and "success" not in out
    assert tags(upstream, "expired/hello") == []
    assert (upstream.password or "?") not in out + err + report.read_text(encoding="utf-8")


# -- 4. the Docker daemon goes away during a build ---------------------------------------------


def test_the_docker_daemon_going_away_during_a_build_is_a_build_failure(
    tmp_path: Path, dockerd: Dockerd, plain_registry: RunningRegistry
) -> None:
    assert dockerd.host.startswith("unix://"), dockerd.host
    spec = f"version: 1\nregistries: [{plain_registry.host}/daemongone]\nimage: {{name: hello}}\n"
    dockerfile = (  # a RUN step far longer than the test: only the daemon going away ends it
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY nonce.txt /nonce.txt\n"
        'RUN ["/bin/busybox", "sleep", "600"]\n'
    )
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile=dockerfile,
        # a fresh nonce: the RUN step can never come from the build cache
        files={"busybox": Path("/bin/busybox").read_bytes(), "nonce.txt": secrets.token_hex(16)},
    )
    (project / "busybox").chmod(0o755)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "executable busybox")
    folder = Path(tempfile.mkdtemp(prefix="shipit-dk-", dir="/tmp"))  # unix sockets: short paths
    try:
        with UnixSocketProxy(
            Path(dockerd.host.removeprefix("unix://")), folder / "proxy.sock"
        ) as proxy:
            env = child_env(run_env(f"unix://{proxy.path}", tmp_path))
            child = subprocess.Popen(
                [SHIPIT, "run", "-C", str(project)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                started = proxy.wait_for(b"Running in", timeout=120)  # the RUN step started
                proxy.close()  # the daemon goes away, during the RUN step
                out, err = child.communicate(timeout=120)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate(timeout=30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert started, err
    assert child.returncode == 1, err
    assert "build:" in err and "Docker" in err
    assert "Traceback" not in err and "internal error" not in err
    assert "result: failed" in out
    document = report_of(project / "shipit-report.json")
    assert document["status"] == "failed"
    assert tags(plain_registry, "daemongone/hello") == []


# -- 5. trivy and cosign: crashing, hanging, missing ------------------------------------------

# garbage on both streams, as a Go program that panics halfway through its output
CRASH = """#!/bin/sh
printf '\\001\\002 @@garbage@@ %s\\n' "$*"
printf 'panic: runtime error: invalid memory address\\n\\001\\002 @@garbage@@\\n' >&2
exit 2
"""
HANG = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep infinity
"""  # ends only when shipit kills it: the test cannot pass by the hang ending on its own
# cosign answers its version probes and opens the key (the preflight) like the real one, and
# breaks only when it signs
COSIGN_BREAKS_ON_SIGN = """#!/bin/sh
case "$1" in version|public-key) exec "{real}" "$@";; esac
for arg in "$@"; do [ "$arg" = "--help" ] && exec "{real}" "$@"; done
{action}
"""


def watched_project(tmp_path: Path, host: str, extra: str) -> Path:
    spec = f"version: 1\nregistries: [{host}/tools]\nimage: {{name: hello}}\n{extra}"
    return make_project(tmp_path / "project", spec)


def no_push_requests(proxy: FaultProxy) -> bool:
    """Only what a preflight sends went out: /v2/, one upload session opened and cancelled;
    no blob check, no upload, no manifest."""
    with proxy.state.lock:
        methods = [r.split()[0] for r in proxy.state.requests]
    return set(methods) <= {"GET", "POST", "DELETE"} and methods.count("POST") <= 1


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its parent counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_crashing_trivy_fails_the_scan_and_nothing_is_pushed(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    fake = executable(tmp_path / "bin" / "trivy", CRASH)
    with FaultProxy(upstream_of(upstream)) as proxy:
        project = watched_project(tmp_path, proxy.host, "scan: {scanners: [secret]}\n")
        env = run_env(dockerd.host, tmp_path)
        env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
        code, out, err = run(["run", "-C", str(project)], env, capsys)
        assert no_push_requests(proxy), proxy.state.requests
    assert code == 1
    assert "scan:" in err and "trivy" in err and "exit 2" in err
    assert "garbage" in err  # trivy's own words
    assert "Traceback" not in err and "result: failed" in out
    assert report_of(project / "shipit-report.json")["status"] == "failed"
    assert tags(upstream, "tools/hello") == []


def test_a_hanging_trivy_is_stopped_at_the_scan_timeout(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    pidfile = tmp_path / "trivy.pid"
    fake = executable(tmp_path / "bin" / "trivy", HANG.format(pidfile=pidfile))
    with FaultProxy(upstream_of(upstream)) as proxy:
        project = watched_project(tmp_path, proxy.host, "scan: {scanners: [secret], timeout: 3s}\n")
        env = run_env(dockerd.host, tmp_path)
        env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
        code, out, err = run(["run", "-C", str(project)], env, capsys)
        assert no_push_requests(proxy), proxy.state.requests
    assert code == 1
    # what matters: shipit stopped it (it never ends by itself) and said why
    assert "trivy did not finish within scan.timeout (3s)" in err
    assert gone(int(pidfile.read_text(encoding="utf-8"))), "the hung trivy outlived the run"
    assert "result: failed" in out
    assert tags(upstream, "tools/hello") == []


def test_a_missing_trivy_is_a_clear_failure_and_nothing_is_pushed(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan stage looks for trivy on PATH, then next to the Python that runs shipit (the
    trivy wheel's place): both are taken away here."""
    upstream = registry_factory()
    elsewhere = tmp_path / "python-without-trivy" / "bin"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(elsewhere / "python3"))
    with FaultProxy(upstream_of(upstream)) as proxy:
        project = watched_project(tmp_path, proxy.host, "scan: {scanners: [secret]}\n")
        env = run_env(dockerd.host, tmp_path)
        env["PATH"] = path_without("trivy")
        code, out, err = run(["run", "-C", str(project)], env, capsys)
        assert no_push_requests(proxy), proxy.state.requests
    assert code == 1
    assert "trivy is not installed" in err
    assert "Traceback" not in err and "result: failed" in out
    assert tags(upstream, "tools/hello") == []


def test_a_crashing_cosign_fails_signing_and_nothing_is_tagged(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    private, password = keys
    fake = executable(
        tmp_path / "bin" / "cosign",
        COSIGN_BREAKS_ON_SIGN.format(
            real=tool_path("cosign"), action=CRASH.removeprefix("#!/bin/sh\n")
        ),
    )
    project = watched_project(tmp_path, upstream.host, f"sign: {{key: {private}, tlog: false}}\n")
    env = run_env(dockerd.host, tmp_path, COSIGN_PASSWORD=password)
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert code == 1
    assert "cosign could not sign" in err and "garbage" in err
    assert "Traceback" not in err and "result: failed" in out
    document = report_of(project / "shipit-report.json")
    assert document["status"] == "failed"
    refs = document["images"][0]["refs"]
    assert refs and not any(r["pushed"] or r["signed"] for r in refs)
    assert tags(upstream, "tools/hello") == []  # no tag points at the unsigned image
    digest = document["images"][0]["digest"]
    assert client(upstream).has_manifest("tools/hello", digest)  # stored by digest only
    assert "nothing was tagged in any registry" in err
    assert password not in out + err


def test_a_hanging_cosign_is_stopped_and_signing_fails(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """cosign gets `sign.timeout` per signature (300 s unless set); 3 s here."""
    upstream = registry_factory()
    private, password = keys
    pidfile = tmp_path / "cosign.pid"
    fake = executable(
        tmp_path / "bin" / "cosign",
        COSIGN_BREAKS_ON_SIGN.format(
            real=tool_path("cosign"), action=f'echo $$ > "{pidfile}"\nexec sleep infinity'
        ),
    )
    project = watched_project(
        tmp_path, upstream.host, f"sign: {{key: {private}, tlog: false, timeout: 3s}}\n"
    )
    env = run_env(dockerd.host, tmp_path, COSIGN_PASSWORD=password)
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    code, out, err = run(["run", "-C", str(project)], env, capsys)
    assert code == 1  # the hung cosign never ends by itself: shipit's timeout stopped it
    assert "cosign could not sign" in err and "timed out" in err
    refs = report_of(project / "shipit-report.json")["images"][0]["refs"]
    assert refs and not any(r["pushed"] or r["signed"] for r in refs)
    assert tags(upstream, "tools/hello") == []
    assert gone(int(pidfile.read_text(encoding="utf-8"))), "the hung cosign outlived the run"
    assert "result: failed" in out


def test_cosign_missing_from_path_is_an_error_before_anything_is_built(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sign stage looks for cosign on the run's PATH only (not next to Python, unlike
    trivy): a PATH without it is enough."""
    upstream = registry_factory()
    private, password = keys
    with FaultProxy(upstream_of(upstream)) as proxy:
        project = watched_project(tmp_path, proxy.host, f"sign: {{key: {private}, tlog: false}}\n")
        env = run_env(dockerd.host, tmp_path, COSIGN_PASSWORD=password)
        env["PATH"] = path_without("cosign")
        code, _, err = run(["run", "-C", str(project)], env, capsys)
        assert proxy.state.requests == []  # not even a preflight
    assert code == 1
    assert "cosign is not installed" in err
    assert "hint:" in err and "sign: false" in err
    assert "==> build" not in err and "Traceback" not in err


def test_a_cosign_that_crashes_on_every_command_is_named_broken_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    private, password = keys
    fake = executable(tmp_path / "bin" / "cosign", CRASH)
    project = watched_project(tmp_path, upstream.host, f"sign: {{key: {private}, tlog: false}}\n")
    env = run_env(dockerd.host, tmp_path, COSIGN_PASSWORD=password)
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert code != 0
    assert "==> build" not in err and "Traceback" not in err
    assert str(fake) in err
    # what is wrong is said: cosign is broken (its own words), not that it is too old
    assert "garbage" in err or "exited with 2" in err, err


# -- 6. two runs at once, and a run repeated ---------------------------------------------------


def test_two_runs_at_once_to_the_same_registries_both_succeed_with_intact_digests(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    auth_registry: RunningRegistry,
) -> None:
    namespace = f"concurrent{secrets.token_hex(3)}"
    registries = (
        f"[{plain_registry.host}/{namespace}, {{url: {auth_registry.host}/{namespace},"
        " username: shipit, password_env: REGISTRY_PASSWORD}]"
    )
    env = child_env(run_env(dockerd.host, tmp_path, REGISTRY_PASSWORD=auth_registry.password or ""))
    # the same busybox layer under both: the same blob pushed twice at once. It is built once,
    # as a base image: two builds racing on the daemon would each write their own /bin.
    base = f"shipit-test-base-{namespace}:1"
    (tmp_path / "base").mkdir()
    shutil.copy("/bin/busybox", tmp_path / "base" / "busybox")
    (tmp_path / "base" / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    built = subprocess.run(
        ["docker", "build", "-q", "-t", base, str(tmp_path / "base")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    projects = []
    for name in ("alpha", "beta"):
        spec = f"version: 1\nregistries: {registries}\nimage: {{name: {name}}}\n"
        dockerfile = f"FROM {base}\nCOPY {name}.bin /{name}.bin\n"
        files = {f"{name}.bin": os.urandom(3 * 1024 * 1024)}
        projects.append(make_project(tmp_path / name, spec, dockerfile=dockerfile, files=files))
    children = [
        subprocess.Popen(
            [SHIPIT, "run", "-C", str(p), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in projects
    ]
    results = []
    for child in children:
        try:
            results.append(child.communicate(timeout=240))
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=30)
    for child, (_, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
    first_layers = set()
    for name, (out, _) in zip(("alpha", "beta"), results, strict=True):
        document = json.loads(out)
        refs = document["images"][0]["refs"]
        assert refs and all(r["pushed"] for r in refs)
        [digest] = {r["digest"] for r in refs}
        for reg in (plain_registry, auth_registry):
            layers = assert_intact(
                reg, f"{namespace}/{name}", document["images"][0]["tags"], digest
            )
            first_layers.add(layers[0])
    assert len(first_layers) == 1  # both pushed the busybox blob, at the same time
    subprocess.run(["docker", "rmi", base], env=env, capture_output=True, timeout=60, check=False)


def assert_intact(
    reg: RunningRegistry, repository: str, wanted: list[str], digest: str
) -> list[str]:
    """Every tag points at `digest`, and every blob it names has its digest and size; returns
    the digests of the layers."""
    auth = (reg.username, reg.password) if reg.username and reg.password else None
    with client(reg) as registry:
        assert sorted(registry.tags(repository)) == sorted(wanted)
        for tag in wanted:
            assert registry.manifest(repository, tag).digest == digest
        manifest = json.loads(registry.manifest(repository, digest).data)
    for blob in [manifest["config"], *manifest["layers"]]:
        response = requests.get(
            f"http://{reg.host}/v2/{repository}/blobs/{blob['digest']}", auth=auth, timeout=60
        )
        assert response.status_code == 200
        assert len(response.content) == blob["size"]
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == blob["digest"]
    return [layer["digest"] for layer in manifest["layers"]]


def test_the_same_run_twice_the_second_uploads_nothing_and_reports_the_same_digest(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(upstream_of(upstream)) as proxy:
        spec = f"version: 1\nregistries: [{proxy.host}/twice]\nimage: {{name: hello}}\n"
        dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello.txt /hello.txt\n"
        project = make_project(
            tmp_path / "project",
            spec,
            dockerfile=dockerfile,
            files={"busybox": Path("/bin/busybox").read_bytes()},
        )
        seen: list[list[str]] = []
        documents = []
        for _ in range(2):
            with proxy.state.lock:
                proxy.state.requests.clear()
            code, out, err = run(
                ["run", "-C", str(project), "--json"], run_env(dockerd.host, tmp_path), capsys
            )
            assert code == 0, err
            documents.append(json.loads(out))
            with proxy.state.lock:
                seen.append(list(proxy.state.requests))
    first, second = seen
    assert any(r.startswith("PUT ") and "/blobs/uploads/" in r for r in first)
    # the second run: blobs checked (HEAD), none uploaded; only the preflight's session opened
    uploads = [r for r in second if "/blobs/uploads/" in r]
    assert [r.split()[0] for r in uploads] == ["POST", "DELETE"], second
    assert any(r.startswith("HEAD ") for r in second)
    assert len(second) < len(first)
    digests = [{r["digest"] for r in d["images"][0]["refs"]} for d in documents]
    assert digests[0] == digests[1] and len(digests[0]) == 1 and None not in digests[0]
    [digest] = digests[1]
    with client(upstream) as registry:
        for tag in documents[1]["images"][0]["tags"]:
            assert registry.manifest("twice/hello", tag).digest == digest


# -- 7. hostile refs ---------------------------------------------------------------------------


def hostile_branches(marker: Path) -> list[str]:
    return [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"main; touch {marker}",
        f"main | touch {marker}",
        f"main && touch {marker} #",
        f"feature/x\ntouch {marker}",
        "line\r\nfeed\x1b[31m",
        "ünïcödé-ブランチ-🚀",
        "x" * 1000,
        "feature/" + "ä" * 600 + "-tail",
        "-rf --no-preserve-root /",
        "..",
        "日本語",
        "${IFS}$HOME'\"\\",
    ]


def assert_valid_tags_or_usage_error(code: int, out: str, err: str) -> list[str]:
    if code == 2:
        assert "tag rule" in err and "Traceback" not in err
        return []
    assert code == 0, err
    document = json.loads(out)
    found = [t for image in document["images"] for t in image["tags"]]
    assert found
    for tag in found:
        assert DOCKER_TAG.fullmatch(tag), repr(tag)
    for image in document["images"]:
        for ref in image["refs"]:
            assert DOCKER_TAG.fullmatch(ref.rpartition(":")[2]), repr(ref)
    return found


def test_hostile_branch_names_make_valid_tags_or_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    spec = "version: 1\nregistries: [127.0.0.1:5000/hostile]\nimage: {name: hello}\n"
    project = make_project(tmp_path / "project", spec)
    sha = git(project, "rev-parse", "HEAD")
    outcomes = []
    for branch in hostile_branches(marker):
        # as a local override ...
        code, out, err = run(
            ["tags", "--json", "-C", str(project), "--ref", f"refs/heads/{branch}"],
            {"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            capsys,
        )
        outcomes.append(assert_valid_tags_or_usage_error(code, out, err))
        # ... and as GitLab CI says it
        gitlab = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "GITLAB_CI": "true",
            "CI_COMMIT_BRANCH": branch,
            "CI_COMMIT_SHA": sha,
            "CI_PROJECT_DIR": str(project),
        }
        code, out, err = run(["tags", "--json", "-C", str(project)], gitlab, capsys)
        assert_valid_tags_or_usage_error(code, out, err)
    assert sum(1 for tags_made in outcomes if tags_made) >= 10
    assert not marker.exists()


def test_a_hostile_branch_goes_through_build_scan_push_and_sign_without_a_shell(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    markers = [tmp_path / f"pwned{i}" for i in range(4)]
    branch = (
        f"$(touch {markers[0]})`touch {markers[1]}`;touch {markers[2]}|touch {markers[3]}"
        "\nünï ${HOME}"
    )
    private, password = keys
    spec = f"""\
version: 1
registries: [{plain_registry.host}/hostile]
image:
  name: hello
  build_args: {{BRANCH: "{{{{ branch }}}}"}}
  labels: {{org.example.branch: "{{{{ branch }}}}"}}
scan: {{scanners: [secret]}}
sign: {{key: {private}, tlog: false, annotations: {{branch: "{{{{ branch }}}}"}}}}
"""
    project = make_project(
        tmp_path / "project", spec, dockerfile="FROM scratch\nARG BRANCH\nCOPY hello.txt /\n"
    )
    env = run_env(dockerd.host, tmp_path, COSIGN_PASSWORD=password)
    env["PATH"] = f"{cosign_dir()}{os.pathsep}{env['PATH']}"
    code, out, err = run(
        ["run", "-C", str(project), "--ref", f"refs/heads/{branch}", "--json"], env, capsys
    )
    assert code == 0, err
    document = json.loads(out)
    made = document["images"][0]["tags"]
    assert all(DOCKER_TAG.fullmatch(t) for t in made), made
    assert all(r["pushed"] and r["signed"] for r in document["images"][0]["refs"])
    held = [t for t in tags(plain_registry, "hostile/hello") if not t.startswith("sha256-")]
    assert sorted(made) == held  # (sha256-<hex> is where cosign keeps the signature)
    assert not any(m.exists() for m in markers)


SHELL_CALLS = frozenset(
    {
        "system",
        "popen",
        "spawnl",
        "spawnlp",
        "spawnv",
        "spawnvp",
        "execl",
        "execlp",
        "execv",
        "execvp",
        "create_subprocess_shell",
        "getoutput",
        "getstatusoutput",
    }
)


def _called_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _call_problems(node: ast.Call, where: str) -> tuple[list[str], list[str]]:
    """(modules the call imports, problems) of one call."""
    name = _called_name(node)
    modules, problems = [], []
    if name in ("import_module", "__import__") and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            modules.append(first.value)
        else:
            problems.append(f"{where}:{node.lineno}: a computed import")
    if name in SHELL_CALLS:
        problems.append(f"{where}:{node.lineno}: {name}() runs a shell or replaces the process")
    for keyword in node.keywords:
        value = keyword.value
        if keyword.arg == "shell" and not (
            isinstance(value, ast.Constant) and value.value is False
        ):
            problems.append(f"{where}:{node.lineno}: shell={ast.unparse(value)}")
    return modules, problems


def source_problems(path: Path, where: str) -> list[str]:
    problems = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Call):
            modules, found = _call_problems(node, where)
            problems += found
        for module in modules:
            top = module.split(".")[0]
            if (top == "subprocess" and where != "proc.py") or (
                top == "docker" and where != "docker_api.py"
            ):
                problems.append(f"{where}:{getattr(node, 'lineno', 0)}: imports {module}")
    return problems


def test_only_proc_runs_commands_only_docker_api_imports_docker_and_no_shell() -> None:
    source = REPO / "shipit"
    files = sorted(source.rglob("*.py"))
    assert len(files) > 10
    problems = [
        p for path in files for p in source_problems(path, path.relative_to(source).as_posix())
    ]
    assert problems == []
    # the checker itself finds what it is looking for
    probe = ast.parse("import subprocess\nsubprocess.run('x', shell=True)\nos.system('x')\n")
    found = []
    for node in ast.walk(probe):
        if isinstance(node, ast.Call):
            found += _call_problems(node, "probe")[1]
    assert len(found) == 2


# -- 8. secrets never show; TLS is verified ----------------------------------------------------

# Records its argv, waits until the watch has read its command line (the watch marks the
# pid in {seen}), then execs the real tool: every wrapped run is seen, however fast.
RECORDER = """#!/bin/sh
{{ printf '%s\\0' "$0" "$@"; printf '\\n---\\n'; cat /proc/$$/cmdline; printf '\\n===\\n'; }} >> "{log}"
while [ ! -e "{seen}/$$" ] && [ ! -e "{seen}/stopped" ]; do sleep 0.01; done
exec "{real}" "$@"
"""


class CmdlineWatch:
    """Every distinct /proc/PID/cmdline on the machine, sampled every 20 ms; each process
    running a RECORDER wrapper is marked in `marks` once its command line was read."""

    def __init__(self, marks: Path) -> None:
        self.seen: set[bytes] = set()
        self.marks = marks
        marks.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        cmdline = (entry / "cmdline").read_bytes()
                    except OSError:
                        continue
                    self.seen.add(cmdline)
                    if b"/wrappers/" in cmdline:
                        (self.marks / entry.name).touch()

    def stop(self) -> None:
        (self.marks / "stopped").touch()  # a wrapper started from now on waits for nothing
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def cmdline_watch(tmp_path: Path) -> Iterator[CmdlineWatch]:
    watch = CmdlineWatch(tmp_path / "watch-marks")
    try:
        yield watch
    finally:
        watch.stop()


def test_secrets_never_show_anywhere(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: RunningRegistry,
    keys: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    cmdline_watch: CmdlineWatch,
) -> None:
    private, cosign_password = keys
    registry_password = auth_registry.password or ""
    assert registry_password and cosign_password
    argv_log = tmp_path / "argv.log"
    wrappers = tmp_path / "wrappers"
    for tool in ("trivy", "cosign"):
        executable(
            wrappers / tool,
            RECORDER.format(log=argv_log, real=tool_path(tool), seen=cmdline_watch.marks),
        )
    spec = f"""\
version: 1
registries:
  - {{url: {auth_registry.host}/secrets, username: shipit, password_env: REGISTRY_PASSWORD}}
image: {{name: hello}}
scan: {{scanners: [secret]}}
sign: {{key: {private}, tlog: false}}
"""
    project = make_project(tmp_path / "project", spec)
    sha = git(project, "rev-parse", "HEAD")
    base = run_env(
        dockerd.host,
        tmp_path,
        REGISTRY_PASSWORD=registry_password,
        COSIGN_PASSWORD=cosign_password,
    )
    base["PATH"] = f"{wrappers}{os.pathsep}{base['PATH']}"
    texts: list[str] = []

    # GitHub Actions: outputs and the step summary
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    github = {
        **base,
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_SHA": sha,
        "GITHUB_EVENT_NAME": "push",
    }
    code, out, err = run(["run", "-C", str(project), "-v"], github, capsys)
    assert code == 0, err
    assert output.read_text(encoding="utf-8") and summary.read_text(encoding="utf-8")
    texts += [out, err, output.read_text(encoding="utf-8"), summary.read_text(encoding="utf-8")]
    texts.append((project / "shipit-report.json").read_text(encoding="utf-8"))

    # GitLab CI: the dotenv report
    ci_dir = tmp_path / "ci-project-dir"
    ci_dir.mkdir()
    gitlab = {
        **base,
        "GITLAB_CI": "true",
        "CI_PROJECT_DIR": str(ci_dir),
        "CI_COMMIT_BRANCH": "main",
        "CI_COMMIT_SHA": sha,
    }
    code, out, err = run(["run", "-C", str(project), "-v", "--json"], gitlab, capsys)
    assert code == 0, err
    texts += [out, err, (ci_dir / "shipit.env").read_text(encoding="utf-8")]

    # a wrong password: the preflight's error text
    wrong = "wrong-" + secrets.token_urlsafe(16)
    code, out, err = run(
        ["run", "-C", str(project), "-v", "--report", str(tmp_path / "wrong.json")],
        {**base, "REGISTRY_PASSWORD": wrong},
        capsys,
    )
    assert code == 1
    assert "401" in err or "credentials" in err
    texts += [out, err, (tmp_path / "wrong.json").read_text(encoding="utf-8")]

    recorded = argv_log.read_bytes()
    assert recorded.count(b"===") >= 4  # trivy and cosign ran, through the wrappers
    assert b"cosign" in recorded and b"trivy" in recorded
    cmdline_watch.stop()
    # what matters: the sampler saw the cosign children's command lines (each wrapper waited
    # until it had; how many samples that took depends on the machine, so is never asserted)
    assert any(b"cosign" in c for c in cmdline_watch.seen)
    everything = "\n".join(texts).encode() + recorded + b"\n".join(cmdline_watch.seen)
    for secret in (registry_password, cosign_password, wrong):
        assert secret.encode() not in everything, "a secret leaked"


def test_a_tls_registry_without_its_ca_fails_preflight_naming_it(
    tmp_path: Path,
    dockerd: Dockerd,
    tls_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{tls_registry.host}/noca]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
    assert code == 1
    assert f"{tls_registry.host}/noca" in err
    assert "TLS" in err and "certificate" in err
    assert "ca_file" in err  # what to do about it
    assert "==> build" not in err


def test_insecure_true_skips_tls_verification_with_a_warning(
    tmp_path: Path,
    dockerd: Dockerd,
    tls_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = (
        f"version: 1\nregistries: [{{url: {tls_registry.host}/insecure, insecure: true}}]\n"
        "image: {name: hello}\n"
    )
    project = make_project(tmp_path / "project", spec)
    code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
    assert code == 0, err
    assert re.search(rf"warning: .*{re.escape(tls_registry.host)}.*not verified", err), err
    assert tags(tls_registry, "insecure/hello") != []
