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
from shipit.registry import DOCKER_MANIFEST, OCI_MANIFEST
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
