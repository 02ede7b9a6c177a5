"""The SDK engine's platform bases, the pure parts (no Docker): which stages it sees to, the
Dockerfile it sends, the images it loads, what it refuses, and where in the build context's
archive a Dockerfile of shipit's goes so that the daemon drops it (classic_platforms.py,
docker_api._replace_dockerfile)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from shipit.docker_api import DaemonInfo, _ContextPipe, _replace_dockerfile, dockerfile_replaceable
from shipit.stages.build.classic_platforms import (
    Start,
    default_variant,
    empty_image,
    manifest_record,
    refusal,
    same_platform,
    starts,
)
from shipit.stages.build.dockerfile import instructions, stages, with_bases

CLASSIC = DaemonInfo(version="20.10.24+dfsg1", api_version="1.41", containerd_store=False)
CONTAINERD = DaemonInfo(version="28.5.2+dfsg4", api_version="1.51", containerd_store=True)


# -- which stages -----------------------------------------------------------------------------


def test_a_scratch_stage_is_seen_to_only_when_a_step_comes_before_its_first_copy() -> None:
    text = (
        "FROM scratch AS files\nARG TARGETARCH\nCOPY a /a\n"
        "FROM scratch\nCOPY --from=files /a /a\nENV A=1\n"
        "FROM scratch\n"
        "FROM scratch\nADD b.tar /\n"
        "FROM scratch\nWORKDIR /w\nCOPY c /c\n"
    )
    assert starts(text, {}, None) == (
        Start(stage=0, base="scratch"),
        Start(stage=4, base="scratch"),
    )


def test_image_stages_are_seen_to_but_not_stages_on_stages_or_with_their_own_platform() -> None:
    text = (
        "ARG BASE=debian:12\n"
        "FROM $BASE AS build\nRUN make\n"
        "FROM --platform=linux/amd64 golang:1.23 AS tools\nRUN go build\n"
        "FROM build\nCOPY --from=tools /x /x\n"
        "FROM alpine:3.20 AS last\nLABEL a=b\n"
        "FROM busybox\n"
    )
    assert starts(text, {}, None) == (
        Start(stage=0, base="debian:12"),
        Start(stage=3, base="alpine:3.20"),
        Start(stage=4, base="busybox"),
    )
    # the classic builder builds every stage up to the target, and no further
    assert starts(text, {"BASE": "ubuntu:24.04"}, "build") == (Start(stage=0, base="ubuntu:24.04"),)


def test_stages_know_their_platform_flag_and_their_steps() -> None:
    [one, two] = stages("FROM --platform=$BUILDPLATFORM a AS x\nARG Y\nRUN z\nFROM x\n", {})
    assert (one.platform, one.steps, one.name) == ("$BUILDPLATFORM", ("ARG", "RUN"), "x")
    assert (two.platform, two.steps, two.base) == (None, (), "x")


# -- the Dockerfile sent ----------------------------------------------------------------------


def test_with_bases_changes_only_the_from_lines_it_is_given() -> None:
    text = (
        "# syntax is not BuildKit's here\r\n"
        "ARG X=1\r\n"
        "FROM --platform=linux/arm64 scratch AS base\r\n"
        "ARG TARGETARCH\r\n"
        "FROM \\\r\n"
        "  debian:12 \\\r\n"
        "  AS second\r\n"
        "RUN echo FROM scratch\r\n"
        "FROM base\r\n"
    )
    changed = with_bases(text, {0: "sha256:" + "a" * 64, 1: "sha256:" + "b" * 64})
    lines = changed.split("\r\n")
    assert len(lines) == len(text.split("\r\n"))  # no line moved
    assert lines[2] == f"FROM --platform=linux/arm64 sha256:{'a' * 64} AS base"
    assert lines[4:7] == [f"FROM sha256:{'b' * 64} AS second", "", ""]
    assert lines[7] == "RUN echo FROM scratch" and lines[8] == "FROM base"
    assert [w for w, _ in instructions(changed)] == [w for w, _ in instructions(text)]
    assert with_bases(text, {}) == text


def test_with_bases_of_a_dockerfile_with_another_escape_character() -> None:
    text = "# escape=`\nFROM `\n  scratch\nARG A\n"
    assert (
        with_bases(text, {0: "sha256:" + "c" * 64})
        == f"# escape=`\nFROM sha256:{'c' * 64}\n\nARG A\n"
    )


# -- the images loaded ------------------------------------------------------------------------


def read_archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux/arm64", {"architecture": "arm64", "os": "linux"}),
        ("linux/arm/v7", {"architecture": "arm", "os": "linux", "variant": "v7"}),
    ],
)
def test_the_empty_image_has_no_layer_no_history_no_config_only_its_platform(
    platform: str, expected: dict[str, str]
) -> None:
    files = read_archive(empty_image(platform))
    [docker] = json.loads(files["manifest.json"])  # what Docker 20.10 loads
    assert docker["Layers"] == [] and docker["RepoTags"] is None
    config = files[docker["Config"]]
    assert json.loads(config) == {**expected, "rootfs": {"type": "layers", "diff_ids": []}}
    index = json.loads(files["index.json"])  # what the containerd store loads
    [entry] = index["manifests"]
    manifest = files[f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"]
    assert hashlib.sha256(manifest).hexdigest() == entry["digest"].removeprefix("sha256:")
    document = json.loads(manifest)
    assert document["layers"] == []
    assert document["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    assert docker["Config"] == f"blobs/sha256/{hashlib.sha256(config).hexdigest()}"
    assert empty_image(platform) == empty_image(platform)  # the same id every time


def test_a_manifest_record_is_an_index_of_that_manifest_and_nothing_else() -> None:
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "d" * 64,
        "size": 736,
        "platform": {"architecture": "arm64", "os": "linux"},
    }
    files = read_archive(manifest_record(descriptor))
    assert sorted(files) == ["index.json", "oci-layout"]
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry == {k: descriptor[k] for k in ("mediaType", "digest", "size")}


# -- platforms --------------------------------------------------------------------------------


def test_platforms_compare_as_containerd_normalises_them() -> None:
    assert same_platform("linux/arm64", "linux/arm64/v8")
    assert same_platform("linux/aarch64", "linux/arm64")
    assert same_platform("linux/arm", "linux/arm/v7")
    assert same_platform("linux/arm/7", "linux/arm/v7")
    assert not same_platform("linux/arm/v6", "linux/arm/v7")
    assert not same_platform("linux/amd64", "linux/arm64")
    assert default_variant("linux/arm64/v8") and default_variant("linux/arm/v7")
    assert default_variant("linux/riscv64") and default_variant("linux/amd64/v1")
    assert not default_variant("linux/arm/v6") and not default_variant("linux/amd64/v2")


# -- what is refused --------------------------------------------------------------------------


def check(info: DaemonInfo, text: str, platform: str, context: Path, **files: str) -> str | None:
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(text)
    for name, content in files.items():
        (context / name).write_text(content)
    return refusal(
        info,
        text,
        args={},
        target=None,
        platforms=(platform,),
        context=context,
        dockerfile="Dockerfile",
    )


def test_the_containerd_store_cannot_build_a_variant_it_drops(tmp_path: Path) -> None:
    text = "FROM scratch\nCOPY a /a\nENV A=1\n"
    reason = check(CONTAINERD, text, "linux/arm/v6", tmp_path)
    assert reason is not None
    assert "dockerd 28.5.2+dfsg4 on the containerd image store" in reason
    assert "linux/arm/v6" in reason and "ENV" in reason
    assert (
        check(CONTAINERD, "FROM scratch\nCOPY a /a\nADD b /b\n", "linux/arm/v6", tmp_path) is None
    )
    assert check(CONTAINERD, text, "linux/arm/v7", tmp_path) is None  # the default variant
    assert check(CLASSIC, text, "linux/arm/v6", tmp_path) is None  # 20.10 keeps variants


def test_the_daemons_own_platform_is_never_refused(tmp_path: Path) -> None:
    old = DaemonInfo(version="27.5.1", api_version="1.47", containerd_store=True)
    assert check(old, "FROM debian:12\nENV A=1\n", "linux/amd64", tmp_path) is None


def test_a_containerd_store_that_does_not_list_platforms_cannot_build_from_an_image(
    tmp_path: Path,
) -> None:
    old = DaemonInfo(version="27.5.1", api_version="1.47", containerd_store=True)
    reason = check(old, "FROM debian:12\nENV A=1\nCOPY a /a\n", "linux/arm64", tmp_path)
    assert reason is not None and "API 1.47" in reason and "debian:12" in reason
    assert check(old, "FROM scratch\nENV A=1\nCOPY a /a\n", "linux/arm64", tmp_path) is None


def test_a_context_with_nowhere_to_put_the_dockerfile_sent_is_refused(tmp_path: Path) -> None:
    text = "FROM scratch\nARG TARGETARCH\nCOPY a /a\n"
    reason = check(CLASSIC, text, "linux/arm64", tmp_path, **{".dockerignore": "# nothing\n"})
    assert reason is not None and "add the Dockerfile's name to .dockerignore" in reason
    # nothing to change: nothing to refuse
    assert check(CLASSIC, "FROM scratch\nCOPY a /a\nARG X\n", "linux/arm64", tmp_path) is None


# -- where a Dockerfile of shipit's goes ------------------------------------------------------


def replaced(
    context: Path, ignore: str | None, dockerfile: str = "Dockerfile"
) -> tuple[str, dict[str, str]]:
    """(the Dockerfile the build names, the extra files) for a context holding Dockerfile,
    data.txt and notes.md."""
    context.mkdir(exist_ok=True)
    for name in ("Dockerfile", "data.txt", "notes.md"):
        (context / name).write_text(name)
    if ignore is not None:
        (context / ".dockerignore").write_text(ignore)
    pipe = _ContextPipe(context, dockerfile)
    found = _replace_dockerfile(
        os.path.abspath(context), pipe.dockerfile_entry, pipe.exclude, "NEW"
    )
    assert found is not None
    assert "Dockerfile" in found.files or dockerfile != "Dockerfile"
    return found.name, dict(found.extra)


def test_without_a_dockerignore_one_is_sent_that_drops_itself_and_the_dockerfile(
    tmp_path: Path,
) -> None:
    name, extra = replaced(tmp_path, None)
    assert name.startswith(".dockerfile.") and extra[name] == "NEW"
    assert extra[".dockerignore"] == f".dockerignore\n{name}"


def test_a_dockerignore_is_left_as_it_is_and_names_the_dockerfile_sent(tmp_path: Path) -> None:
    name, extra = replaced(tmp_path, "!keep.md\n.git\n")
    assert (name, extra) == (".git", {".git": "NEW"})
    name, extra = replaced(tmp_path, "**/*.md\n!notes.md\n")
    assert name.endswith(".md") and name != "notes.md" and extra == {name: "NEW"}
    # one that excludes itself too: the daemon drops it after reading it, as ever
    name, extra = replaced(tmp_path, ".dockerignore\n*.md\n")
    assert name.endswith(".md") and extra == {name: "NEW"}


def test_an_ignored_dockerfile_is_written_over(tmp_path: Path) -> None:
    assert replaced(tmp_path, "Dockerfile\n") == ("Dockerfile", {"Dockerfile": "NEW"})


def test_a_dockerignore_that_ignores_nothing_leaves_nowhere(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("# nothing\n!Dockerfile\n")
    assert not dockerfile_replaceable(tmp_path, "Dockerfile")
    (tmp_path / ".dockerignore").write_text("*.log\n")
    assert dockerfile_replaceable(tmp_path, "Dockerfile")
