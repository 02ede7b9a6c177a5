"""The images shipit has exported, kept compressed: an image built again is not exported again.

Reading an image out of a daemon is the slowest part of pushing it: Docker 20.10 writes the
whole `docker save` to a folder of its own before it sends the first byte (1.3 s of 1.7 s for
a 153 MB image on the benchmark machine), and then every layer is gzipped. A build that the
build cache answers gives the same image id as last time, so what the export would make is
known already: this cache keeps it, the way BuildKit's content store keeps the compressed
layers of what it built. Under the cache's folder:

  blobs/sha256/<hex>   gzipped layers, exactly as they were pushed
  images/<hex>.json    per image id: its config, the daemon's manifest where the id is that
                       manifest's digest (the containerd store), and its layers' diff ids
                       with the digest and size of each gzipped blob
  layouts/<hex>.json   per build that wrote an OCI layout (buildx, buildah): the layers it
                       wrote last time, and for buildah the image's manifest and config
  runs/                every run's work folder, so keeping a layer is a hard link, not a copy

Nothing is taken on trust but what shipit computed itself: when an image is recalled its
config is checked against the image id, its diff ids against the config, and every layer is
hashed again against its digest; anything amiss (a file changed, missing or cut short) drops
the record, and the image is exported as if it had never been kept. Each recalled layer is
hard-linked into the run's own folder first, so another run's clean-up cannot take it away
in the middle of an upload. Files appear by rename, never half-written.

Builds that write an OCI layout are lent what they wrote last time. BuildKit's OCI exporter
skips a blob the destination holds already (a rebuild answered by its cache wrote 153 MB again
into a fresh folder in 1.4 s, and 0.4 s into one that held the blobs: dockerd 28.5, buildx
0.29), so before a buildx build its layout folder is given hard links to the layers of that
image's last layout (`lend`), which are hashed again while the build runs; a lent layer the
build used that no longer hashes to its digest is dropped and the build runs again without
any. `buildah push` writes every layer again whatever the folder holds (checked with buildah
1.28), so a buildah build whose image id is kept is not pushed into a layout at all: the
layout is written from the record (`recall_layout`), its layers lent and checked the same way.

The folder is `SHIPIT_CACHE_DIR`, else `$XDG_CACHE_HOME/shipit`, else `~/.cache/shipit`;
`SHIPIT_CACHE_DIR=off` turns the cache off. When the layers outgrow `SHIPIT_CACHE_MB` (4096 by
default) the images used least recently are dropped, the newest always kept. A cache that
cannot be written never fails a run: it is skipped, and `-v` says why.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shipit.registry import Descriptor, Manifest
from shipit.registry.oci import check_digest
from shipit.stages.export import (
    LAYER_MEDIA_TYPE,
    ExportedImage,
    Layer,
    image_manifest,
    names_config,
)

FORMAT: Final = 1  # of the records; a record of another format is not read
DEFAULT_MB: Final = 4096
GRACE: Final = 3600.0  # a blob linked this recently may belong to a record being written
STALE_RUN: Final = 2 * 86400.0  # a run folder this old was left by a run that was killed
_READ: Final = 1 << 20


@dataclass(frozen=True)
class ExportCache:
    root: Path
    limit: int = DEFAULT_MB * 1024 * 1024  # bytes of layers kept, at most
    grace: float = GRACE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExportCache | None:
        """The cache the environment asks for, or None when it is turned off."""
        chosen = env.get("SHIPIT_CACHE_DIR", "").strip()
        if chosen.lower() in ("off", "0", "false", "no", "none"):
            return None
        if chosen:
            root = Path(chosen)
        elif env.get("XDG_CACHE_HOME", "").strip():
            root = Path(env["XDG_CACHE_HOME"].strip()) / "shipit"
        elif env.get("HOME", "").strip():
            root = Path(env["HOME"].strip()) / ".cache" / "shipit"
        else:
            return None
        if "\0" in str(root):  # no such folder can exist; nothing to keep
            return None
        megabytes = env.get("SHIPIT_CACHE_MB", "").strip()
        limit = int(megabytes) if megabytes.isdigit() else DEFAULT_MB
        return cls(root=root, limit=limit * 1024 * 1024)

    def run_folder(self) -> tempfile.TemporaryDirectory[str]:
        """A work folder for one run inside the cache (raises OSError if it cannot be made)."""
        runs = self.root / "runs"
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        return tempfile.TemporaryDirectory(prefix="shipit-", dir=runs)

    # recalling

    def recall(self, image_id: str, folder: Path, *, oci: bool) -> ExportedImage | None:
        """What exporting `image_id` made last time, its layers linked into `folder` and checked
        again; None when the image was not kept or what was kept no longer holds."""
        try:
            record_path = self._record_path(image_id)
        except ValueError:
            return None
        try:
            kept = _parse(json.loads(record_path.read_bytes()), image_id)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            remove(record_path)  # unreadable: as if it had never been kept
            return None
        config, id_manifest, entries = kept
        try:
            folder.mkdir(parents=True, exist_ok=True)
            layers = self._link_layers(entries, folder)
        except (OSError, _Mismatch):
            remove(record_path)
            return None
        with contextlib.suppress(OSError):
            os.utime(record_path)  # used now: the last to be dropped
        return ExportedImage(
            image_id=image_id,
            config=config,
            layers=layers,
            manifest=image_manifest(config, layers, oci=oci),
            id_manifest=id_manifest,
        )

    def _link_layers(self, entries: list[Layer], folder: Path) -> tuple[Layer, ...]:
        linked: dict[str, Layer] = {}
        for entry in entries:
            digest = entry.descriptor.digest
            if digest not in linked:
                path = folder / f"layer-{len(linked)}.tar.gz"
                _link_or_copy(self._blob_path(digest), path)
                linked[digest] = Layer(
                    diff_id=entry.diff_id, path=path, descriptor=entry.descriptor
                )
        with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib lets go of the GIL
            for layer, (digest, size) in zip(
                linked.values(), pool.map(hash_file, [x.path for x in linked.values()]),
                strict=True,
            ):  # fmt: skip
                if digest != layer.descriptor.digest or size != layer.descriptor.size:
                    remove(self._blob_path(layer.descriptor.digest))
                    raise _Mismatch
        return tuple(linked[entry.descriptor.digest] for entry in entries)

    # keeping

    def keep(self, image: ExportedImage) -> None:
        """Keep `image`'s layers and record (OSError when the cache cannot be written)."""
        for layer in image.layers:
            target = self._blob_path(layer.descriptor.digest)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _place(layer.path, target)
        record = {
            "format": FORMAT,
            "image_id": image.image_id,
            "config": base64.b64encode(image.config).decode(),
            "id_manifest": (
                base64.b64encode(image.id_manifest).decode() if image.id_manifest else None
            ),
            "layers": [
                {"diff_id": x.diff_id, "digest": x.descriptor.digest, "size": x.descriptor.size}
                for x in image.layers
            ],
        }
        path = self._record_path(image.image_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps(record).encode())
        self.evict()

    # layouts

    def lend(self, key: str, layout: Path) -> Lent:
        """Hard links in `layout/blobs/sha256` to the layers the layout kept under `key` held
        (see the module's docstring), each being hashed again in the background."""
        try:
            record = json.loads(self._layout_path(key).read_bytes())
            layers = [(_sha256(x["digest"]), int(x["size"])) for x in record["layers"]]
        except (OSError, ValueError, KeyError, TypeError):
            layers = []
        return self._lend(layers, layout)

    def _lend(self, layers: Iterable[tuple[str, int]], layout: Path) -> Lent:
        """Hard links in `layout/blobs/sha256` to these kept layers (digest, size), each
        hashed again in the background; one the cache no longer holds is left out."""
        lent = Lent(self)
        folder = layout / "blobs" / "sha256"
        for digest, size in layers:
            target = folder / _hex(digest)
            with contextlib.suppress(OSError):
                folder.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.link(self._blob_path(digest), target)
                    lent.add(digest, size, target)  # hashed: the cache's file, the same inode
        return lent

    def keep_layout(
        self,
        key: str,
        layout: Path,
        layers: Iterable[Descriptor],
        *,
        manifest: Manifest | None = None,
        config: bytes | None = None,
    ) -> None:
        """Keep the layers a build wrote into `layout` (hard links), under `key`; with the
        manifest and config, enough to write the layout again (OSError when it cannot)."""
        kept = {}
        for layer in layers:
            target = self._blob_path(layer.digest)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _place(layout / "blobs" / "sha256" / _hex(layer.digest), target)
            kept[layer.digest] = layer.size
        record: dict[str, Any] = {
            "format": FORMAT,
            "layers": [{"digest": digest, "size": size} for digest, size in kept.items()],
        }
        if manifest is not None and config is not None:
            record["manifest"] = base64.b64encode(manifest.data).decode()
            record["media_type"] = manifest.media_type
            record["config"] = base64.b64encode(config).decode()
        path = self._layout_path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps(record).encode())
        self.evict()

    def recall_layout(self, key: str, layout: Path) -> tuple[Manifest, Lent] | None:
        """The image kept under `key` (an image id) written into `layout`: its config and
        manifest, checked against the id, and its layers lent; None when it was not kept or
        does not hold. The caller asks the Lent whether the layers held."""
        path = self._layout_path(key)
        try:
            record = json.loads(path.read_bytes())
            config = base64.b64decode(record["config"], validate=True)
            manifest = Manifest.from_bytes(
                base64.b64decode(record["manifest"], validate=True), str(record["media_type"])
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            remove(path)
            return None
        blobs = manifest.blobs()
        named = {(x["digest"], int(x["size"])) for x in record["layers"]}
        if (
            not blobs
            or "sha256:" + hashlib.sha256(config).hexdigest() != key
            or blobs[0].digest != key
            or {(x.digest, x.size) for x in blobs[1:]} != named
        ):
            remove(path)
            return None
        try:
            folder = layout / "blobs" / "sha256"
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / _hex(manifest.digest), manifest.data)
            write_atomically(folder / _hex(key), config)
        except OSError:
            return None
        lent = self._lend([(x.digest, x.size) for x in blobs[1:]], layout)  # the record's, checked
        if not all((folder / _hex(x.digest)).is_file() for x in blobs[1:]):
            lent.close()  # a layer the cache no longer holds
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return manifest, lent

    def _layout_path(self, key: str) -> Path:
        return self.root / "layouts" / f"{_hex(key)}.json"

    def evict(self) -> None:
        """Drop the images used least recently while the layers exceed the limit (the newest is
        always kept), then the blobs no record names, and run folders left by killed runs."""
        records = []
        paths = [*(self.root / "images").glob("*.json"), *(self.root / "layouts").glob("*.json")]
        for path in paths:
            try:
                used = path.stat().st_mtime
                layers = json.loads(path.read_bytes())["layers"]
                sizes = {str(x["digest"]): int(x["size"]) for x in layers}
            except (OSError, ValueError, KeyError, TypeError):
                remove(path)
                continue
            records.append((used, path, sizes))
        records.sort(key=lambda item: item[0], reverse=True)
        named: dict[str, int] = {}
        for position, (_, path, sizes) in enumerate(records):
            more = sum(size for digest, size in sizes.items() if digest not in named)
            if position and sum(named.values()) + more > self.limit:
                remove(path)
                continue
            named.update(sizes)
        now = time.time()
        for blob in self._blobs():
            if f"sha256:{blob.name}" not in named and _age(blob, now) > self.grace:
                remove(blob)
        for folder in (self.root / "runs").glob("shipit-*"):
            if _age(folder, now) > STALE_RUN:
                shutil.rmtree(folder, ignore_errors=True)

    def _blobs(self) -> Iterator[Path]:
        folder = self.root / "blobs" / "sha256"
        return (p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else iter(())

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def _record_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{_hex(image_id)}.json"


class Lent:
    """Layers lent to a build from the cache, each hashed again in the background."""

    def __init__(self, cache: ExportCache) -> None:
        self.cache = cache
        self.digests: dict[str, tuple[int, Path, Future[tuple[str, int]]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def add(self, digest: str, size: int, path: Path) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lent")
        source = self.cache._blob_path(digest)  # not `path`, which the build may replace
        self.digests[digest] = (size, path, self._pool.submit(hash_file, source))

    def held(self) -> bool:
        """Whether every lent layer still in the layout as lent (the build did not write it
        again) hashes to its digest; one that does not is dropped from the cache."""
        good = True
        for digest, (size, path, future) in self.digests.items():
            try:
                hashed = future.result()
                lent_still = path.stat().st_ino == self.cache._blob_path(digest).stat().st_ino
            except OSError:
                hashed, lent_still = ("", -1), path.exists()
            if hashed != (digest, size):
                remove(self.cache._blob_path(digest))
                if lent_still:  # the build took it as it was lent: out of the layout too
                    remove(path)
                    good = False
        self.close()
        return good

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Mismatch(Exception):
    """A kept layer no longer hashes to its digest."""


def _parse(record: Any, image_id: str) -> tuple[bytes, bytes | None, list[Layer]]:
    """The config, the daemon's manifest and the layers of a record, checked against the image
    id and the config (ValueError, KeyError or TypeError when they do not hold)."""
    if record["format"] != FORMAT or record["image_id"] != image_id:
        raise ValueError("another image's record")
    config = base64.b64decode(record["config"], validate=True)
    id_manifest = (
        base64.b64decode(record["id_manifest"], validate=True) if record["id_manifest"] else None
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    if config_digest != image_id and not names_config(id_manifest, image_id, config_digest):
        raise ValueError("the config is not the image's")
    layers = [
        Layer(
            diff_id=str(x["diff_id"]),
            path=Path(),
            descriptor=Descriptor(
                media_type=LAYER_MEDIA_TYPE, digest=_sha256(x["digest"]), size=int(x["size"])
            ),
        )
        for x in record["layers"]
    ]
    if [x.diff_id for x in layers] != json.loads(config)["rootfs"]["diff_ids"]:
        raise ValueError("the layers are not the config's")
    return config, id_manifest, layers


def _hex(digest: str) -> str:
    """The hex digits of a sha256 digest (`registry.check_digest`); ValueError for anything else."""
    if not check_digest(digest).startswith("sha256:"):
        raise ValueError(f"not a sha256 digest: {digest[:80]}")
    return digest.removeprefix("sha256:")


def _sha256(value: object) -> str:
    text = str(value)
    _hex(text)
    return text


def hash_file(path: Path) -> tuple[str, int]:
    """The file's digest (`sha256:<hex>`) and the number of bytes read."""
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_READ):
            hasher.update(chunk)
            size += len(chunk)
    return f"sha256:{hasher.hexdigest()}", size


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)


def _place(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` by a hard link (or a copy, renamed into place)."""
    try:
        os.link(source, target)
        return
    except FileExistsError:
        return  # another run kept the same blob meanwhile
    except OSError:
        pass
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` so that no reader ever sees it half-written (a rename into place)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_ctime  # a hard link made now changes the ctime
    except OSError:
        return 0.0


def remove(path: Path) -> None:
    """Remove a file of the cache if it is there (another run may have removed it first)."""
    with contextlib.suppress(OSError):
        path.unlink()
