"""Reading BuildKit's OCI layouts, and the index shipit assembles from platform manifests."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from shipit.registry import OCI_INDEX, OCI_MANIFEST, Manifest
from shipit.stages.assemble import PlatformPart, image_index, platform_fields
from shipit.stages.export import ExportError
from shipit.stages.layout import load_image, platform_manifests

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LayoutMaker:
    """Writes an OCI layout the way BuildKit's exporter shapes one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> dict[str, object]:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def image(self, arch: str, content: bytes) -> dict[str, object]:
        plain = content * 100
        layer = gzip.compress(plain)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha(plain)]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": CONFIG, **self.blob(config)},
                "layers": [{"mediaType": LAYER, **self.blob(layer)}],
            }
        ).encode()
        return {"mediaType": OCI_MANIFEST, **self.blob(manifest)}

    def index(self, entries: list[dict[str, object]]) -> dict[str, object]:
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ).encode()
        return {"mediaType": OCI_INDEX, **self.blob(data)}

    def top(self, entries: list[dict[str, object]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        (self.root / "index.json").write_text(json.dumps(index))


def plat(arch: str) -> dict[str, object]:
    return {"platform": {"architecture": arch, "os": "linux"}}


def two_platform_layout(tmp_path: Path, *, attestation: bool = False) -> tuple[LayoutMaker, str]:
    maker = LayoutMaker(tmp_path / "oci")
    amd = {**maker.image("amd64", b"x86"), **plat("amd64")}
    arm = {**maker.image("arm64", b"arm"), **plat("arm64")}
    entries = [amd, arm]
    if attestation:
        att = maker.image("unknown", b"att")
        entries.append(
            {
                **att,
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            }
        )
    nested = maker.index(entries)
    maker.top([nested])
    return maker, str(nested["digest"])


def test_a_two_platform_layout_gives_one_image_per_platform(tmp_path: Path) -> None:
    maker, digest = two_platform_layout(tmp_path, attestation=True)
    found = platform_manifests(maker.root, digest)
    assert [p.platform for p in found] == ["linux/amd64", "linux/arm64"]
    image = load_image(maker.root, found[1])
    assert image.manifest.digest == found[1].manifest.digest
    assert json.loads(image.config)["architecture"] == "arm64"
    assert len(image.layers) == 1
    assert image.layers[0].path.is_file()
    assert image.layers[0].descriptor.media_type == LAYER
    assert image.size == len(image.config) + image.layers[0].descriptor.size


def test_a_one_platform_layout_reads_the_platform_from_the_config(tmp_path: Path) -> None:
    maker = LayoutMaker(tmp_path / "oci")
    entry = maker.image("arm64", b"one")
    maker.top([entry])
    found = platform_manifests(maker.root, str(entry["digest"]))
    assert [p.platform for p in found] == ["linux/arm64"]
    assert platform_manifests(maker.root) == found


def test_a_digest_the_layout_lacks_is_named(tmp_path: Path) -> None:
    maker, _ = two_platform_layout(tmp_path)
    missing = sha(b"nothing")
    with pytest.raises(ExportError, match=f"reported {missing}, which the OCI layout"):
        platform_manifests(maker.root, missing)


def test_a_tampered_config_or_a_short_layer_is_refused(tmp_path: Path) -> None:
    maker, digest = two_platform_layout(tmp_path)
    found = platform_manifests(maker.root, digest)
    config, layer = found[0].manifest.blobs()
    layer_path = maker.root / "blobs" / "sha256" / layer.digest.split(":")[1]
    layer_path.write_bytes(layer_path.read_bytes()[:-3])
    with pytest.raises(ExportError, match=f"layer {layer.digest} .* has {layer.size - 3} bytes"):
        load_image(maker.root, found[0])
    (maker.root / "blobs" / "sha256" / config.digest.split(":")[1]).write_bytes(b"{}")
    with pytest.raises(ExportError, match=r"config blob .* does not match its descriptor"):
        load_image(maker.root, found[0])


def test_not_a_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="oci-layout is missing"):
        platform_manifests(tmp_path)


def test_the_index_lists_the_platforms_with_their_manifests_and_annotations() -> None:
    one = Manifest.from_bytes(b'{"mediaType": "%s", "n": 1}' % OCI_MANIFEST.encode())
    two = Manifest.from_bytes(b'{"mediaType": "%s", "n": 2}' % OCI_MANIFEST.encode())
    parts = [PlatformPart(platform="linux/amd64", manifest=one),
             PlatformPart(platform="linux/arm64/v8", manifest=two)]  # fmt: skip
    index = image_index(parts, {"org.opencontainers.image.version": "1.0.0", "a": "b"})
    doc = json.loads(index.data)
    assert index.media_type == OCI_INDEX == doc["mediaType"]
    assert [m["digest"] for m in doc["manifests"]] == [one.digest, two.digest]
    assert doc["manifests"][1]["platform"] == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
    }
    assert doc["manifests"][0]["size"] == len(one.data)
    assert list(doc["annotations"]) == ["a", "org.opencontainers.image.version"]
    assert image_index(parts, {"a": "b", "org.opencontainers.image.version": "1.0.0"}) == index
    assert not [m for m in doc["manifests"] if m["platform"]["os"] == "unknown"]


def test_an_index_refuses_a_platform_twice_and_bad_names() -> None:
    one = Manifest.from_bytes(b'{"mediaType": "%s"}' % OCI_MANIFEST.encode())
    with pytest.raises(ValueError, match="twice"):
        image_index([PlatformPart(platform="linux/amd64", manifest=one)] * 2, {})
    with pytest.raises(ValueError, match="os/architecture"):
        platform_fields("amd64")
