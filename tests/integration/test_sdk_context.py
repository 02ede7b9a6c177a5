"""The SDK engine's build context, streamed to the daemon while it is written.

What lands in the image is what docker-py's own archive holds: `.dockerignore` is honoured,
a large file arrives whole, and a Dockerfile outside the context is sent along under a name of
its own (docker-py's way). Checked in the image the real daemon built (`docker save`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.cli import run_shipit
from tests.support.gitrepo import git, make_repo
from tests.support.services import Dockerd
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)


def image_files(docker_host: str, ref: str) -> dict[str, bytes]:
    """Every regular file in the image's layers, by path, read from `docker save`: the
    layers its manifest.json lists, as the classic store writes them (`<id>/layer.tar`) or
    the containerd store (`blobs/sha256/<digest>`, gzipped as stored), so the daemon the
    session finds may keep images either way."""
    saved = subprocess.run(
        ["docker", "save", ref],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        check=True,
    ).stdout
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        listed = outer.extractfile("manifest.json")
        assert listed is not None
        [manifest] = json.loads(listed.read())
        for name in manifest["Layers"]:
            layer = outer.extractfile(name)
            assert layer is not None
            with tarfile.open(fileobj=io.BytesIO(layer.read()), mode="r:*") as inner:
                for item in inner:
                    handle = inner.extractfile(item) if item.isfile() else None
                    if handle is not None:
                        files[item.name] = handle.read()
    return files


def build(root: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> dict[str, bytes]:
    """Build the project with shipit (no push) and read back the image the daemon holds."""
    argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    return image_files(env["DOCKER_HOST"], json.loads(out)["images"][0]["image_id"])


def project(
    root: Path, registry: str, image: str, files: Mapping[str, str | bytes] | None = None
) -> Path:
    """A repository with the spec; with `files` (path: text or bytes), those too, committed.
    The spec names `engine: sdk`: on a daemon with the containerd image store an image that
    names no engine is built with buildx (Engines.choose_defaults)."""
    make_repo(root, [{}])
    (root / "shipit.yml").write_text(
        f"version: 1\nengine: sdk\nregistries: [{registry}/ctx]\n{image}\n", encoding="utf-8"
    )
    if files:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data.encode() if isinstance(data, str) else data)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "context")
    return root


def test_dockerignore_is_honoured_and_a_large_file_arrives_whole(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = project(tmp_path / "p", plain_registry.host, "image: {name: ctx}")
    big = os.urandom(5 * 1024 * 1024 + 3)  # several chunks of the pipe
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n", encoding="utf-8")
    (root / "big.bin").write_bytes(big)
    (root / "keep").mkdir()
    (root / "keep" / "a.txt").write_text("kept\n", encoding="utf-8")
    (root / "secret.env").write_text("TOKEN=not-for-the-image\n", encoding="utf-8")
    (root / ".dockerignore").write_text("# not this\nsecret.env\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "context")
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    files = build(root, env, capsys)
    assert hashlib.sha256(files["ctx/big.bin"]).digest() == hashlib.sha256(big).digest()
    assert files["ctx/keep/a.txt"] == b"kept\n"
    assert "ctx/secret.env" not in files
    assert "ctx/shipit.yml" in files  # the rest of the context is there


def test_a_dockerfile_outside_the_context(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = "image: {name: outside, context: app, dockerfile: ../build/Dockerfile}"
    root = project(tmp_path / "p", plain_registry.host, image)
    (root / "app").mkdir()
    (root / "app" / "hello.txt").write_text("hello\n", encoding="utf-8")
    (root / "build").mkdir()
    (root / "build" / "Dockerfile").write_text("FROM scratch\nCOPY . /app/\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "context")
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    files = build(root, env, capsys)
    assert files["app/hello.txt"] == b"hello\n"
    # docker-py sends the outside Dockerfile under a random name and hides it with an added
    # .dockerignore entry, so COPY . copies neither
    assert not [name for name in files if ".dockerfile." in name]


NOT_SENT = "the context was not sent"


def test_an_unchanged_build_is_not_sent_again_and_a_changed_one_is(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The build memo: the same inputs give the image the daemon built from them last time,
    without the context; a changed file, an ignored one, a build arg, and a record whose
    image is gone each get the answer the builder would give."""
    image = "image: {{name: memo, build_args: {{GREETING: {}}}}}"
    root = project(tmp_path / "p", plain_registry.host, image.format("hi"))
    (root / "Dockerfile").write_text(
        "FROM scratch\nARG GREETING\nCOPY . /ctx/\nLABEL greeting=$GREETING\n", encoding="utf-8"
    )
    (root / "a.txt").write_text("one\n", encoding="utf-8")
    (root / ".dockerignore").write_text("ignored.txt\nshipit.yml\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "context")
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}

    def run() -> tuple[str, str]:
        argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]
        code, out, err = run_shipit(argv, capsys, env)
        assert code == 0, err
        return json.loads(out)["images"][0]["image_id"], err

    first, err = run()
    assert NOT_SENT not in err
    again, err = run()
    assert (again, NOT_SENT in err) == (first, True)
    (root / "ignored.txt").write_text("not in the context\n", encoding="utf-8")
    again, err = run()
    assert (again, NOT_SENT in err) == (first, True)
    (root / "a.txt").write_text("two\n", encoding="utf-8")
    changed, err = run()
    assert NOT_SENT not in err
    assert changed != first
    assert image_files(dockerd.host, changed)["ctx/a.txt"] == b"two\n"
    (root / "shipit.yml").write_text(  # the spec is not in the context: only the args change
        f"version: 1\nengine: sdk\nregistries: [{plain_registry.host}/ctx]\n"
        f"{image.format('hello')}\n",
        encoding="utf-8",
    )
    other, err = run()
    assert NOT_SENT not in err
    assert other != changed
    subprocess.run(  # the image goes: its record no longer holds, the build is sent again
        ["docker", "rmi", "-f", other],
        env={**os.environ, "DOCKER_HOST": dockerd.host},
        capture_output=True,
        check=True,
    )
    rebuilt, err = run()
    assert NOT_SENT not in err
    assert image_files(dockerd.host, rebuilt)["ctx/a.txt"] == b"two\n"


def test_a_base_with_onbuild_triggers_gets_the_whole_context(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The classic builder is sent only what COPY and ADD name (dockerfile.context_names),
    but a base image's `ONBUILD COPY . /all/` reads the whole context: the build stops at the
    trigger line and is sent again with everything, so the image holds what the builder
    would have copied."""
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    docker_env = {**os.environ, "DOCKER_HOST": dockerd.host}
    base = project(
        tmp_path / "base",
        plain_registry.host,
        "image: {name: onbuild-base}",
        {
            "Dockerfile": "FROM scratch\nCOPY marker /marker\nONBUILD COPY . /all/\n",
            "marker": "base\n",
        },
    )
    argv = ["run", "-C", str(base), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    base_id = json.loads(out)["images"][0]["image_id"]
    subprocess.run(
        ["docker", "tag", base_id, "shipit-test/onbuild-base:1"], env=docker_env, check=True
    )

    child = project(
        tmp_path / "child",
        plain_registry.host,
        "image: {name: onbuild-child}",
        {
            "Dockerfile": "FROM shipit-test/onbuild-base:1\nCOPY a.txt /a.txt\n",
            "a.txt": "named\n",
            "b.txt": "read by the trigger alone\n",
        },
    )
    argv = ["run", "-C", str(child), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    assert "ONBUILD triggers" in err
    files = image_files(dockerd.host, json.loads(out)["images"][0]["image_id"])
    assert files["all/b.txt"] == b"read by the trigger alone\n"
    assert files["a.txt"] == b"named\n"
    assert "all/.git/HEAD" in files  # the whole context, as `docker build` sends it


def test_a_build_that_names_its_files_gets_those_files(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only what COPY names is sent (the archive is checked in tests/unit/
    test_context_names.py); the image is what the whole context would give, and a rebuild
    with a file outside those names changed is recalled from the memo."""
    root = project(
        tmp_path / "p",
        plain_registry.host,
        "image: {name: named}",
        {
            "Dockerfile": "FROM scratch\nCOPY app /app\nCOPY conf/x.ini /etc/x.ini\n",
            "app/main.py": "print('hi')\n",
            "conf/x.ini": "[x]\n",
            "notes.txt": "one\n",
        },
    )
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    first = json.loads(out)["images"][0]["image_id"]
    files = image_files(dockerd.host, first)
    assert files == {"app/main.py": b"print('hi')\n", "etc/x.ini": b"[x]\n"}
    (root / "notes.txt").write_text("two\n", encoding="utf-8")
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    assert (json.loads(out)["images"][0]["image_id"], NOT_SENT in err) == (first, True)


def test_a_dockerfile_in_a_folder_of_the_context_with_named_sources(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The archive then holds `build/Dockerfile` without its folder's own entry, and neither
    the rest of `build/` nor the rest of the context; the daemon finds the Dockerfile all the
    same."""
    image = "image: {name: infolder, dockerfile: build/Dockerfile}"
    files = {
        "build/Dockerfile": "FROM scratch\nCOPY app /app/\n",
        "build/notes.txt": "not sent\n",
        "app/hello.txt": "hello\n",
    }
    root = project(tmp_path / "p", plain_registry.host, image, files)
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    assert build(root, env, capsys) == {"app/hello.txt": b"hello\n"}


def test_a_multi_stage_build_is_recalled_until_another_stages_last_step_goes(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The memo asks the daemon for the image's history and for that of every other stage's
    last step (Daemon.holds): a two-stage build is recalled while both chains are there, and
    built again (the context sent) once the first stage's last image is removed."""
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host}
    root = project(
        tmp_path / "p",
        plain_registry.host,
        "image: {name: stages}",
        {
            "Dockerfile": (
                "FROM scratch AS builder\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n"
                "FROM scratch\nCOPY --from=builder /b.txt /from-builder.txt\nCOPY c.txt /c.txt\n"
            ),
            "a.txt": "a\n",
            "b.txt": "b\n",
            "c.txt": "c\n",
        },
    )
    argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]

    def run() -> tuple[str, bool]:
        code, out, err = run_shipit(argv, capsys, env)
        assert code == 0, err
        return json.loads(out)["images"][0]["image_id"], NOT_SENT in err

    first, recalled = run()
    assert not recalled
    [record] = tmp_path.glob("**/shipit/builds/*.json")  # the memo's record of the build
    steps = json.loads(record.read_text(encoding="utf-8"))["steps"]
    assert len(steps) == 5  # a, b (the builder's last step), the copy from it, c, the labels
    assert run() == (first, True)  # both chains held: recalled
    subprocess.run(  # the builder stage's last image, which nothing else keeps
        ["docker", "rmi", steps[1]],
        env={**os.environ, "DOCKER_HOST": dockerd.host},
        capture_output=True,
        check=True,
    )
    again, recalled = run()
    assert not recalled
    assert image_files(dockerd.host, again)["from-builder.txt"] == b"b\n"
    assert run()[1]  # recorded again: recalled
