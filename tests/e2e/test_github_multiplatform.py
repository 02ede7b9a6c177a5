"""Multi-platform images through the GitHub Action under act (offline, on the host):

- a plain two-platform `shipit run` in one job (BuildKit builds both platforms);
- examples/multi-platform's workflow as it is: a plan job (`shipit matrix --by platform`), a
  two-entry matrix of leg jobs (`leg: true`), and a merge job that `needs:` them (`merge:
  true`), using only `./` and shell steps. The legs reach the merge through the registry
  (`leg-record`); the merge job installs cosign itself (the action's `install-tools`, from a
  loopback mirror of the release, checksum checked) and signs with a key. One job is added,
  which `needs: merge` and writes the merge job's outputs to a file the test reads.

act runs every job on this machine; both legs build on bookworm's dockerd (buildx `--load`s
one platform at a time), the arm64 one for a foreign platform (a FROM scratch image of COPY
steps needs no emulation). The repository variable SHIPIT_REGISTRY (`--var`) points the
workflow at a loopback registry, so its ghcr.io login steps are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.registry import Endpoint
from shipit.registry import Registry as Client
from tests.e2e.test_github_action import (  # noqa: F401 (wheelhouse: a fixture, used by name)
    RELEASE,
    _tail,
    act_env,
    copy_action,
    run_act,
    wheelhouse,
    write_event,
)
from tests.e2e.test_gitlab_include import (
    cosign_mirror,  # noqa: F401 (a fixture)
    cosign_sha256,
)
from tests.integration.test_multiplatform import file_in_image
from tests.support.cli import run_shipit
from tests.support.gitrepo import git, make_repo
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.services import REPO, Dockerd, Registry, tool_path

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

EXAMPLE = REPO / "examples" / "multi-platform"
RUNNERS = ["ubuntu-latest", "ubuntu-24.04", "ubuntu-24.04-arm"]
ARCH_NOTE = {"linux/amd64": b"built for amd64\n", "linux/arm64": b"built for arm64\n"}
PLAIN_WORKFLOW = """\
name: release
on: push
permissions: {}
jobs:
  release:
    runs-on: ubuntu-latest
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          persist-credentials: false
      - id: ship
        uses: ./
        with:
          working-directory: examples/multi-platform
      - name: Record the outputs
        env:
          RESULT: ${{ steps.ship.outputs.json }}
          OUTPUTS_FILE: "@OUTPUTS@"
        run: printf '%s' "$RESULT" > "$OUTPUTS_FILE"
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


def example_repo(root: Path, workflow: str) -> Path:
    """A repository laid out like shipit's: the action at the root, examples/multi-platform,
    and `workflow` as its one workflow; tagged RELEASE."""
    make_repo(root)
    staged = root.parent / "action-copy"
    copy_action(staged)
    for item in staged.iterdir():
        item.rename(root / item.name)
    staged.rmdir()
    shutil.copytree(
        EXAMPLE, root / "examples" / "multi-platform", ignore=shutil.ignore_patterns(".github")
    )
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "release.yml").write_text(workflow, encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the multi-platform example and the action")
    git(root, "tag", "-a", "-m", f"release {RELEASE}", RELEASE)
    git(root, "remote", "add", "origin", "https://github.com/example/multi.git")
    return root


def tools(folder: Path, *names: str) -> str:
    """A PATH with `names` (trivy, cosign) first, then the machine's (docker, buildx, git)."""
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(tool_path(name))
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def registry_client(registry: Registry) -> Client:
    return Client(Endpoint(host=registry.host))


def act_args(registry: Registry) -> list[str]:
    args = ["--var", f"SHIPIT_REGISTRY={registry.host}"]
    for label in RUNNERS[1:]:
        args += ["--platform", f"{label}=-self-hosted"]
    return args


def check_index(registry: Registry, digest: str) -> dict[str, str]:
    """The platforms of the index `digest` in examples/multi, each image's /arch.txt checked."""
    client = registry_client(registry)
    index = client.manifest("examples/multi", digest)
    assert index.is_index
    children = {c.platform: c.digest for c in index.children()}
    assert sorted(children) == sorted(ARCH_NOTE)  # no unknown/unknown attestation entries
    for platform, child in children.items():
        assert file_in_image(client, "examples/multi", child, "arch.txt") == ARCH_NOTE[platform]
    return {str(k): v for k, v in children.items()}


def test_the_action_builds_two_platforms_in_one_job(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: Registry,
    wheelhouse: Path,  # noqa: F811
    keys: KeyPair,
) -> None:
    outputs = tmp_path / "outputs.json"
    repo = example_repo(tmp_path / "repo", PLAIN_WORKFLOW.replace("@OUTPUTS@", str(outputs)))
    env = act_env(
        tmp_path / "home",
        tools(tmp_path / "tools", "trivy", "cosign"),
        DOCKER_HOST=dockerd.host,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
        SHIPIT_REGISTRY=plain_registry.host,
        COSIGN_KEY=str(keys.private),
        COSIGN_PASSWORD=keys.password,
        COSIGN_TLOG="false",
    )
    log_file = tmp_path / "act.log"
    code, log = run_act(repo, write_event(tmp_path / "event.json", repo), env, log_file)
    assert code == 0, f"act failed ({code}); its log:\n{_tail(log_file, 150)}"
    assert "with buildx for linux/amd64" in log and "linux/arm64" in log
    document: dict[str, Any] = json.loads(outputs.read_text(encoding="utf-8"))
    assert document["status"] == "success"
    [image] = document["images"]
    assert sorted(p["platform"] for p in image["platforms"]) == sorted(ARCH_NOTE)
    children = check_index(plain_registry, image["digest"])
    assert children == {p["platform"]: p["digest"] for p in image["platforms"]}
    client = registry_client(plain_registry)
    for tag in image["tags"]:
        assert client.manifest("examples/multi", tag).digest == image["digest"]
    assert all(r["signed"] for r in image["refs"])


def test_the_example_workflow_builds_legs_in_a_matrix_and_merges_them(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: Registry,
    wheelhouse: Path,  # noqa: F811
    cosign_mirror: str,  # noqa: F811
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workflow = yaml.safe_load((EXAMPLE / ".github" / "workflows" / "release.yml").read_text())
    assert set(workflow["jobs"]) == {"plan", "leg", "merge"}
    outputs = tmp_path / "merge-outputs.json"
    text = (EXAMPLE / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    text += f"""
  record:
    needs: merge
    runs-on: ubuntu-latest
    steps:
      - env:
          OUTPUTS: ${{{{ toJSON(needs.merge.outputs) }}}}
          OUTPUTS_FILE: {json.dumps(str(outputs))}
        run: printf '%s' "$OUTPUTS" > "$OUTPUTS_FILE"
"""
    repo = example_repo(tmp_path / "repo", text)
    env = act_env(
        tmp_path / "home",
        tools(tmp_path / "tools", "trivy"),  # no cosign: the merge job installs it
        DOCKER_HOST=dockerd.host,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
        SHIPIT_COSIGN_BASE_URL=cosign_mirror,
        SHIPIT_COSIGN_SHA256=cosign_sha256(),
        COSIGN_KEY=str(keys.private),
        COSIGN_PASSWORD=keys.password,
        COSIGN_TLOG="false",
    )
    log_file = tmp_path / "act.log"
    code, log = run_act(
        repo, write_event(tmp_path / "event.json", repo), env, log_file, act_args(plain_registry)
    )
    assert code == 0, f"act failed ({code}); its log:\n{_tail(log_file, 200)}"
    # two legs, each its own job and platform, each recorded; one merge
    for platform in ARCH_NOTE:
        assert f"+ shipit run --leg --platform {platform} --leg-record --image multi" in log
    assert log.count("+ shipit merge") == 1
    assert "cosign: installed cosign-linux-" in log and f"from {cosign_mirror}" in log

    merged = json.loads(outputs.read_text(encoding="utf-8"))
    assert merged["version"] == "1.2.3"
    digest = merged["digest"]
    refs = merged["tags"].splitlines()
    prefix = f"{plain_registry.host}/examples/multi:"
    assert {f"{prefix}1.2.3", f"{prefix}1.2", f"{prefix}1", f"{prefix}latest"} <= set(refs)
    children = check_index(plain_registry, digest)
    client = registry_client(plain_registry)
    tags = client.tags("examples/multi")
    sha = git(repo, "rev-parse", "HEAD")
    records = sorted(t for t in tags if t.startswith("shipit-leg-"))
    assert records == sorted(
        f"shipit-leg-{sha[:12]}-linux-{arch}-1.2.3" for arch in ("amd64", "arm64")
    )
    for ref in refs:
        assert client.manifest("examples/multi", ref.rpartition(":")[2]).digest == digest
    # the index and both platforms are signed with the key
    verify_env = {
        "PATH": f"{Path(tool_path('cosign')).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "SHIPIT_REGISTRY": plain_registry.host,
        "COSIGN_TLOG": "false",
    }
    wanted = [f"{prefix.rstrip(':')}@{d}" for d in (digest, *children.values())]
    code, out, err = run_shipit(
        [
            "verify",
            "-C",
            str(repo / "examples" / "multi-platform"),
            "--key",
            str(keys.public),
            *wanted,
        ],
        capsys,
        verify_env,
    )
    assert code == 0, err
    assert out.count("verified") == 3
    print(f"merge job outputs: {json.dumps(merged, indent=2)}")  # for the record (pytest -s)
    print(f"index {digest} in {plain_registry.host}: {json.dumps(children)}")
