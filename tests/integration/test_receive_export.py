"""On the containerd image store (dockerd 28) an image leaves the daemon by the daemon's own
push to shipit's receiver (stages.receive), not `docker save`: the registries get the image the
`docker save` way would have given (one digest), and the daemon keeps no name of the receiver's."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shipit.docker_api import Daemon
from shipit.stages.export import export_image
from tests.support.cli import run_shipit
from tests.support.dockerd28 import Dockerd28
from tests.support.project import make_project
from tests.support.services import RegistryFactory, registry_client

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def pushed(
    project: Path, daemon: Dockerd28, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, dict[str, Any]]:
    """`shipit run -v` of the project on `daemon` (no scan, no sign): its log and the report's
    image."""
    env = {"HOME": str(tmp_path), "DOCKER_HOST": daemon.host,
           "SHIPIT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--skip", "scan", "--skip", "sign", "--report", str(report),
         "-v"], capsys, env,
    )  # fmt: skip
    assert code == 0, err
    [image] = json.loads(report.read_text())["images"]
    return err, image


def test_the_sdk_engines_image_is_pushed_to_shipit_by_the_daemon_and_stored_as_saved(
    tmp_path: Path,
    dockerd_containerd: Dockerd28,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    regs = [registry_factory(), registry_factory()]
    namespace = f"rx{os.urandom(3).hex()}"
    payload = os.urandom(3 * 1024 * 1024)  # a layer past the MiB that starts its uploads early
    registries = ", ".join(f"{r.host}/{namespace}" for r in regs)
    spec = (
        f"version: 1\nregistries: [{registries}]\n"
        "image: {name: app, engine: sdk, tags: [{type: raw, value: v1}]}\n"
    )
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY payload /payload\nCOPY small /small\n",
        files={"payload": payload, "small": b"a small layer\n"},
    )
    err, image = pushed(project, dockerd_containerd, tmp_path, capsys)
    assert "the daemon pushed sha256:" in err and "1 of them on their way already" in err
    assert "exporting with docker save" not in err
    with Daemon({"DOCKER_HOST": dockerd_containerd.host}) as daemon:
        saved = export_image(daemon.save(image["image_id"]), image["image_id"], tmp_path / "save")
        names = [
            tag
            for listed in daemon._client.api.images(all=True)
            for tag in listed.get("RepoTags") or []
        ]
    assert saved.manifest.digest == image["digest"]  # the same image either way
    assert not [n for n in names if "/shipit/export:" in n]  # the receiver's name is gone
    for reg in regs:
        registry = registry_client(reg)
        manifest = registry.manifest(f"{namespace}/app", "v1")
        assert manifest.digest == image["digest"]
        with registry._open_blob(f"{namespace}/app", manifest.blobs()[1]) as response:
            content = response.content
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(content))) as tar:
            member = tar.extractfile("payload")
            assert member is not None and member.read() == payload
