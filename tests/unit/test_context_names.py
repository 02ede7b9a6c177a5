"""The SDK engine sends the classic builder only the top-level entries of the build context
that the Dockerfile's COPY and ADD name (dockerfile.context_names), as BuildKit reads only
what a build uses: the archive itself is read back here, without a daemon. The daemon side
(a base image's ONBUILD triggers get the whole context) is in
tests/integration/test_sdk_context.py."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from shipit.docker_api import _ContextPipe, context_paths
from shipit.stages.build.dockerfile import context_names


@pytest.mark.parametrize(
    ("dockerfile", "names"),
    [
        ("FROM scratch\nCOPY busybox /bin/busybox\nCOPY a /a\n", {"busybox", "a"}),
        ("FROM x\nCOPY --chown=1:1 --chmod=644 app/server.py /srv/\n", {"app"}),
        ("FROM x\nCOPY ./debs/builder/ /tmp/debs/\nADD /wheels /w\n", {"debs", "wheels"}),
        ("FROM x\nCOPY a b c /dst/\n", {"a", "b", "c"}),
        ('FROM x\nCOPY ["my file", "conf/x.ini", "/dst/"]\n', {"my file", "conf"}),
        ("FROM x\nCOPY src/*.py /app/\n", {"src"}),  # a wildcard below the first element
        ("FROM x AS b\nRUN true\nFROM y\nCOPY --from=b /opt /opt\n", set()),
        (
            "FROM x\nADD https://example.com/a.tgz /a\nADD --checksum=sha256:0 http://h/b /b\n",
            set(),
        ),
        ("FROM x\nADD git@github.com:o/r.git /r\n", set()),
        ("FROM x\nONBUILD COPY . /app\nCOPY a /a\n", {"a"}),  # runs in a later build
        ("FROM x\nCOPY a \\\n  b /dst/\n", {"a", "b"}),  # a continued line
        ("FROM x\nRUN echo hi\n", set()),
        ("FROM x\ncopy lower /l\n", {"lower"}),
    ],
)
def test_the_names_copy_and_add_read(dockerfile: str, names: set[str]) -> None:
    assert context_names(dockerfile) == frozenset(names)


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM x\nCOPY . /app\n",
        "FROM x\nCOPY ./ /app\n",
        "FROM x\nCOPY / /app\n",
        "FROM x\nCOPY *.txt /app/\n",  # a wildcard in the first element could name anything
        "FROM x\nCOPY [ab] /app/\n",
        "FROM x\nARG DIR=src\nCOPY $DIR /app\n",  # the builder expands variables
        "FROM x\nENV D=src\nCOPY ${D}/x /app\n",
        'FROM x\nCOPY "quoted name" /app\n',  # its word processing removes quotes
        "FROM x\nCOPY a\\ b /app\n",
        "FROM x\nCOPY ../outside /app\n",
        "FROM x\nCOPY a/../.. /app\n",
        'FROM x\nCOPY ["a", 1] /app\n',
        "FROM x\nCOPY <<EOF /app/x\nhi\nEOF\n",
    ],
)
def test_a_source_that_could_name_anything_sends_everything(dockerfile: str) -> None:
    assert context_names(dockerfile) is None


def sent(pipe: _ContextPipe) -> dict[str, bytes | None]:
    """The archive the pipe writes, read back: each member's name and content (None for a
    folder or link)."""
    pipe.start()
    data = b"".join(pipe.chunks())
    found: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            handle = archive.extractfile(member) if member.isfile() else None
            found[member.name] = handle.read() if handle is not None else None
    return found


def context(root: Path) -> Path:
    """A project as a repository holds it: the app, its .git, a file left out by .dockerignore."""
    for name, text in {
        "Dockerfile": "FROM scratch\nCOPY app /app\nCOPY conf.ini /etc/conf.ini\n",
        "app/main.py": "print('hi')\n",
        "app/lib/util.py": "X = 1\n",
        "conf.ini": "[a]\n",
        "notes.txt": "not read by the build\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".git/objects/ab/cdef": "a large object\n",
        "secret.env": "TOKEN=x\n",
        ".dockerignore": "secret.env\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


NAMES = frozenset({"app", "conf.ini"})


def test_only_the_named_entries_the_dockerfile_and_dockerignore_are_sent(tmp_path: Path) -> None:
    root = context(tmp_path)
    pipe = _ContextPipe(root, "Dockerfile", names=NAMES)
    assert pipe.narrowed
    archive = sent(pipe)
    assert set(archive) == {
        ".dockerignore",
        "Dockerfile",
        "app",
        "app/lib",
        "app/lib/util.py",
        "app/main.py",
        "conf.ini",
    }
    assert archive["app/lib/util.py"] == b"X = 1\n"
    # the build memo keys on the same paths
    assert context_paths(root, "Dockerfile", NAMES) == (sorted(set(archive)), None)
    whole = sent(_ContextPipe(root, "Dockerfile"))
    assert {".git/HEAD", "notes.txt"} <= set(whole)
    assert "secret.env" not in whole


def test_a_link_out_of_the_named_entries_sends_the_whole_context(tmp_path: Path) -> None:
    root = context(tmp_path)
    os.symlink("../notes.txt", root / "app" / "notes")  # the builder would follow it
    pipe = _ContextPipe(root, "Dockerfile", names=NAMES)
    assert not pipe.narrowed
    assert "notes.txt" in sent(pipe)


def test_a_link_within_them_keeps_the_context_narrowed(tmp_path: Path) -> None:
    root = context(tmp_path)
    os.symlink("lib/util.py", root / "app" / "util.py")
    os.symlink("/conf.ini", root / "app" / "conf")  # absolute: from the context's root
    pipe = _ContextPipe(root, "Dockerfile", names=NAMES)
    assert pipe.narrowed
    assert "notes.txt" not in sent(pipe)


def test_nothing_to_leave_out_is_the_whole_context(tmp_path: Path) -> None:
    root = context(tmp_path)
    names = frozenset({"app", "conf.ini", "notes.txt", ".git"})
    pipe = _ContextPipe(root, "Dockerfile", names=names)
    assert not pipe.narrowed  # so no ONBUILD watch either
    assert ".git/HEAD" in sent(pipe)


def test_a_dockerfile_of_shipits_goes_with_the_named_entries(tmp_path: Path) -> None:
    """The platform bases and the one label step send a Dockerfile of shipit's under a name
    the daemon drops (docker_api._replace_dockerfile): it and the added .dockerignore go too."""
    root = context(tmp_path)
    (root / ".dockerignore").unlink()
    text = "FROM scratch\nCOPY app /app\nLABEL a=b\n"
    pipe = _ContextPipe(root, "Dockerfile", text, names=NAMES)
    archive = sent(pipe)
    name = pipe.dockerfile
    assert name is not None and name.startswith(".dockerfile.")
    assert archive[name] == text.encode()
    assert name in (archive[".dockerignore"] or b"").decode()
    assert "notes.txt" not in archive and "app/main.py" in archive


def test_a_dockerfile_outside_the_context_goes_with_them(tmp_path: Path) -> None:
    root = context(tmp_path / "ctx")
    (tmp_path / "build").mkdir()
    outside = tmp_path / "build" / "Dockerfile"
    outside.write_text("FROM scratch\nCOPY app /app\n", encoding="utf-8")
    pipe = _ContextPipe(root, str(outside), names=frozenset({"app"}))
    archive = sent(pipe)
    name = pipe.dockerfile
    assert name is not None and archive[name] == outside.read_bytes()
    assert "conf.ini" not in archive and "app/main.py" in archive
    assert context_paths(root, str(outside), frozenset({"app"}))[1] == outside.read_text()


def test_a_dockerfile_in_a_folder_goes_without_the_rest_of_that_folder(tmp_path: Path) -> None:
    root = context(tmp_path)
    (root / "build").mkdir()
    (root / "build" / "Dockerfile").write_text("FROM scratch\nCOPY app /app\n", encoding="utf-8")
    (root / "build" / "notes.txt").write_text("not sent\n", encoding="utf-8")
    for given in ("build/Dockerfile", "./build/Dockerfile"):
        archive = sent(_ContextPipe(root, given, names=frozenset({"app"})))
        assert "build/Dockerfile" in archive and "build/notes.txt" not in archive
        assert "app/main.py" in archive and "conf.ini" not in archive
