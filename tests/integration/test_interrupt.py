"""Ctrl-C and SIGTERM: children stop, the run exits 130 and says so, a second run finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipit.registry import Endpoint, Registry
from tests.support.processes import wait_ended
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, tool_path
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)

SLOW_TRIVY = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep infinity
"""  # ends only when it is stopped: nothing here races a sleep


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_scan_stops_the_scanner_and_exits_130(
    tmp_path: Path, dockerd: Dockerd, plain_registry: RunningRegistry, sig: signal.Signals
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    pidfile = tmp_path / "trivy.pid"
    (fake / "trivy").write_text(SLOW_TRIVY.format(pidfile=pidfile), encoding="utf-8")
    (fake / "trivy").chmod(0o755)
    spec = f"version: 1\nregistries: [{plain_registry.host}/interrupted-{sig.name.lower()}]\nimage: {{name: hello}}\nscan: {{scanners: [secret]}}\n"
    project = make_project(tmp_path / "project", spec)
    env = run_env(dockerd.host, tmp_path)
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    shipit = str(Path(sys.executable).parent / "shipit")
    # A terminal's Ctrl-C reaches a process whose SIGINT is the default; a test runner started
    # in the background may have SIGINT ignored, and the child would inherit that.
    with subprocess.Popen(
        [shipit, "run", "-C", str(project)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    ) as child:
        try:
            # until the scanner runs or shipit ends: bounded by the test's timeout, not a guess
            while not pidfile.exists() and child.poll() is None:
                time.sleep(0.1)
            assert pidfile.exists(), "the fake scanner never started"
            scanner = int(pidfile.read_text())
            assert alive(scanner)
            child.send_signal(sig)
            _, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 130, err
    assert "interrupted" in err
    wait_ended(scanner)  # it never ends by itself: this returns because shipit stopped it
    document = json.loads((project / "shipit-report.json").read_text(encoding="utf-8"))
    assert document["status"] == "interrupted"
    with Registry(Endpoint(host=plain_registry.host)) as client:
        assert client.tags(f"interrupted-{sig.name.lower()}/hello") == []

    # a second run, with the real scanner, finishes the job
    env["PATH"] = (
        f"{Path(tool_path('trivy')).parent}{os.pathsep}{run_env(dockerd.host, tmp_path)['PATH']}"
    )
    again = subprocess.run(
        [shipit, "run", "-C", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert again.returncode == 0, again.stderr
