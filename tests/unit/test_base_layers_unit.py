"""Which base image's layers go ahead (stages/base_layers.py): the image the build's last
stage starts from, through the stages it names, and its manifest for the build's platform."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from shipit.plan import BuildSettings
from shipit.registry import Manifest
from shipit.stages.base_layers import _child_for, final_base
from tests.unit.test_buildah_unit import settings as buildah_settings

INDEX = "application/vnd.oci.image.index.v1+json"


def settings(context: Path, text: str, **changes: object) -> BuildSettings:
    """The build settings of tests/unit/test_buildah_unit.py, in `context` holding `text` as
    its Dockerfile."""
    (context / "Dockerfile").write_text(text, encoding="utf-8")
    return replace(buildah_settings(engine="sdk", **changes), context=str(context))


@pytest.mark.parametrize(
    ("dockerfile", "changes", "expected"),
    [
        ("FROM python:3.12-slim\nRUN true\n", {}, "docker.io/library/python:3.12-slim"),
        # the last stage starts from a stage, which starts from the image
        ("FROM r.io/base:1 AS build\nRUN make\nFROM build\nCOPY . /\n", {}, "r.io/base:1"),
        # a builder stage's image is not the final image's base
        ("FROM golang:1 AS build\nRUN go build\nFROM r.io/run@sha256:" + "a" * 64
         + "\nCOPY --from=build /app /app\n", {}, "r.io/run@sha256:" + "a" * 64),
        ("FROM r.io/a:1 AS one\nFROM r.io/b:2 AS two\n", {"target": "one"}, "r.io/a:1"),
        ("ARG BASE=r.io/x:1\nFROM ${BASE}\n", {}, "r.io/x:1"),
        ("ARG BASE=r.io/x:1\nFROM ${BASE}\n", {"build_args": {"BASE": "r.io/y:2"}}, "r.io/y:2"),
        ("FROM scratch\nCOPY a /a\n", {}, None),
        ("FROM r.io/base:1 AS a\nFROM scratch AS b\nCOPY --from=a / /\n", {}, None),
        ("FROM $UNSET_ARG\n", {}, None),
    ],
)  # fmt: skip
def test_the_base_is_what_the_last_built_stage_starts_from(
    tmp_path: Path, dockerfile: str, changes: dict[str, object], expected: str | None
) -> None:
    assert final_base(settings(tmp_path, dockerfile, **changes), {}) == expected


def test_a_dockerfile_that_cannot_be_read_has_no_base(tmp_path: Path) -> None:
    unread = settings(tmp_path, "FROM r.io/a:1\n", dockerfile="missing/Dockerfile")
    assert final_base(unread, {}) is None


def test_the_platforms_manifest_is_chosen_from_an_index() -> None:
    def entry(n: str, platform: dict[str, str]) -> dict[str, object]:
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + n * 64, "size": 1, "platform": platform}  # fmt: skip

    index = Manifest.from_bytes(
        json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
            entry("a", {"os": "linux", "architecture": "amd64"}),
            entry("b", {"os": "linux", "architecture": "arm", "variant": "v7"}),
            entry("c", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            entry("d", {"os": "unknown", "architecture": "unknown"}),  # an attestation
        ]}).encode(),
        INDEX,
    )  # fmt: skip

    def chosen(platform: str) -> str | None:
        found = _child_for(index, platform)
        return found.digest[7] if found is not None else None

    assert chosen("linux/amd64") == "a"
    assert chosen("linux/arm64") == "c"  # arm64 without a variant is v8's
    assert chosen("linux/arm64/v8") == "c"
    assert chosen("linux/arm/v7") == "b"
    assert chosen("linux/arm/v6") is None
    assert chosen("linux/s390x") is None
