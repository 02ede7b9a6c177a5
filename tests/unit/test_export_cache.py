"""The export cache: an image kept once is recalled, checked again, and dropped when it no
longer holds; the least recently used images go first when the layers outgrow the limit."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import pytest

from shipit.execute import _work_folder
from shipit.log import Console
from shipit.registry import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor, Manifest
from shipit.stages import export_cache
from shipit.stages.export import ExportedImage, export_image
from shipit.stages.export_cache import ExportCache
from tests.unit.test_export import config_for, layer_tar, save_stream, sha


def exported(folder: Path, *contents: bytes) -> ExportedImage:
    """An image of one layer per content, exported from a `docker save` stream into `folder`."""
    layers = [layer_tar({"f": data}) for data in contents]
    config = config_for(layers)
    names = [f"l{i}/layer.tar" for i in range(len(layers))]
    members: list[tuple[str, bytes | str]] = [
        *zip(names, layers, strict=True),
        ("c.json", config),
        ("manifest.json", json.dumps([{"Config": "c.json", "Layers": names}]).encode()),
    ]
    return export_image(save_stream(members), sha(config), folder)


def cache_in(tmp_path: Path, limit: int = 1 << 30) -> ExportCache:
    return ExportCache(root=tmp_path / "cache", limit=limit, grace=0.0)


def record_of(cache: ExportCache, image: ExportedImage) -> Path:
    return cache.root / "images" / f"{image.image_id.removeprefix('sha256:')}.json"


def test_a_kept_image_is_recalled_with_the_same_manifest(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"one" * 5000, b"two" * 7000)
    cache.keep(image)
    recalled = cache.recall(image.image_id, tmp_path / "run2", oci=False)
    assert recalled is not None
    assert recalled.manifest.data == image.manifest.data
    assert recalled.manifest.media_type == DOCKER_MANIFEST
    assert recalled.config == image.config
    for kept, fresh in zip(recalled.layers, image.layers, strict=True):
        assert kept.path.parent == tmp_path / "run2"  # linked into the run's own folder
        assert kept.path.read_bytes() == fresh.path.read_bytes()
        assert kept.descriptor == fresh.descriptor
        assert kept.diff_id == fresh.diff_id


def test_an_index_member_is_recalled_as_an_oci_manifest(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"x" * 100)
    cache.keep(image)
    recalled = cache.recall(image.image_id, tmp_path / "run2", oci=True)
    assert recalled is not None
    assert recalled.manifest.media_type == OCI_MANIFEST
    assert json.loads(recalled.manifest.data)["layers"][0]["digest"] == (
        image.layers[0].descriptor.digest
    )


def test_a_repeated_layer_is_linked_once(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"same", b"other", b"same")
    cache.keep(image)
    recalled = cache.recall(image.image_id, tmp_path / "run2", oci=False)
    assert recalled is not None
    assert recalled.layers[0].path == recalled.layers[2].path
    assert len(list((tmp_path / "run2").iterdir())) == 2


def test_an_image_never_kept_is_not_recalled(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    assert cache.recall("sha256:" + "0" * 64, tmp_path / "run", oci=False) is None
    assert cache.recall("not a digest", tmp_path / "run", oci=False) is None


@pytest.mark.parametrize("damage", ["changed", "cut short", "missing"])
def test_a_damaged_layer_drops_the_image(tmp_path: Path, damage: str) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"a" * 9000, b"b" * 9000)
    cache.keep(image)
    blob = cache.root / "blobs" / "sha256" / image.layers[1].descriptor.digest.split(":")[1]
    data = blob.read_bytes()
    blob.unlink()  # the kept blob shares its inode with the run's file: replace, not rewrite
    if damage == "changed":
        blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "cut short":
        blob.write_bytes(data[:-10])
    assert cache.recall(image.image_id, tmp_path / "run2", oci=False) is None
    assert not record_of(cache, image).exists()
    assert not blob.exists()
    cache.keep(image)  # kept again by the export that follows
    assert cache.recall(image.image_id, tmp_path / "run3", oci=False) is not None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: {**r, "config": base64.b64encode(b'{"rootfs": {"diff_ids": []}}').decode()},
        lambda r: {**r, "layers": []},
        lambda r: {**r, "layers": [{**r["layers"][0], "digest": "sha256:../../etc"}]},
        lambda r: {**r, "format": 99},
        lambda r: {**r, "config": "not base64 \0"},
        lambda r: [],
    ],
    ids=["config", "layers", "digest", "format", "encoding", "shape"],
)
def test_a_record_that_does_not_hold_is_dropped(tmp_path: Path, tamper: object) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"z" * 100)
    cache.keep(image)
    path = record_of(cache, image)
    assert callable(tamper)
    path.write_text(json.dumps(tamper(json.loads(path.read_bytes()))), encoding="utf-8")
    assert cache.recall(image.image_id, tmp_path / "run2", oci=False) is None
    assert not path.exists()


@pytest.mark.parametrize("data", [b"", b"\0\xff\xfe", b"{" * 5000, b"[1, 2"])
def test_a_record_that_is_not_json_is_dropped(tmp_path: Path, data: bytes) -> None:
    cache = cache_in(tmp_path)
    image = exported(tmp_path / "run1", b"q" * 100)
    cache.keep(image)
    record_of(cache, image).write_bytes(data)
    assert cache.recall(image.image_id, tmp_path / "run2", oci=False) is None
    assert not record_of(cache, image).exists()


def test_the_least_recently_used_images_go_first(tmp_path: Path) -> None:
    big = os.urandom(40_000)  # random: gzip cannot shrink it, so each layer is about 40 kB
    first = exported(tmp_path / "run1", big, b"shared" * 100)
    second = exported(tmp_path / "run2", os.urandom(40_000), b"shared" * 100)
    third = exported(tmp_path / "run3", os.urandom(40_000), b"shared" * 100)
    cache = cache_in(tmp_path, limit=100_000)  # room for two of them
    cache.keep(first)
    cache.keep(second)
    past = time.time() - 100
    os.utime(record_of(cache, second), (past, past))
    os.utime(record_of(cache, first), (past + 50, past + 50))  # first used after second
    cache.keep(third)
    assert record_of(cache, third).exists()
    assert record_of(cache, first).exists()
    assert not record_of(cache, second).exists()
    blobs = {p.name for p in (cache.root / "blobs" / "sha256").iterdir()}
    names = {x.descriptor.digest.split(":")[1] for x in (*first.layers, *third.layers)}
    assert blobs == names  # the shared layer stays; the dropped image's own layer is gone


def test_the_newest_image_is_kept_even_when_it_alone_exceeds_the_limit(tmp_path: Path) -> None:
    cache = cache_in(tmp_path, limit=10)
    image = exported(tmp_path / "run1", os.urandom(5000))
    cache.keep(image)
    assert cache.recall(image.image_id, tmp_path / "run2", oci=False) is not None


def test_a_blob_linked_moments_ago_is_left_for_the_run_that_linked_it(tmp_path: Path) -> None:
    cache = ExportCache(root=tmp_path / "cache")  # the default grace
    folder = cache.root / "blobs" / "sha256"
    folder.mkdir(parents=True)
    orphan = folder / ("a" * 64)
    orphan.write_bytes(b"a record for it is being written")
    cache.evict()
    assert orphan.exists()


def test_run_folders_left_by_killed_runs_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_in(tmp_path)
    left = cache.root / "runs" / "shipit-killed"
    left.mkdir(parents=True)
    (left / "layer-0.tar.gz").write_bytes(b"half an export")
    cache.evict()
    assert left.exists()  # a run of today may still be going
    later = time.time() + export_cache.STALE_RUN + 60
    monkeypatch.setattr(export_cache.time, "time", lambda: later)
    cache.evict()
    assert not left.exists()


@pytest.mark.parametrize(
    ("env", "root"),
    [
        ({"SHIPIT_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/c"),
        ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/shipit"),
        ({"HOME": "/h"}, "/h/.cache/shipit"),
        ({"SHIPIT_CACHE_DIR": "off", "HOME": "/h"}, None),
        ({"SHIPIT_CACHE_DIR": "OFF", "HOME": "/h"}, None),
        ({}, None),
        ({"SHIPIT_CACHE_DIR": "/c\0x"}, None),
        ({"XDG_CACHE_HOME": "/x\0", "HOME": "/h"}, None),
    ],
)
def test_where_the_cache_is(env: dict[str, str], root: str | None) -> None:
    cache = ExportCache.from_env(env)
    assert (None if cache is None else str(cache.root)) == root


def test_the_limit_comes_from_shipit_cache_mb() -> None:
    chosen = ExportCache.from_env({"HOME": "/h", "SHIPIT_CACHE_MB": "12"})
    assert chosen is not None
    assert chosen.limit == 12 << 20
    default = ExportCache.from_env({"HOME": "/h", "SHIPIT_CACHE_MB": "lots"})
    assert default is not None
    assert default.limit == export_cache.DEFAULT_MB << 20


def test_a_cache_that_cannot_be_written_is_skipped_and_said_with_v(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    stream = io.StringIO()
    console = Console({}, verbosity=1, stream=stream, color="never")
    cache, folder = _work_folder({"SHIPIT_CACHE_DIR": str(blocker / "cache")}, console)
    with folder as path:
        assert cache is None
        assert Path(path).is_dir()
    assert f"the export cache {blocker / 'cache'} is skipped" in stream.getvalue()


# --- layouts: what a buildx or buildah build wrote, lent to its next build -------------------


def layout_with(folder: Path, *layers: bytes) -> tuple[Manifest, bytes, list[Descriptor]]:
    """An OCI layout in `folder` holding one image of these (already gzipped) layers."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}})
    descriptors = []
    for data in (config.encode(), *layers):
        (blobs / sha(data).removeprefix("sha256:")).write_bytes(data)
        descriptors.append({"mediaType": "application/octet-stream", "digest": sha(data),
                            "size": len(data)})  # fmt: skip
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptors[0],
                "layers": descriptors[1:]}  # fmt: skip
    manifest = Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
    (blobs / manifest.digest.removeprefix("sha256:")).write_bytes(manifest.data)
    return manifest, config.encode(), list(manifest.blobs()[1:])


def test_a_layout_kept_under_a_key_is_lent_to_the_next_build_and_holds(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    _, _, layers = layout_with(tmp_path / "run1", os.urandom(3000), os.urandom(2000))
    cache.keep_layout(KEY, tmp_path / "run1", layers)
    lent = cache.lend(KEY, tmp_path / "run2")
    assert sorted(lent.digests) == sorted(x.digest for x in layers)
    for layer in layers:
        path = tmp_path / "run2" / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
        kept = cache.root / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
        assert path.stat().st_ino == kept.stat().st_ino  # a hard link, not a copy
    assert lent.held()
    assert cache.lend("sha256:" + "1" * 64, tmp_path / "run3").digests == {}  # another image's


def test_a_lent_layer_that_no_longer_hashes_fails_the_loan_and_leaves_the_cache(
    tmp_path: Path,
) -> None:
    cache = cache_in(tmp_path)
    _, _, [layer] = layout_with(tmp_path / "run1", os.urandom(3000))
    cache.keep_layout(KEY, tmp_path / "run1", [layer])
    kept = cache.root / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    kept.write_bytes(b"\0" * layer.size)  # damaged in place: the run's old link sees it too
    lent = cache.lend(KEY, tmp_path / "run2")
    lent_path = tmp_path / "run2" / "blobs" / "sha256" / kept.name
    assert not lent.held()
    assert not kept.exists() and not lent_path.exists()


def test_a_damaged_layer_the_build_wrote_again_does_not_fail_the_loan(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    data = os.urandom(3000)
    _, _, [layer] = layout_with(tmp_path / "run1", data)
    cache.keep_layout(KEY, tmp_path / "run1", [layer])
    kept = cache.root / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    kept.write_bytes(b"\0" * layer.size)
    lent = cache.lend(KEY, tmp_path / "run2")
    lent_path = tmp_path / "run2" / "blobs" / "sha256" / kept.name
    fresh = lent_path.with_name("fresh")
    fresh.write_bytes(data)
    fresh.replace(lent_path)  # what a build that writes every blob does: a new file
    assert lent.held()
    assert not kept.exists()  # the damaged copy is not lent again


def test_a_kept_image_is_written_into_a_layout_from_its_record(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    manifest, config, layers = layout_with(tmp_path / "run1", os.urandom(3000))
    image_id = sha(config)
    cache.keep_layout(image_id, tmp_path / "run1", layers, manifest=manifest, config=config)
    recalled = cache.recall_layout(image_id, tmp_path / "run2")
    assert recalled is not None
    again, lent = recalled
    assert again.data == manifest.data and lent.held()
    blobs = tmp_path / "run2" / "blobs" / "sha256"
    for blob in (manifest.digest, image_id, layers[0].digest):
        assert (blobs / blob.removeprefix("sha256:")).is_file()
    assert cache.recall_layout(KEY, tmp_path / "run3") is None  # never kept


@pytest.mark.parametrize("tamper", ["config", "layers", "json"])
def test_a_layout_record_that_does_not_hold_is_dropped(tmp_path: Path, tamper: str) -> None:
    cache = cache_in(tmp_path)
    manifest, config, layers = layout_with(tmp_path / "run1", os.urandom(3000))
    image_id = sha(config)
    cache.keep_layout(image_id, tmp_path / "run1", layers, manifest=manifest, config=config)
    record = cache.root / "layouts" / f"{image_id.removeprefix('sha256:')}.json"
    document = json.loads(record.read_text())
    if tamper == "config":
        document["config"] = base64.b64encode(b'{"rootfs": {}}').decode()
    elif tamper == "layers":
        document["layers"][0]["size"] += 1
    record.write_text("{" if tamper == "json" else json.dumps(document))
    assert cache.recall_layout(image_id, tmp_path / "run2") is None
    assert not record.exists()


def test_layouts_count_toward_the_limit_and_name_their_blobs(tmp_path: Path) -> None:
    cache = cache_in(tmp_path, limit=5000)
    _, _, old_layers = layout_with(tmp_path / "run1", os.urandom(4000))
    cache.keep_layout("sha256:" + "1" * 64, tmp_path / "run1", old_layers)
    past = time.time() - 100
    os.utime(cache.root / "layouts" / f"{'1' * 64}.json", (past, past))
    _, _, new_layers = layout_with(tmp_path / "run2", os.urandom(4000))
    cache.keep_layout(KEY, tmp_path / "run2", new_layers)
    assert [p.name for p in (cache.root / "layouts").iterdir()] == [f"{KEY[7:]}.json"]
    blobs = {p.name for p in (cache.root / "blobs" / "sha256").iterdir()}
    assert blobs == {new_layers[0].digest.removeprefix("sha256:")}


KEY = "sha256:" + "2" * 64
