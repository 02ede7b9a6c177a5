"""The SDK engine's build memo: which inputs its key reads, and when a record still holds."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shipit.docker_api import BuildRequest, DaemonError, held_in
from shipit.stages.build import memo as memo_module
from shipit.stages.build.memo import BuildMemo, step_ids

IMAGE = "sha256:" + "ab" * 32
STEPS = ["111111111111", "222222222222"]


class FakeDaemon:
    """What the memo asks of a daemon: whether it holds an image and its steps, answered from
    the ids of the images it holds (docker_api.held_in, as buildah's storage answers)."""

    def __init__(self, held: set[str] | None = None, *, fails: bool = False) -> None:
        self.held = held if held is not None else {IMAGE, *(f"sha256:{s}{'0' * 52}" for s in STEPS)}
        self.fails = fails

    def holds(self, image_id: str, steps: Sequence[str]) -> bool:
        if self.fails:
            raise DaemonError("the daemon went away")
        return held_in(self.held, image_id, steps)


def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /\n", encoding="utf-8")
    (root / "src" / "a.txt").write_text("one\n", encoding="utf-8")
    (root / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return root


def request(root: Path, **changes: Any) -> BuildRequest:
    base = BuildRequest(context=root, dockerfile="Dockerfile", tag="memo:local")
    return dataclasses.replace(base, **changes)


def key_of(root: Path, **changes: Any) -> str | None:
    memo = BuildMemo(root.parent / "builds")
    dockerfile = (root / "Dockerfile").read_text(encoding="utf-8")
    return memo.key(request(root, **changes), dockerfile, "unix:///var/run/docker.sock")


def flip_first_byte(path: Path) -> None:
    with path.open("r+b") as file:
        first = file.read(1)
        file.seek(0)
        file.write(bytes([first[0] ^ 1]))


def flip_mode(path: Path) -> None:
    """Another mode, whatever the umask made it (chmod 0o600 is no change under umask 077)."""
    path.chmod(stat.S_IMODE(path.stat().st_mode) ^ stat.S_IXUSR)


def test_the_same_inputs_give_the_same_key_whatever_the_file_times(tmp_path: Path) -> None:
    root = context(tmp_path)
    first = key_of(root)
    os.utime(root / "src" / "a.txt", (1, 1))
    assert first is not None
    assert key_of(root) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "src" / "a.txt").write_text("two\n", encoding="utf-8"),
        lambda root: (root / "src" / "new.txt").write_text("", encoding="utf-8"),
        lambda root: flip_mode(root / "src" / "a.txt"),
        lambda root: (root / "src" / "a.txt").unlink(),
        lambda root: (root / "link").symlink_to("src/a.txt"),
        lambda root: (root / "Dockerfile").write_text("FROM scratch\nCOPY src /\n", "utf-8"),
        lambda root: flip_first_byte(root / "b.bin"),
    ],
    ids=["content", "added", "mode", "removed", "symlink", "dockerfile", "big file"],
)
def test_a_change_to_the_context_changes_the_key(tmp_path: Path, change: Any) -> None:
    root = context(tmp_path)
    first = key_of(root)
    change(root)
    assert key_of(root) != first


def test_an_ignored_file_does_not_change_the_key(tmp_path: Path) -> None:
    root = context(tmp_path)
    (root / ".dockerignore").write_text("notes/\n", encoding="utf-8")
    first = key_of(root)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("x\n", encoding="utf-8")
    assert key_of(root) == first


@pytest.mark.parametrize(
    "changes",
    [
        {"build_args": {"A": "1"}},
        {"labels": {"team": "x"}},
        {"target": "runtime"},
        {"platform": "linux/arm64"},
        {"network": "host"},
    ],
)
def test_every_argument_of_the_build_is_in_the_key(tmp_path: Path, changes: Any) -> None:
    root = context(tmp_path)
    assert key_of(root, **changes) != key_of(root)


@pytest.mark.parametrize(
    "changes", [{"no_cache": True}, {"pull": True}, {"cache_from": ("x:cache",)}]
)
def test_builds_that_must_run_have_no_key(tmp_path: Path, changes: Any) -> None:
    assert key_of(context(tmp_path), **changes) is None


@pytest.mark.parametrize(
    "line",
    [
        "ADD https://example.com/tool.tgz /opt/",
        "add --chown=1:1 http://example.com/x /x",
        "ADD git@github.com:moby/buildkit.git /src",
    ],
)
def test_a_dockerfile_that_adds_a_url_has_no_key(tmp_path: Path, line: str) -> None:
    root = context(tmp_path)
    (root / "Dockerfile").write_text(f"FROM scratch\n{line}\n", encoding="utf-8")
    assert key_of(root) is None


def test_a_file_that_changes_while_it_is_read_gives_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = context(tmp_path)
    real = os.lstat

    def shrunk(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        info = real(path, *args, **kwargs)
        if str(path).endswith("b.bin"):  # as if the file grew after it was looked at
            fields = list(info)
            fields[6] = info.st_size - 1
            return os.stat_result(fields)
        return info

    monkeypatch.setattr(memo_module.os, "lstat", shrunk)
    assert key_of(root) is None


def recall(
    memo: BuildMemo, key: str, daemon: FakeDaemon, bases: dict[str, str | None]
) -> str | None:
    return memo.recall(key, daemon, lambda: bases)  # type: ignore[arg-type]


def test_a_record_holds_while_the_image_its_steps_and_its_bases_are_as_they_were(
    tmp_path: Path,
) -> None:
    memo = BuildMemo(tmp_path / "builds")
    memo.keep("k", IMAGE, STEPS, {"docker.io/library/alpine:3": "sha256:" + "c" * 64})
    bases: dict[str, str | None] = {"docker.io/library/alpine:3": "sha256:" + "c" * 64}
    assert recall(memo, "k", FakeDaemon(), bases) == IMAGE
    assert recall(memo, "other", FakeDaemon(), bases) is None
    moved: dict[str, str | None] = {"docker.io/library/alpine:3": "sha256:" + "d" * 64}
    assert recall(memo, "k", FakeDaemon(), moved) is None
    assert recall(memo, "k", FakeDaemon(), bases) == IMAGE  # a moved base does not drop it
    assert recall(memo, "k", FakeDaemon(fails=True), bases) is None


@pytest.mark.parametrize("gone", ["image", "step"])
def test_a_record_whose_image_or_step_is_gone_is_dropped(tmp_path: Path, gone: str) -> None:
    memo = BuildMemo(tmp_path / "builds")
    memo.keep("k", IMAGE, STEPS, {})
    held = FakeDaemon().held
    held = {x for x in held if (x != IMAGE if gone == "image" else not x.startswith("sha256:2"))}
    assert recall(memo, "k", FakeDaemon(held), {}) is None
    assert not (tmp_path / "builds" / "k.json").exists()


@pytest.mark.parametrize(
    "data",
    [b"", b"\0\xff", b"[]", json.dumps({"image_id": 5, "steps": [], "bases": {}}).encode(),
     json.dumps({"image_id": IMAGE, "steps": [1], "bases": {}}).encode(),
     json.dumps({"image_id": IMAGE, "steps": [], "bases": []}).encode()],
)  # fmt: skip
def test_a_record_that_is_not_one_is_dropped(tmp_path: Path, data: bytes) -> None:
    memo = BuildMemo(tmp_path / "builds")
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / "k.json").write_bytes(data)
    assert recall(memo, "k", FakeDaemon(), {}) is None
    assert not (tmp_path / "builds" / "k.json").exists()


def test_the_records_used_least_recently_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memo_module, "_KEEP", 2)
    memo = BuildMemo(tmp_path / "builds")
    for number, key in enumerate(["a", "b"]):
        memo.keep(key, IMAGE, STEPS, {})
        os.utime(tmp_path / "builds" / f"{key}.json", (1000 + number, 1000 + number))
    memo.keep("c", IMAGE, STEPS, {})
    assert sorted(p.name for p in (tmp_path / "builds").iterdir()) == ["b.json", "c.json"]


def test_a_memo_that_cannot_be_written_never_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("", encoding="utf-8")
    BuildMemo(tmp_path / "file" / "builds").keep("k", IMAGE, STEPS, {})


def test_step_ids_reads_the_classic_builders_log() -> None:
    shown: list[str] = []
    read, steps = step_ids(shown.append)
    lines = [
        "Step 1/3 : FROM alpine", " ---> 0123456789ab", "Step 2/3 : RUN true",
        " ---> Running in 5555aaaa5555", "Removing intermediate container 5555aaaa5555",
        " ---> abcdefabcdef", "Step 3/3 : COPY . /", " ---> Using cache", " ---> fedcba987654",
        "Successfully built fedcba987654",
    ]  # fmt: skip
    for line in lines:
        read(line)
    assert steps == ["0123456789ab", "abcdefabcdef", "fedcba987654"]
    assert shown == lines


# --- what is remembered of the context's files --------------------------------------------------


def test_a_file_hashed_before_is_not_read_again_while_its_status_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memo_module, "_SETTLED_NS", 0)  # as if hashed long after its last write
    root = context(tmp_path)
    memo = BuildMemo(tmp_path / "memo")
    first = memo.key(request(root), "FROM scratch\n", "unix:///d")
    reads: list[str] = []
    real_open = Path.open

    def counting(self: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting)
    assert memo.key(request(root), "FROM scratch\n", "unix:///d") == first
    assert not [name for name in reads if name.endswith(".bin")]  # every file remembered


def test_a_file_written_again_is_read_again_even_with_its_old_times_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memo_module, "_SETTLED_NS", 0)
    root = context(tmp_path)
    memo = BuildMemo(tmp_path / "memo")
    first = memo.key(request(root), "FROM scratch\n", "unix:///d")
    target = root / "b.bin"
    before = target.stat()
    target.write_bytes(bytes(reversed(target.read_bytes())) + b"")  # same size, new bytes
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the times as they were
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert memo.key(request(root), "FROM scratch\n", "unix:///d") != first  # ctime moved on


def test_a_file_changed_just_before_it_was_hashed_is_not_remembered(tmp_path: Path) -> None:
    root = context(tmp_path)  # written just now: within _SETTLED_NS
    memo = BuildMemo(tmp_path / "memo")
    memo.key(request(root), "FROM scratch\n", "unix:///d")
    remembered = list((tmp_path / "memo" / "files").glob("*.json"))
    assert all(json.loads(p.read_text()) == {} for p in remembered)


def test_holds_any_says_whether_a_build_is_recorded(tmp_path: Path) -> None:
    """On a fresh runner nothing is recorded, and a build starts without waiting for its key
    (sdk.py and buildah.py hash the context beside the build then)."""
    memo = BuildMemo(tmp_path / "builds")
    assert not memo.holds_any()  # no folder yet
    (tmp_path / "builds" / "files").mkdir(parents=True)  # the file hashes are no record
    assert not memo.holds_any()
    memo.keep("k" * 64, "sha256:" + "a" * 64, ["b" * 12], {})
    assert memo.holds_any()
