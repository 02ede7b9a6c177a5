"""The buildah engine's build memo: which inputs its key reads, when it is not used, which
ignored paths it may skip, and how a build's steps are read from buildah's log."""

from __future__ import annotations

import io
import os
import stat
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shipit.log import Console
from shipit.plan import BuildSecret, BuildSettings
from shipit.stages.build import buildah as buildah_module
from shipit.stages.build.buildah import (
    BuildahBuilder,
    StepTracker,
    memo_key,
    skipped_paths,
    storage_identity,
)
from shipit.stages.build.memo import BuildMemo
from shipit.stages.export_cache import ExportCache

IMAGE = "sha256:" + "ab" * 32
STEP = "cd" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A context, and beside it a stand-in for buildah (the key reads its size and time)."""
    context = tmp_path / "ctx"
    (context / "src").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /\n", encoding="utf-8")
    (context / "src" / "a.txt").write_text("one\n", encoding="utf-8")
    (context / "b.bin").write_bytes(os.urandom(256 * 1024))
    (tmp_path / "buildah").write_text("#!/bin/sh\n", encoding="utf-8")
    return context


def settings(context: Path, **changes: Any) -> BuildSettings:
    base = BuildSettings(
        context=str(context),
        dockerfile="Dockerfile",
        target=None,
        platforms=(),
        build_args={},
        labels={},
        pull=False,
        cache_from=(),
        engine="buildah",
    )
    return replace(base, **changes)


def key_of(
    context: Path,
    *,
    platform: str | None = None,
    env: dict[str, str] | None = None,
    buildah: Path | None = None,
    **changes: Any,
) -> str | None:
    tool = buildah or context.parent / "buildah"
    return memo_key(str(tool), settings(context, **changes), platform, env or {"HOME": "/h"})


def test_the_same_inputs_give_the_same_key_whatever_the_file_times(root: Path) -> None:
    first = key_of(root)
    os.utime(root / "src" / "a.txt", (1, 1))
    assert first is not None
    assert key_of(root) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "src" / "a.txt").write_text("two\n", encoding="utf-8"),
        lambda root: (root / "src" / "new.txt").write_text("", encoding="utf-8"),
        lambda root: (root / "src" / "a.txt").chmod(
            stat.S_IMODE((root / "src" / "a.txt").stat().st_mode) ^ stat.S_IXUSR
        ),
        lambda root: (root / "src" / "a.txt").unlink(),
        lambda root: (root / "link").symlink_to("src/a.txt"),
        lambda root: (root / "empty").mkdir(),
        lambda root: (root / "Dockerfile").write_text("FROM scratch\nCOPY src /\n", "utf-8"),
        lambda root: (root / ".dockerignore").write_text("nothing-here\n", "utf-8"),
    ],
    ids=["content", "added", "mode", "removed", "symlink", "folder", "dockerfile", "ignore"],
)
def test_a_change_to_the_context_changes_the_key(root: Path, change: Any) -> None:
    first = key_of(root)
    change(root)
    assert key_of(root) != first


def test_a_dockerfile_outside_the_context_is_in_the_key(root: Path) -> None:
    outside = root.parent / "build.Dockerfile"
    outside.write_text("FROM scratch\nCOPY src /\n", encoding="utf-8")
    first = key_of(root, dockerfile="../build.Dockerfile")
    outside.write_text("FROM scratch\nCOPY src /x\n", encoding="utf-8")
    assert first is not None
    assert key_of(root, dockerfile="../build.Dockerfile") != first


@pytest.mark.parametrize(
    "changes",
    [
        {"build_args": {"A": "1"}},
        {"labels": {"team": "x"}},
        {"target": "runtime"},
        {"platform": "linux/arm64"},
        {"network": "none"},
        {"isolation": "oci"},
        {"env": {"HOME": "/h", "BUILDAH_ISOLATION": "rootless"}},
        {"env": {"HOME": "/h", "CONTAINERS_STORAGE_CONF": "/elsewhere/storage.conf"}},
        {"env": {"HOME": "/h", "CONTAINERS_CONF": "/etc/other.conf"}},
        {"env": {"HOME": "/elsewhere"}},  # buildah's default storage of a user: under HOME
    ],
    ids=str.split(
        "args labels target platform network isolation BUILDAH_ISOLATION storage.conf"
        " CONTAINERS_CONF HOME"
    ),
)
def test_every_argument_of_the_build_is_in_the_key(root: Path, changes: Any) -> None:
    assert key_of(root, **changes) != key_of(root)


def test_the_format_is_in_the_key(root: Path) -> None:
    """HEALTHCHECK makes the build Docker's format; a comment of the same length does not."""
    (root / "Dockerfile").write_text("FROM scratch\n# HEALTHCHEC CMD x\n", encoding="utf-8")
    oci = key_of(root)
    (root / "Dockerfile").write_text("FROM scratch\nHEALTHCHECK CMD x\n", encoding="utf-8")
    assert oci != key_of(root)


def test_the_storage_s_graphroot_is_in_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/a"\nrunroot = "/r"\n', "utf-8")
    env = {"CONTAINERS_STORAGE_CONF": str(conf)}
    first = storage_identity(env)
    assert (first["graphroot"], first["driver"]) == ("/a", "overlay")
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/b"\nrunroot = "/r"\n', "utf-8")
    assert storage_identity(env) != first


def test_another_buildah_gives_another_key(root: Path) -> None:
    other = root.parent / "other-buildah"
    other.write_text("#!/bin/sh\n# another build of buildah\n", encoding="utf-8")
    assert key_of(root, buildah=other) != key_of(root)


@pytest.mark.parametrize(
    "changes",
    [
        {"no_cache": True},
        {"pull": True},
        {"cache_from": ("type=registry,ref=r.io/a/cache",)},
        {"cache_to": ("r.io/a/cache",)},
        {"secrets": (BuildSecret(id="tok", env="TOK"),)},
        {"ssh": ("default",)},
        {"dockerfile": "Missing.Dockerfile"},
    ],
    ids=["no_cache", "pull", "cache_from", "cache_to", "secrets", "ssh", "no dockerfile"],
)
def test_builds_that_must_run_have_no_key(root: Path, changes: Any) -> None:
    assert key_of(root, **changes) is None


@pytest.mark.parametrize(
    "line",
    [
        "ADD https://example.com/tool.tgz /opt/",
        "add --chown=1:1 http://example.com/x /x",
        "ADD git@github.com:moby/buildkit.git /src",
    ],
)
def test_a_dockerfile_that_adds_a_url_has_no_key(root: Path, line: str) -> None:
    (root / "Dockerfile").write_text(f"FROM scratch\n{line}\n", encoding="utf-8")
    assert key_of(root) is None


def test_a_context_that_cannot_be_read_has_no_key(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build runs and says what is wrong (run as root, no folder is unreadable: the
    failure is made)."""

    def unreadable(
        folder: Path, skipped: object = (), hashes: object = None, names: object = None
    ) -> str:
        raise PermissionError(13, "Permission denied", str(folder / "locked"))

    monkeypatch.setattr(buildah_module, "folder_digest", unreadable)
    assert key_of(root) is None


# --- the ignore files -------------------------------------------------------------------------


def add_notes(root: Path) -> None:
    (root / "notes").mkdir(exist_ok=True)
    (root / "notes" / "todo.txt").write_text(os.urandom(8).hex(), encoding="utf-8")


@pytest.mark.parametrize(
    "ignore", [".dockerignore", ".containerignore"], ids=["dockerignore", "containerignore"]
)
@pytest.mark.parametrize("line", ["notes", "/notes/", "./notes", "# a comment\nnotes"])
def test_a_plainly_ignored_path_does_not_change_the_key(root: Path, ignore: str, line: str) -> None:
    (root / ignore).write_text(f"{line}\n", encoding="utf-8")
    add_notes(root)
    first = key_of(root)
    add_notes(root)
    assert key_of(root) == first


@pytest.mark.parametrize(
    "rules",
    [
        {".dockerignore": "notes\n!notes/todo.txt\n"},  # an exception: anything may come back
        {".dockerignore": "note?\n"},  # a wildcard: buildah's matcher decides, not shipit
        {".dockerignore": "notes\n", ".containerignore": "other\n"},  # not left out by both
        {".dockerignore": "notes\n", "Dockerfile.dockerignore": ""},  # a newer buildah's
    ],
    ids=["exception", "wildcard", "two files", "beside the Dockerfile"],
)
def test_a_path_not_ignored_for_certain_is_in_the_key(root: Path, rules: dict[str, str]) -> None:
    for name, text in rules.items():
        (root / name).write_text(text, encoding="utf-8")
    add_notes(root)
    first = key_of(root)
    add_notes(root)
    assert key_of(root) != first


def test_only_paths_every_ignore_file_leaves_out_are_skipped(root: Path) -> None:
    (root / ".dockerignore").write_text(".git\nnotes\n", encoding="utf-8")
    (root / ".containerignore").write_text("/.git/\ndist/*\n", encoding="utf-8")
    ignore, skipped = skipped_paths(root, "Dockerfile")
    assert skipped == {".git"}
    assert [x.split()[0] for x in ignore] == [".containerignore", ".dockerignore"]


# --- the log and the records ------------------------------------------------------------------


def test_the_steps_found_in_the_cache_are_read_from_buildahs_log() -> None:
    tracker = StepTracker()
    handle = tracker.line_handler(Console({}, stream=io.StringIO()))
    for line in textwrap.dedent(f"""\
        STEP 1/3: FROM scratch
        STEP 2/3: COPY a /a
        --> Using cache {STEP}
        STEP 3/3: COPY b /b
        COMMIT localhost/t:1
        --> 743f7d28899
        """).splitlines():
        handle(line)
    assert tracker.cached == [STEP]


def fake_buildah(folder: Path, held: list[str]) -> Path:
    """A buildah that answers `images --all --quiet --no-trunc` with `held`, and `tag`."""
    tool = folder / "fake-buildah"
    listing = "".join(f"{x}\n" for x in held)
    tool.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"if sys.argv[1] == 'images':\n    sys.stdout.write({listing!r})\n"
        "elif sys.argv[1] == 'tag':\n"
        f"    open({str(folder / 'tagged')!r}, 'w').write(' '.join(sys.argv[2:]))\n"
        "else:\n    sys.exit(125)\n",
        encoding="utf-8",
    )
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize(
    ("held", "answers"),
    [([IMAGE, f"sha256:{STEP}"], True), ([IMAGE], False), ([f"sha256:{STEP}"], False)],
    ids=["all held", "a step gone", "the image gone"],
)
def test_a_record_answers_only_while_buildahs_storage_holds_the_image_and_its_steps(
    tmp_path: Path, root: Path, held: list[str], answers: bool
) -> None:
    cache = ExportCache(root=tmp_path / "cache", limit=1 << 30)
    tool = fake_buildah(tmp_path, held)
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    builder = BuildahBuilder(str(tool), env, tmp_path / "work", cache)
    chosen = settings(root)
    key = memo_key(str(tool), chosen, None, env)
    assert key is not None
    BuildMemo(cache.root / "builds").keep(key, IMAGE, [STEP], {})
    out = io.StringIO()
    recalled = builder._memo_recall(key, chosen, None, "r.io/a/app:main", Console({}, stream=out))
    if answers:
        assert recalled == (IMAGE, ())
        assert (tmp_path / "tagged").read_text() == f"{IMAGE} r.io/a/app:main"
        assert "so buildah build was not run" in out.getvalue()
    else:
        assert recalled is None
        assert not (tmp_path / "tagged").exists()


def test_with_named_sources_only_their_paths_are_in_the_key(root: Path) -> None:
    """A Dockerfile whose COPY names what it reads (dockerfile.context_names): the key covers
    those top-level entries, not the rest of the folder (a .git, notes)."""
    (root / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    first = key_of(root)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/other\n", encoding="utf-8")
    (root / "b.bin").write_bytes(b"changed")
    (root / "new.txt").write_text("new\n", encoding="utf-8")
    assert key_of(root) == first
    (root / "src" / "a.txt").write_text("two\n", encoding="utf-8")
    assert key_of(root) != first


def test_a_link_out_of_the_named_sources_puts_the_whole_folder_in_the_key(root: Path) -> None:
    (root / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n", encoding="utf-8")
    os.symlink("../b.bin", root / "src" / "b")  # buildah follows a source's links
    first = key_of(root)
    (root / "b.bin").write_bytes(b"changed")
    assert key_of(root) != first


def test_a_base_with_onbuild_triggers_is_seen_in_buildahs_inspect() -> None:
    docker_format = {"Docker": {"config": {"OnBuild": ["COPY . /all/"]}}}
    assert buildah_module.onbuild_triggers(docker_format)
    assert not buildah_module.onbuild_triggers({"Docker": {"config": {"OnBuild": None}}})
    assert not buildah_module.onbuild_triggers({"OCIv1": {"config": {}}})
    assert not buildah_module.onbuild_triggers([])
