"""The SDK engine's build memo: a build whose every input is as it was is not sent again.

The classic builder cannot send only what changed: every build sends the context (the
entries the Dockerfile's COPY and ADD name, `docker_api.BuildRequest.context_names`: 153 MB in
the benchmark, 2.4 s of a 6 s run when it was sent whole) and the daemon unpacks and hashes
all of it, only to answer every step from its cache. Its cache is keyed by the parent image and
the step: the command's text, and for COPY/ADD the files' paths, types, modes, owners, sizes
and contents (not their times). So when the build's inputs are all as they were when the
daemon built image X, and X and the image of every step that led to it are still in the
daemon, the builder would walk its cache to X again. The memo then takes X without sending
anything. The inputs:

- the context as the archive would hold it (docker-py's `.dockerignore` rules, and only what
  the Dockerfile's COPY and ADD name when the request says so): every path's type, mode,
  owner, size, device, link target and content, in order (a build that ran a base image's
  ONBUILD triggers, and so was sent the whole context, is not recorded);
- the Dockerfile (also when it lies outside the context), the build args, labels, target,
  platform and network, and the daemon;
- the image id of every image the Dockerfile starts from (`FROM`, `COPY --from`), as the
  daemon resolves its name now.

It is not used (the build is sent as always) with `no_cache`, with `pull` (the base may have
moved in its registry), with `cache_from`, or when the Dockerfile ADDs a URL (the builder
fetches it again every time). The records are small files in shipit's cache folder
(`builds/`, see `stages.export_cache`): the image id, the steps' ids, the bases' ids.

On Podman (buildah builds) a step's image shows as `--> <11 hex>` rather than ` ---> <12 hex>`;
both are read, and a step is held when an image id starts with it.

The buildah engine keeps its records here too (buildah.py has its inputs and why), keyed with
the same helpers (`inputs_digest`, `folder_digest`); its store is buildah's storage. A store
is asked whether it still holds a record's image and steps (`HeldImages.holds`): buildah's
lists its images (`held_in`); a daemon walks the histories of the image and of its other
stages' last steps, and lists its images only when those do not settle it (`Daemon.holds`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, Protocol

from shipit.ahead import ahead
from shipit.docker_api import BuildRequest, Daemon, DaemonError, context_paths, links_within
from shipit.stages.export_cache import hash_file, remove, write_atomically

FOLDER: Final = "builds"  # the memo's folder in shipit's cache
_KEEP: Final = 200  # records; the ones used least recently go first
_SETTLED_NS: Final = 2_000_000_000  # a file changed this recently is hashed every time
_STEP_ID: Final = re.compile(r"^(?: ---> ([0-9a-f]{12})|--> ([0-9a-f]{11}))$")  # Docker, Podman
_ADD_URL: Final = re.compile(r"^\s*ADD\s+(--\S+\s+)*(https?|git)(://|@)", re.IGNORECASE | re.M)


class HeldUnknown(Exception):
    """The store could not say which images it holds (the memo then does not answer)."""


class HeldImages(Protocol):
    """What the memo asks of an image store (a Docker daemon, buildah's storage): whether it
    holds `image_id` and an image for every one of `steps` (ids, or the first hex digits of
    ids, as the build printed them); DaemonError or HeldUnknown when it cannot tell."""

    def holds(self, image_id: str, steps: Sequence[str]) -> bool: ...


class BuildMemo:
    """Records of builds (the SDK engine's, buildah's) in `root`, one per set of inputs (see
    the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def key(self, request: BuildRequest, dockerfile_text: str, host: str) -> str | None:
        """The inputs' digest, or None when the memo is not to be used for this build."""
        if request.no_cache or request.pull or request.cache_from:
            return None
        if fetches_url(dockerfile_text):
            return None
        hashes = self.file_hashes(request.context)
        try:
            paths, outside = context_paths(
                request.context, request.dockerfile, request.context_names
            )
            files = _context_digest(request.context, paths, hashes)
        except (OSError, ValueError):
            return None  # the build will say what is wrong with the context
        hashes.save()
        inputs = {
            "host": host,
            "files": files,
            "dockerfile": request.dockerfile,
            "outside": outside,
            "target": request.target,
            "platform": request.platform,
            "args": sorted((request.build_args or {}).items()),
            "labels": sorted((request.labels or {}).items()),
            "network": request.network,
        }
        if request.buildkit:  # another builder: another image from the same inputs
            inputs["builder"] = "buildkit"
        return inputs_digest(inputs)

    def holds_any(self) -> bool:
        """Whether any build is recorded. On a fresh runner none is: no key can find a record,
        so a build need not wait for its key (the hashing of its context) before it starts."""
        try:
            with os.scandir(self.root) as entries:
                return any(entry.name.endswith(".json") for entry in entries)
        except OSError:
            return False

    def file_hashes(self, context: Path) -> FileHashes:
        """What is remembered of the files of `context` (one record per context folder)."""
        name = hashlib.sha256(str(Path(context).resolve()).encode()).hexdigest()[:32]
        return FileHashes(self.root / "files" / f"{name}.json")

    def recall(
        self, key: str, daemon: Daemon, bases: Callable[[], Mapping[str, str | None]]
    ) -> str | None:
        """The image a build with these inputs gave, if the daemon would give it again."""
        return self.recall_from(key, daemon, bases)

    def recall_from(
        self, key: str, store: HeldImages, bases: Callable[[], Mapping[str, str | None]]
    ) -> str | None:
        """The image a build with these inputs gave, if the builder of `store` (a daemon,
        buildah's storage) would give it again."""
        path = self._path(key)
        try:
            record = json.loads(path.read_bytes())
            image_id, steps, kept_bases = _parse(record)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            remove(path)
            return None
        try:
            held = store.holds(image_id, steps)
        except (DaemonError, HeldUnknown):
            return None
        if not held:
            remove(path)  # pruned: the builder would not walk the same steps
            return None
        if dict(bases()) != kept_bases:
            return None  # a base moved: the build must run (the record may hold again later)
        with contextlib.suppress(OSError):
            os.utime(path)
        return image_id

    def keep(
        self, key: str, image_id: str, steps: Sequence[str], bases: Mapping[str, str | None]
    ) -> None:
        """Record a build's outcome (never fails a build: a cache that cannot be written is
        skipped)."""
        record = {"image_id": image_id, "steps": list(steps), "bases": dict(bases)}
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(path, json.dumps(record).encode())
            self._trim()
        except OSError:
            return

    def _trim(self) -> None:
        records = sorted(self.root.glob("*.json"), key=_mtime, reverse=True)
        for old in records[_KEEP:]:
            remove(old)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"


def key_now_or_later(
    memo: BuildMemo | None, compute: Callable[[], str | None]
) -> tuple[str | None, Future[str | None] | None]:
    """A build's memo key now, when a record could answer it; else (nothing recorded, a
    fresh runner: `BuildMemo.holds_any`) None now and the key worked out beside the build, in
    a thread of its own, for the record (the build need not wait for the context's hashing)."""
    if memo is not None and not memo.holds_any():
        return None, ahead(compute, "shipit-memo-key")
    return compute(), None


def step_ids(on_line: Callable[[str], None]) -> tuple[Callable[[str], None], list[str]]:
    """A build-log reader that also collects the id of every step's image (` ---> 1a2b…`)."""
    found: list[str] = []

    def read(line: str) -> None:
        if match := _STEP_ID.match(line):
            found.append(match.group(1) or match.group(2))
        on_line(line)

    return read, found


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """A memo key: the digest of a build's inputs (JSON values), whatever their order."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def fetches_url(dockerfile_text: str) -> bool:
    """Whether the Dockerfile ADDs a URL or a git repository: the builder fetches it again
    on every build, so no memo can stand for it."""
    return _ADD_URL.search(dockerfile_text) is not None


def folder_digest(
    folder: Path,
    skipped: Collection[str] = (),
    hashes: FileHashes | None = None,
    names: frozenset[str] | None = None,
) -> str:
    """Every path under `folder` (links not followed) as `_context_digest` hashes them, but
    the paths `skipped` (relative, with `/`) and all below them, and with `names` only those
    under these top-level names (all of them when a link there leads elsewhere,
    `docker_api.links_within`); OSError or ValueError when it cannot be read whole."""
    paths = []
    for top, dirs, files in os.walk(folder, onerror=_raise):
        relative = Path(top).relative_to(folder)
        kept = files
        if names is not None and relative == Path("."):
            dirs[:] = [name for name in dirs if name in names]
            kept = [name for name in files if name in names]
        dirs[:] = [name for name in dirs if (relative / name).as_posix() not in skipped]
        paths += [(relative / name).as_posix() for name in (*dirs, *kept)]
    if names is not None and not links_within(str(folder), paths, names):
        return folder_digest(folder, skipped, hashes)
    return _context_digest(folder, sorted(p for p in paths if p not in skipped), hashes)


def _raise(error: OSError) -> None:
    raise error


def _context_digest(context: Path, paths: Sequence[str], hashes: FileHashes | None = None) -> str:
    """Every path's type, mode, owner, size, device, link target and content digest, in
    order; a file's content digest from `hashes` when its status says it is unchanged."""
    hasher = hashlib.sha256()
    for relative in paths:
        path = context / relative
        info = os.lstat(path)
        link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        header = [relative, info.st_mode, info.st_uid, info.st_gid, info.st_rdev, link]
        if stat.S_ISREG(info.st_mode):
            header.append(info.st_size)
            header.append((hashes or FileHashes(None)).digest(path, info))
        hasher.update(json.dumps(header).encode() + b"\0")
    return hasher.hexdigest()


class FileHashes:
    """The content digests of a context's files, remembered between runs by what each file's
    status says of it, as git's index does for its work tree: a file whose device, inode,
    size, modification and change times are all as when it was hashed is not read again.

    The change time (ctime) is set by the kernel on every write and every change of status,
    and no call sets it back (utimes(2) sets the modification time, and moves ctime on), so a
    file written since it was hashed cannot show the same status. A file changed less than
    `_SETTLED_NS` before it was hashed is not remembered (a write in the same clock tick right
    after the hash could leave every time as it was: git's "racy" files). A warm SDK build of
    the benchmark's context (153 MB, 305 MB with its .git) went from 0.35 s to 0.10 s, most
    of it the hashing. `path` None: nothing is remembered."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: dict[str, list[Any]] | None = None
        self._seen: dict[str, list[Any]] = {}

    def digest(self, path: Path, info: os.stat_result) -> str:
        """The sha256 of the file at `path`, whose `lstat` is `info`; ValueError when it
        changes while it is read."""
        key = str(path)
        status = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
        known = self._load().get(key)
        if known is not None and known[:5] == status and isinstance(known[5], str):
            self._seen[key] = known
            return known[5]
        digest, size = hash_file(path)
        after = os.lstat(path)
        if size != info.st_size or after.st_ctime_ns != info.st_ctime_ns:
            raise ValueError(f"{path} changed while it was read")
        digest = digest.removeprefix("sha256:")
        if time.time_ns() - info.st_ctime_ns > _SETTLED_NS:
            self._seen[key] = [*status, digest]
        return digest

    def _load(self) -> dict[str, list[Any]]:
        if self._known is None:
            self._known = {}
            if self.path is not None:
                with contextlib.suppress(OSError, ValueError):
                    loaded = json.loads(self.path.read_bytes())
                    if isinstance(loaded, dict):
                        self._known = {
                            k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 6
                        }
        return self._known

    def save(self) -> None:
        """Remember the files hashed or found this run, and only those (never fails)."""
        if self.path is None or self._seen == self._known:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(self.path, json.dumps(self._seen).encode())


def _parse(record: Any) -> tuple[str, list[str], dict[str, str | None]]:
    image_id = record["image_id"]
    steps = record["steps"]
    bases = record["bases"]
    if not (isinstance(image_id, str) and image_id.startswith("sha256:")):
        raise ValueError("no image id")
    if not (isinstance(steps, list) and all(isinstance(x, str) for x in steps)):
        raise ValueError("no steps")
    if not isinstance(bases, dict):
        raise ValueError("no bases")
    return image_id, steps, {str(k): (None if v is None else str(v)) for k, v in bases.items()}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
