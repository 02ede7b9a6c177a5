"""Exporting an image: both `docker save` layouts, checks against the config, the manifest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest

from shipit.registry import DOCKER_MANIFEST, GrowingFile, SourceFailed
from shipit.stages.export import LAYER_MEDIA_TYPE, ExportError, Layer, export_image


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
        }
    ).encode()


def save_stream(members: list[tuple[str, bytes | str]]) -> list[bytes]:
    """A tar as `docker save` streams it, cut into uneven chunks. A str value is a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return [raw[i : i + 7777] for i in range(0, len(raw), 7777)]


def test_classic_layout_with_a_repeated_layer(tmp_path: Path) -> None:
    one = layer_tar({"a.txt": b"a" * 5000})
    two = layer_tar({"b.txt": b"random " * 3000})
    layers = [one, two, one]
    config = config_for(layers)
    image_id = sha(config)
    hexid = image_id.removeprefix("sha256:")
    manifest = [
        {
            "Config": f"{hexid}.json",
            "RepoTags": ["x:y"],
            "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"],
        }
    ]
    stream = save_stream(
        [
            ("l1/layer.tar", one),
            ("l2/layer.tar", two),
            ("l3/layer.tar", "../l1/layer.tar"),
            (f"{hexid}.json", config),
            ("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    exported = export_image(stream, image_id, tmp_path)
    assert exported.config == config
    assert [layer.diff_id for layer in exported.layers] == [sha(x) for x in layers]
    for layer, plain in zip(exported.layers, layers, strict=True):
        packed = layer.path.read_bytes()
        assert gzip.decompress(packed) == plain
        assert layer.descriptor.digest == sha(packed)
        assert layer.descriptor.size == len(packed)
    document = json.loads(exported.manifest.data)
    assert exported.manifest.media_type == DOCKER_MANIFEST
    assert document["config"] == {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": len(config),
        "digest": image_id,
    }
    assert [entry["mediaType"] for entry in document["layers"]] == [LAYER_MEDIA_TYPE] * 3
    assert document["layers"][0] == document["layers"][2]
    assert exported.manifest.digest == sha(exported.manifest.data)
    assert (
        exported.size
        == len(config) + exported.layers[0].descriptor.size + exported.layers[1].descriptor.size
    )


def test_oci_layout_and_an_empty_layer(tmp_path: Path) -> None:
    full = layer_tar({"x": b"x" * 100})
    empty = b"\0" * 1024  # an empty tar: no header at all
    config = config_for([full, empty])
    image_id = sha(config)
    blob = lambda data: f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"  # noqa: E731
    manifest = [{"Config": blob(config), "Layers": [blob(full), blob(empty)]}]
    stream = save_stream(
        [
            ("blobs/sha256/", b""),
            (blob(full), full),
            (blob(empty), empty),
            (blob(config), config),
            ("index.json", b"{}"),
            ("manifest.json", json.dumps(manifest).encode()),
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        ]
    )
    exported = export_image(stream, image_id, tmp_path)
    assert [layer.diff_id for layer in exported.layers] == [sha(full), sha(empty)]
    assert gzip.decompress(exported.layers[1].path.read_bytes()) == empty


def test_the_same_input_compresses_to_the_same_digest(tmp_path: Path) -> None:
    layer = layer_tar({"f": bytes(range(256)) * 400})
    config = config_for([layer])
    image_id = sha(config)
    members: list[tuple[str, bytes | str]] = [
        ("l/layer.tar", layer),
        ("c.json", config),
        ("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()),
    ]
    first = export_image(save_stream(members), image_id, tmp_path / "1")
    second = export_image(save_stream(members), image_id, tmp_path / "2")
    assert first.manifest.digest == second.manifest.digest


def test_the_same_layer_compresses_to_the_same_blob_however_the_stream_is_cut(
    tmp_path: Path,
) -> None:
    """ISA-L's output depends on where its input is cut: the daemon's stream is cut anew on
    every run (pipe reads), and the same image must still give the same digests."""
    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(300_000)) + bytes(2_000_000)
    layer = layer_tar({"f": data, "g": Path("/bin/busybox").read_bytes()})
    config = config_for([layer])
    members: list[tuple[str, bytes | str]] = [
        ("l/layer.tar", layer),
        ("c.json", config),
        ("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()),
    ]
    raw = b"".join(save_stream(members))
    digests = set()
    for seed in range(4):  # uneven cuts, different on each pass
        cut = random.Random(seed)
        chunks, start = [], 0
        while start < len(raw):
            size = cut.randint(1, 900_000)
            chunks.append(raw[start : start + size])
            start += size
        exported = export_image(chunks, sha(config), tmp_path / str(seed))
        digests.add(exported.layers[0].descriptor.digest)
    assert len(digests) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("config", "the exported config is"),
        ("diff_id", "the config expects"),
        ("no_manifest", "no manifest.json"),
        ("missing_layer", "lacks the layer"),
    ],
)
def test_an_export_that_is_not_the_built_image_is_refused(
    tmp_path: Path, change: str, message: str
) -> None:
    layer = layer_tar({"f": b"data"})
    config = config_for([layer])
    image_id = sha(config)
    layers_listed = ["l/layer.tar"]
    members: list[tuple[str, bytes | str]] = [("l/layer.tar", layer), ("c.json", config)]
    if change == "config":
        image_id = sha(b"something else")
    if change == "diff_id":
        members[0] = ("l/layer.tar", layer_tar({"f": b"tampered"}))
    if change == "missing_layer":
        layers_listed = ["m/layer.tar"]
    if change != "no_manifest":
        members.append(
            ("manifest.json", json.dumps([{"Config": "c.json", "Layers": layers_listed}]).encode())
        )
    with pytest.raises(ExportError, match=message):
        export_image(save_stream(members), image_id, tmp_path)


def test_each_layer_file_is_announced_before_its_bytes_and_finished_with_its_descriptor(
    tmp_path: Path,
) -> None:
    one = layer_tar({"a": os.urandom(3 * 1024 * 1024)})  # several chunks of the stream
    two = layer_tar({"b": b"b" * 10})
    config = config_for([one, two])
    members: list[tuple[str, bytes | str]] = [
        ("l1/layer.tar", one),
        ("l2/layer.tar", two),
        ("c.json", config),
        (
            "manifest.json",
            json.dumps([{"Config": "c.json", "Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode(),
        ),
    ]
    begun: list[tuple[GrowingFile, int]] = []
    finished: list[Layer] = []
    exported = export_image(
        save_stream(members),
        sha(config),
        tmp_path,
        on_layer_start=lambda blob: begun.append((blob, blob.path.stat().st_size)),
        on_layer=finished.append,
    )
    assert [size for _, size in begun] == [0, 0]  # announced empty, before any byte
    assert [blob.path for blob, _ in begun] == [layer.path for layer in exported.layers]
    assert [blob.result() for blob, _ in begun] == [x.descriptor for x in exported.layers]
    assert finished == list(exported.layers)


def test_a_broken_export_fails_the_layer_it_was_writing(tmp_path: Path) -> None:
    layer = layer_tar({"a": os.urandom(2 * 1024 * 1024)})
    raw = b"".join(save_stream([("l1/layer.tar", layer)]))
    begun: list[GrowingFile] = []
    with pytest.raises(ExportError, match="not a tar archive shipit can read"):
        export_image([raw[: len(raw) // 2]], sha(b"x"), tmp_path, on_layer_start=begun.append)
    [blob] = begun
    with pytest.raises(SourceFailed, match="the export stopped"):
        blob.result()
