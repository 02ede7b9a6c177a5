"""The base image's layers go to the registries while the image builds (stages/base_layers.py),
on dockerd 28's containerd image store, where BuildKit keeps them as the base's registry has
them; and `Ahead` against a real registry: what it downloads, checks and hands over."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from shipit.log import Console
from shipit.registry import Descriptor
from shipit.stages.base_layers import Ahead
from tests.integration.test_receive_export import pushed
from tests.integration.test_sdk_context import push_marked_base
from tests.support.dockerd28 import Dockerd28
from tests.support.project import make_project
from tests.support.services import RegistryFactory, registry_client

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.mark.parametrize("engine", ["sdk", "buildx"])
def test_the_bases_layers_go_ahead_while_it_builds_and_the_image_holds_them(
    tmp_path: Path,
    engine: str,
    dockerd_containerd: Dockerd28,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_registry, *targets = (registry_factory() for _ in range(3))
    namespace = f"ahead{os.urandom(3).hex()}"
    base = f"{base_registry.host}/{namespace}/base:1"
    source = registry_client(base_registry)
    push_marked_base(source, f"{namespace}/base", "1", text=os.urandom(2048))
    [base_layer] = source.manifest(f"{namespace}/base", "1").blobs()[1:]
    registries = ", ".join(f"{r.host}/{namespace}" for r in targets)
    spec = (
        f"version: 1\nregistries: [{registries}]\n"
        f"image: {{name: app, engine: {engine}, tags: [{{type: raw, value: v1}}]}}\n"
    )
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile=f"FROM {base} AS build\nCOPY a /a\nFROM build\nCOPY b /b\n",
        files={"a": os.urandom(4096), "b": b"ours\n"},
    )
    err, image = pushed(project, dockerd_containerd, tmp_path, capsys)
    assert f"base layer {base_layer.digest} on its way to the registries" in err
    for reg in targets:
        manifest = registry_client(reg).manifest(f"{namespace}/app", "v1")
        assert manifest.digest == image["digest"]
        layers = [blob.digest for blob in manifest.blobs()[1:]]
        assert layers[0] == base_layer.digest and len(layers) == 3  # BuildKit kept its bytes
        assert registry_client(reg).has_blob(f"{namespace}/app", base_layer.digest)


class Handed:
    """What `Ahead` hands the uploads: a stand-in for `BlobUploads` that records each file,
    and says which blobs a registry lacks."""

    def __init__(self, held: set[str]) -> None:
        self.held = held
        self.files: list[tuple[Path, Descriptor]] = []

    def lacking(self, digest: str) -> bool:
        return digest not in self.held

    def add_file(self, path: Path, descriptor: Descriptor) -> None:
        self.files.append((path, descriptor))


def fetched(folder: Path, base: str, handed: Handed) -> Ahead | None:
    """An `Ahead` for `base` (linux/amd64) run to its end; None when it did not begin."""
    ahead = Ahead(folder)
    if not ahead.start(base, ("linux/amd64",), handed, {}, Console({}, stream=io.StringIO())):  # type: ignore[arg-type]
        return None
    assert ahead.wait(60)
    return ahead


def test_ahead_downloads_and_checks_only_the_layers_a_registry_lacks(
    tmp_path: Path, registry_factory: RegistryFactory
) -> None:
    registry = registry_factory()
    client = registry_client(registry)
    push_marked_base(client, "lib/base", "1", text=os.urandom(4096))
    [layer] = client.manifest("lib/base", "1").blobs()[1:]
    handed = Handed(held=set())
    ahead = fetched(tmp_path / "layers", f"{registry.host}/lib/base:1", handed)
    assert ahead is not None
    [(path, descriptor)] = handed.files
    assert descriptor == layer and ahead.held == {layer.digest: path}
    assert client.read_blob("lib/base", layer) == path.read_bytes()

    every_registry_has_it = Handed(held={layer.digest})
    again = fetched(tmp_path / "again", f"{registry.host}/lib/base:1", every_registry_has_it)
    assert again is not None and again.held == {} and every_registry_has_it.files == []
    assert list((tmp_path / "again").iterdir()) == []  # nothing downloaded


def test_ahead_leaves_a_base_it_cannot_or_should_not_read_to_the_usual_way(
    tmp_path: Path, registry_factory: RegistryFactory
) -> None:
    registry = registry_factory()
    handed = Handed(held=set())
    # a tag the registry does not have: the lookup fails in its thread, never in the run
    missing = fetched(tmp_path / "layers", f"{registry.host}/lib/none:1", handed)
    assert missing is not None and missing.held == {} and handed.files == []
    # Docker Hub counts every manifest GET as a pull: it is not asked
    assert fetched(tmp_path / "hub", "docker.io/library/python:3.12", handed) is None
