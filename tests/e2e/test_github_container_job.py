"""The GitHub Action in a container job: act runs a job whose `container:` is shipit's own image
(built here from the local Debian base, tests/support/ci_images.py), beside the host-mode test
of tests/e2e/test_github_action.py.

The job's container gets the test daemon's socket (act mounts the socket DOCKER_HOST names,
`--container-daemon-socket`), act's default `--network host` (the loopback registry is the
host's 127.0.0.1), the locked wheels as a read-only volume (PIP_NO_INDEX, PIP_FIND_LINKS: the
action installs shipit from its own checkout and the lock, offline) and a folder for what the
test reads afterwards (act removes the container). act's platform label maps to the same image
(`-P ubuntu-latest=IMAGE`), and nothing is pulled (`--pull=false`). In the image, Trivy and
cosign are on PATH: the action installs neither.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_github_action import (
    ACT_TIMEOUT,
    RELEASE,
    _tail,
    act_env,
    make_action_repo,
    manifest_digest,
    registry_tags,
    write_event,
)
from tests.support.ci_images import own_image
from tests.support.debian_base import BaseImage, base_image
from tests.support.services import Dockerd, Registry, stop_process, tool_path
from tests.support.wheelhouse import locked_wheels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(ACT_TIMEOUT + 600)]

WORKFLOW = """\
name: release
on: push
permissions: {{}}
jobs:
  release:
    runs-on: ubuntu-latest
    container:
      image: {image}
      env:
        PIP_NO_INDEX: "1"
        PIP_FIND_LINKS: /wheels
      volumes:
        - {wheels}:/wheels:ro
        - {out}:/out
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          persist-credentials: false
      - name: Ship
        id: ship
        uses: ./shipit
        with:
          working-directory: app
          args: --report /out/report.json
      - name: Record the outputs
        env:
          VERSION: ${{{{ steps.ship.outputs.version }}}}
          DIGEST: ${{{{ steps.ship.outputs.digest }}}}
        run: |
          python3 -c 'import json, os; json.dump({{n: os.environ[n] for n in ("VERSION", "DIGEST")}}, open("/out/outputs.json", "w"))'
          for tool in shipit trivy cosign docker; do command -v "$tool"; done >/out/tools.txt
"""

SPEC = """\
version: 1
registries: [{registry}/container-job]
image: {{name: hello}}
scan: {{scanners: [secret], fail_on: HIGH}}
sign: false
"""


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return base_image("python")


def test_the_action_runs_in_a_container_job_of_shipits_own_image(
    tmp_path: Path, dockerd: Dockerd, plain_registry: Registry, base: BaseImage
) -> None:
    assert dockerd.host.startswith("unix://"), dockerd.host
    image = own_image(base, tmp_path / "image")
    out = tmp_path / "out"
    out.mkdir()
    wheels = locked_wheels(base.python_version())
    repo = make_action_repo(
        tmp_path / "repo",
        {
            ".github/workflows/release.yml": WORKFLOW.format(image=image, wheels=wheels, out=out),
            "app/shipit.yml": SPEC.format(registry=plain_registry.host),
            "app/Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n",
            "app/hello.txt": "hello from a container job\n",
        },
    )
    argv = [
        tool_path("act"), "push",
        "--workflows", str(repo / ".github" / "workflows"),
        "--eventpath", str(write_event(tmp_path / "event.json", repo)),
        "--platform", f"ubuntu-latest={image}",
        "--container-daemon-socket", dockerd.host,
        "--pull=false", "--action-offline-mode", "--no-cache-server",
        "--defaultbranch", "main",
    ]  # fmt: skip
    env = act_env(tmp_path / "home", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  DOCKER_HOST=dockerd.host)  # fmt: skip
    log = tmp_path / "act.log"
    started = time.monotonic()
    with log.open("wb") as output:
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=ACT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"act did not finish in {ACT_TIMEOUT:.0f} s:\n{_tail(log)}")
        finally:  # a timeout or an interrupt: act and what it started go too
            if proc.poll() is None:
                stop_process(proc.pid)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, (
        f"act failed ({code}) after {time.monotonic() - started:.0f} s:\n{_tail(log, 150)}"
    )
    print(f"act container job: {time.monotonic() - started:.1f} s")

    # the job ran in the image: its trivy and cosign, none installed by the action
    tools = (out / "tools.txt").read_text().split()
    assert tools == [
        "/opt/shipit/bin/shipit", "/opt/shipit/bin/trivy", "/usr/local/bin/cosign",
        "/usr/local/bin/docker",
    ], tools  # fmt: skip
    assert "trivy: installed" not in text and "cosign: installed" not in text, text[-3000:]
    # the action installed shipit from its checkout and the lock, offline
    assert "+ pip install --require-hashes --no-deps -r requirements/shipit.lock" in text

    outputs = json.loads((out / "outputs.json").read_text())
    assert outputs["VERSION"] == RELEASE.removeprefix("v")
    digest = outputs["DIGEST"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "success"
    repository = "container-job/hello"
    assert "1.2.3" in registry_tags(plain_registry, repository)
    assert manifest_digest(plain_registry, repository, "1.2.3") == digest
