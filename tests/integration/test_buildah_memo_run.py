"""The buildah engine's build memo for real: bookworm's buildah 1.28 in storage of the test's
own, `shipit run` again and again on one project. A run whose inputs are as before does not
run `buildah build` and pushes the same digest; a changed context file, or an image of the
build removed from the storage (`buildah rmi`), makes buildah build again."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_buildah import Storage, env_for
from tests.support.cli import run_shipit
from tests.support.project import make_project
from tests.support.services import Registry as RunningRegistry
from tests.support.services import RegistryFactory, registry_client

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

RECALLED = "so buildah build was not run"
BUILT = re.compile(r"built app: (sha256:[0-9a-f]{64}) ")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    made = Storage(tmp_path / "containers")
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture(scope="module")
def registry(registry_factory: RegistryFactory) -> RunningRegistry:
    return registry_factory()


def test_an_unchanged_build_is_taken_from_the_memo_and_a_change_or_a_removed_image_builds(
    tmp_path: Path,
    storage: Storage,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"bm{os.urandom(3).hex()}"
    spec = f"version: 1\nregistries: [{registry.host}/{namespace}]\nimage: {{name: app, engine: buildah}}\n"
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY payload /payload\nLABEL step=two\nCOPY hello.txt /hello\n",
        files={"payload": os.urandom(2 * 1024 * 1024)},
    )
    env = env_for(tmp_path, storage, SHIPIT_CACHE_DIR=str(tmp_path / "cache"))

    def run() -> tuple[str, str, str]:
        """The run's digest, the image id buildah's storage holds for it, and its log."""
        report = tmp_path / "report.json"
        code, _, err = run_shipit(
            ["run", "-C", str(project), "--skip", "scan", "--report", str(report), "-v"],
            capsys,
            env,
        )
        assert code == 0, err
        [image] = json.loads(report.read_text())["images"]
        found = BUILT.search(err)
        assert found is not None, err
        return image["digest"], found[1], err

    first, image_id, err = run()
    assert RECALLED not in err and "STEP 1/" in err
    second, again, err = run()
    assert RECALLED in err, err
    assert "STEP 1/" not in err  # buildah build did not run
    assert (second, again) == (first, image_id)
    assert registry_client(registry).manifest(f"{namespace}/app", first).digest == first
    # tagged as the build tags it: the local name is the recalled image
    listed = storage.tool("buildah", "images", "--no-trunc", "--format", "{{.ID}} {{.Name}}")
    assert any(line.split()[0].endswith(image_id.removeprefix("sha256:")) and "app" in line
               for line in listed.stdout.splitlines()), listed.stdout  # fmt: skip

    (project / "payload").write_bytes(os.urandom(1024))  # a changed context file
    third, changed, err = run()
    assert RECALLED not in err and "STEP 1/" in err
    assert third != first and changed != image_id
    _, _, err = run()
    assert RECALLED in err, err

    # the image the memo names is gone from the storage: buildah builds again
    removed = storage.tool("buildah", "rmi", "--force", changed)
    assert removed.returncode == 0, removed.stderr
    _, rebuilt, err = run()
    assert RECALLED not in err and "STEP 1/" in err
    _, _, err = run()
    assert RECALLED in err, err  # recorded again

    # one step's image gone (not the final one): buildah would not walk the same steps
    held = storage.tool("buildah", "images", "--all", "--quiet", "--no-trunc").stdout.split()
    step = next(x for x in held if x != rebuilt)
    removed = storage.tool("buildah", "rmi", "--force", step)
    assert removed.returncode == 0, removed.stderr
    _, _, err = run()
    assert RECALLED not in err and "STEP 1/" in err


def test_only_named_sources_key_the_memo_and_a_base_with_onbuild_triggers_is_not_recorded(
    tmp_path: Path,
    storage: Storage,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The memo's key covers what COPY names (dockerfile.context_names): a changed file beside
    it (the project's .git, a note) keeps the recorded image. A base image whose ONBUILD
    triggers copy the whole context makes a build the memo does not record, so a change to
    any file builds again and lands in the image."""
    namespace = f"bm{os.urandom(3).hex()}"
    spec = f"version: 1\nregistries: [{registry.host}/{namespace}]\nimage: {{name: app, engine: buildah}}\n"
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY hello.txt /hello\n",
        files={"notes.txt": "one\n"},
    )
    env = env_for(tmp_path, storage, SHIPIT_CACHE_DIR=str(tmp_path / "cache"))
    argv = ["run", "-C", str(project), "--skip", "scan", "--no-push", "-v"]

    def run() -> str:
        code, _, err = run_shipit(argv, capsys, env)
        assert code == 0, err
        return err

    assert RECALLED not in run()
    (project / "notes.txt").write_text("two\n", encoding="utf-8")
    assert RECALLED in run()

    base = tmp_path / "base"
    base.mkdir()
    (base / "Dockerfile").write_text("FROM scratch\nONBUILD COPY . /all/\n", encoding="utf-8")
    made = storage.tool(
        "buildah", "build", "--format", "docker", "-t", "localhost/obase:1", str(base)
    )
    assert made.returncode == 0, made.stderr
    (project / "Dockerfile").write_text(
        "FROM localhost/obase:1\nCOPY hello.txt /hello\n", encoding="utf-8"
    )
    for _ in range(2):  # built both times: nothing recorded
        err = run()
        assert RECALLED not in err and "STEP 1/" in err
    (project / "notes.txt").write_text("three\n", encoding="utf-8")
    err = run()
    assert RECALLED not in err and "STEP 1/" in err
    found = BUILT.search(err)
    assert found is not None, err
    mounted = storage.tool("buildah", "from", found[1])
    assert mounted.returncode == 0, mounted.stderr
    container = mounted.stdout.strip().splitlines()[-1]
    try:
        mount = storage.tool("buildah", "mount", container)
        assert mount.returncode == 0, mount.stderr
        root = Path(mount.stdout.strip())
        assert (root / "all" / "notes.txt").read_text(encoding="utf-8") == "three\n"
    finally:
        storage.tool("buildah", "rm", container)
