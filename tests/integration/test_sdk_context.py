"""The SDK engine's build context, streamed to the daemon while it is written.

What lands in the image is what docker-py's own archive holds: `.dockerignore` is honoured,
a large file arrives whole, and a Dockerfile outside the context is sent along under a name of
its own (docker-py's way). Checked in the image the real daemon built (`docker save`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from shipit.registry import Manifest, Registry
from tests.support.cli import run_shipit
from tests.support.dockerd28 import Dockerd28
from tests.support.gitrepo import git, make_repo
from tests.support.services import Dockerd, registry_client
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


def built(root: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Build the project with shipit (no push): the image's id and the run's log."""
    argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    return json.loads(out)["images"][0]["image_id"], err


def build(root: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> dict[str, bytes]:
    """Build the project with shipit (no push) and read back the image the daemon holds."""
    return image_files(env["DOCKER_HOST"], built(root, env, capsys)[0])


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

    first, err = built(root, env, capsys)
    assert NOT_SENT not in err
    again, err = built(root, env, capsys)
    assert (again, NOT_SENT in err) == (first, True)
    (root / "ignored.txt").write_text("not in the context\n", encoding="utf-8")
    again, err = built(root, env, capsys)
    assert (again, NOT_SENT in err) == (first, True)
    (root / "a.txt").write_text("two\n", encoding="utf-8")
    changed, err = built(root, env, capsys)
    assert NOT_SENT not in err
    assert changed != first
    assert image_files(dockerd.host, changed)["ctx/a.txt"] == b"two\n"
    (root / "shipit.yml").write_text(  # the spec is not in the context: only the args change
        f"version: 1\nengine: sdk\nregistries: [{plain_registry.host}/ctx]\n"
        f"{image.format('hello')}\n",
        encoding="utf-8",
    )
    other, err = built(root, env, capsys)
    assert NOT_SENT not in err
    assert other != changed
    subprocess.run(  # the image goes: its record no longer holds, the build is sent again
        ["docker", "rmi", "-f", other],
        env={**os.environ, "DOCKER_HOST": dockerd.host},
        capture_output=True,
        check=True,
    )
    rebuilt, err = built(root, env, capsys)
    assert NOT_SENT not in err
    assert image_files(dockerd.host, rebuilt)["ctx/a.txt"] == b"two\n"


@pytest.mark.parametrize("store", ["session", "containerd"])
def test_a_base_with_onbuild_triggers_gets_the_whole_context(
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A build is sent only what COPY and ADD name (dockerfile.context_names), but a base
    image's `ONBUILD COPY . /all/` reads the whole context: the build stops where the trigger
    is named (the classic builder's trigger line on the session's daemon; BuildKit's step
    `[2/3] ONBUILD COPY . /all/` on dockerd 28's containerd store, before it runs) and is sent
    again with everything, so the image holds what the builder would have copied."""
    daemon = request.getfixturevalue("dockerd" if store == "session" else "dockerd_containerd")
    env = {"HOME": str(tmp_path), "DOCKER_HOST": daemon.host}
    docker_env = {**os.environ, "DOCKER_HOST": daemon.host}
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
    # in a registry of the test's own: BuildKit looks a base up in its registry first
    base_ref = f"{plain_registry.host}/ctx/onbuild-base:{store}{os.urandom(3).hex()}"
    subprocess.run(["docker", "tag", base_id, base_ref], env=docker_env, check=True)
    subprocess.run(["docker", "push", base_ref], env=docker_env, check=True, capture_output=True)

    child = project(
        tmp_path / "child",
        plain_registry.host,
        "image: {name: onbuild-child}",
        {
            "Dockerfile": f"FROM {base_ref}\nCOPY a.txt /a.txt\n",
            "a.txt": "named\n",
            "b.txt": "read by the trigger alone\n",
        },
    )
    argv = ["run", "-C", str(child), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert code == 0, err
    assert "ONBUILD triggers" in err
    files = image_files(daemon.host, json.loads(out)["images"][0]["image_id"])
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


def push_marked_base(
    client: Registry, repository: str, tag: str, text: bytes = b"from the base\n"
) -> str:
    """An image of one layer holding /marker (`text`), pushed as `repository:tag`; its
    digest."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as archive:
        info = tarfile.TarInfo("marker")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    plain = layer_tar.getvalue()
    layer = gzip.compress(plain, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(plain).hexdigest()}"],
            },
        }
    ).encode()
    config_blob, layer_blob = (client.upload_blob(repository, blob) for blob in (config, layer))
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_blob.digest,
                "size": layer_blob.size,
            }
        ],
    }
    manifest = Manifest.from_bytes(json.dumps(document).encode())
    return client.put_manifest(repository, tag, manifest)


def on_base(root: Path, registry: str, name: str, base: str) -> Path:
    """A project whose image `name` is `base` with /a.txt (`ours`) copied on."""
    files = {"Dockerfile": f"FROM {base}\nCOPY a.txt /a.txt\n", "a.txt": "ours\n"}
    return project(root, registry, f"image: {{name: {name}}}", files)


@pytest.mark.parametrize("logged_in", [True, False], ids=["logged-in", "no-credentials"])
def test_on_buildkit_a_base_behind_credentials_is_pulled_with_the_docker_configs(
    tmp_path: Path,
    logged_in: bool,
    dockerd_containerd: Dockerd28,
    auth_registry: RunningRegistry,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dockerd 28 on the containerd store builds an SDK-engine image with its BuildKit, which
    takes registry credentials only from a client session the Engine API request has not got.
    So the daemon pulls a base it does not hold first, with the docker config's credentials
    (as the classic builder is sent them), and BuildKit builds on it from the daemon's store;
    without credentials the run fails with the registry's refusal, naming the base."""
    namespace = f"bkauth{os.urandom(3).hex()}"
    base = f"{auth_registry.host}/{namespace}/base:1"
    digest = push_marked_base(registry_client(auth_registry), f"{namespace}/base", "1")
    home = tmp_path / "home"
    if logged_in:
        login = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
        (home / ".docker").mkdir(parents=True)
        (home / ".docker" / "config.json").write_text(
            json.dumps({"auths": {auth_registry.host: {"auth": login.decode()}}})
        )
    root = on_base(tmp_path / "child", plain_registry.host, "behind-credentials", base)
    env = {"HOME": str(home), "DOCKER_HOST": dockerd_containerd.host}
    argv = ["run", "-C", str(root), "--no-push", "--skip", "scan", "--json"]
    code, out, err = run_shipit(argv, capsys, env)
    assert f"pulling base image {base}" in err
    if not logged_in:
        assert code == 1
        assert f"cannot pull base image {base}" in err and "no basic auth credentials" in err, err
        assert "Traceback" not in err
        return
    assert code == 0, err
    assert "Step 1/" not in err and "[2/2] COPY a.txt /a.txt" in err  # BuildKit's steps
    files = image_files(dockerd_containerd.host, json.loads(out)["images"][0]["image_id"])
    assert files["marker"] == b"from the base\n" and files["a.txt"] == b"ours\n"
    docker_env = {**os.environ, "DOCKER_HOST": dockerd_containerd.host}
    held = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", base],
        env=docker_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{auth_registry.host}/{namespace}/base@{digest}" in held.stdout
    subprocess.run(["docker", "rmi", base], env=docker_env, capture_output=True, check=False)


def test_on_buildkit_a_base_moved_in_its_registry_is_built_on_not_recalled(
    tmp_path: Path,
    dockerd_containerd: Dockerd28,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """BuildKit looks each base up in its registry on every build, so the memo recalls an
    image only while the base the daemon pulls first is the one it recorded: the same inputs
    are recalled; once the base's tag moves in the registry, the build runs on the new base."""
    namespace = f"bkmove{os.urandom(3).hex()}"
    base = f"{plain_registry.host}/{namespace}/base:1"
    client = registry_client(plain_registry)
    push_marked_base(client, f"{namespace}/base", "1", b"first\n")
    root = on_base(tmp_path / "p", plain_registry.host, "moved", base)
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd_containerd.host}

    first, err = built(root, env, capsys)
    assert NOT_SENT not in err and "[2/2] COPY a.txt /a.txt" in err
    assert image_files(dockerd_containerd.host, first)["marker"] == b"first\n"
    again, err = built(root, env, capsys)
    assert (again, NOT_SENT in err) == (first, True)
    push_marked_base(client, f"{namespace}/base", "1", b"second\n")
    moved, err = built(root, env, capsys)
    assert NOT_SENT not in err and moved != first
    assert image_files(dockerd_containerd.host, moved)["marker"] == b"second\n"


def test_docker_buildkit_1_builds_with_the_session_daemons_buildkit_and_is_recalled(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`DOCKER_BUILDKIT=1`, as `docker build` reads it: the SDK engine's build goes to the
    daemon's BuildKit whatever its store (on bookworm's dockerd 20.10, whose `/_ping` names no
    default builder, too): BuildKit's steps in the log, the files where the Dockerfile puts
    them, and the same inputs recalled by the memo the next time."""
    root = project(
        tmp_path / "p",
        plain_registry.host,
        "image: {name: asked}",
        {"Dockerfile": "FROM scratch\nCOPY a.txt /a.txt\nUSER 1000\n", "a.txt": "asked\n"},
    )
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd.host, "DOCKER_BUILDKIT": "1"}
    first, err = built(root, env, capsys)
    assert "[1/1] COPY a.txt /a.txt" in err and "Step 1/" not in err, err
    assert image_files(dockerd.host, first)["a.txt"] == b"asked\n"
    again, err = built(root, env, capsys)
    assert (again, NOT_SENT in err) == (first, True)
    classic, err = built(root, {**env, "DOCKER_BUILDKIT": "0"}, capsys)
    assert "Step 1/" in err and NOT_SENT not in err  # another builder: not the same record
    assert image_files(dockerd.host, classic)["a.txt"] == b"asked\n"
