"""Builds that write an OCI layout are lent what they wrote last time (stages.export_cache):
buildx on the containerd image store (dockerd 28) writes into a layout that holds the layers of
the image's last build, and a lent layer that no longer hashes to its digest makes it build
again without any; what reaches the registry is the same image either way."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.cli import run_shipit
from tests.support.dockerd28 import Dockerd28
from tests.support.project import make_project
from tests.support.services import RegistryFactory, registry_client

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_buildx_is_lent_its_last_layout_and_a_damaged_layer_is_built_again(
    tmp_path: Path,
    dockerd_containerd: Dockerd28,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = registry_factory()
    namespace = f"lr{os.urandom(3).hex()}"
    payload = os.urandom(3 * 1024 * 1024)
    spec = (
        f"version: 1\nregistries: [{reg.host}/{namespace}]\n"
        "image: {name: app, engine: buildx, tags: [{type: raw, value: v1}]}\n"
    )
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY payload /payload\n",
        files={"payload": payload},
    )
    cache = tmp_path / "cache"
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd_containerd.host,
           "SHIPIT_CACHE_DIR": str(cache)}  # fmt: skip

    def run() -> tuple[str, str]:
        report = tmp_path / "report.json"
        code, _, err = run_shipit(
            ["run", "-C", str(project), "--skip", "scan", "--skip", "sign", "--report",
             str(report), "-v"], capsys, env,
        )  # fmt: skip
        assert code == 0, err
        return json.loads(report.read_text())["images"][0]["digest"], err

    first, err = run()
    assert "lent to BuildKit" not in err
    [record] = (cache / "layouts").glob("*.json")
    kept = json.loads(record.read_text())["layers"]
    assert len(kept) == 1

    second, err = run()
    assert second == first
    assert "1 layer of this image's last build lent to BuildKit" in err
    assert "building again" not in err

    # the kept layer damaged in place (same size): lent, hashed, found wrong, built again
    blob = cache / "blobs" / "sha256" / kept[0]["digest"].removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    third, err = run()
    assert "a layer kept from an earlier build no longer holds: building again" in err
    assert third == first
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name  # kept afresh, whole
    registry = registry_client(reg)
    manifest = registry.manifest(f"{namespace}/app", "v1")
    assert manifest.digest == first
    layer = manifest.blobs()[1]
    with registry._open_blob(f"{namespace}/app", layer) as response:
        content = response.content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(content))) as tar:
        member = tar.extractfile("payload")
        assert member is not None and member.read() == payload


@pytest.mark.parametrize("named", [None, "sdk"])
def test_a_spec_that_names_no_engine_builds_with_buildx_on_the_containerd_store(
    tmp_path: Path,
    dockerd_containerd: Dockerd28,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
    named: str | None,
) -> None:
    """On the containerd image store the classic builder's images come out only through the
    daemon's slow export: with no `engine:` in the spec, buildx builds; `engine: sdk` keeps
    the classic builder. Either way the image in the registry is the Dockerfile's."""
    reg = registry_factory()
    namespace = f"de{os.urandom(3).hex()}"
    engine = f", engine: {named}" if named else ""
    spec = f"version: 1\nregistries: [{reg.host}/{namespace}]\nimage: {{name: app{engine}}}\n"
    payload = os.urandom(64 * 1024)
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY payload /payload\n",
        files={"payload": payload},
    )
    env = {"HOME": str(tmp_path), "DOCKER_HOST": dockerd_containerd.host,
           "SHIPIT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--skip", "scan", "--skip", "sign", "--report", str(report)],
        capsys,
        env,
    )
    assert code == 0, err
    switched = "image app: engine buildx, the default on a daemon with the containerd image store"
    if named is None:
        assert switched in err
        assert "with buildx" in err  # the build's own group title
    else:
        assert switched not in err and "with buildx" not in err
    [image] = json.loads(report.read_text())["images"]
    registry = registry_client(reg)
    manifest = registry.manifest(f"{namespace}/app", image["digest"])
    with registry._open_blob(f"{namespace}/app", manifest.blobs()[1]) as response:
        content = response.content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(content))) as tar:
        member = tar.extractfile("payload")
        assert member is not None and member.read() == payload
