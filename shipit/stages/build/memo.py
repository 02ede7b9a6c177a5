"""The SDK engine's build memo: a build whose every input is as it was is not sent again.

The classic builder cannot send only what changed: every build sends the whole context (153 MB
in the benchmark: 2.4 s of a 6 s run) and the daemon unpacks and hashes all of it, only to
answer every step from its cache. Its cache is keyed by the parent image and the step: the
command's text, and for COPY/ADD the files' paths, types, modes, owners, sizes and contents
(not their times). So when the build's inputs are all as they were when the daemon built image
X, and X and the image of every step that led to it are still in the daemon, the builder
would walk its cache to X again. The memo then takes X without sending anything. The inputs:

- the context as the archive would hold it (docker-py's `.dockerignore` rules): every path's
  type, mode, owner, size, device, link target and content, in order;
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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from shipit.docker_api import BuildRequest, Daemon, DaemonError, context_paths
from shipit.stages.export_cache import remove, write_atomically

_KEEP: Final = 200  # records; the ones used least recently go first
_READ: Final = 1 << 20
_STEP_ID: Final = re.compile(r"^(?: ---> ([0-9a-f]{12})|--> ([0-9a-f]{11}))$")  # Docker, Podman
_ADD_URL: Final = re.compile(r"^\s*ADD\s+(--\S+\s+)*(https?|git)(://|@)", re.IGNORECASE | re.M)


class BuildMemo:
    """Records of SDK builds in `root`, one per set of inputs (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def key(self, request: BuildRequest, dockerfile_text: str, host: str) -> str | None:
        """The inputs' digest, or None when the memo is not to be used for this build."""
        if request.no_cache or request.pull or request.cache_from:
            return None
        if _ADD_URL.search(dockerfile_text):
            return None
        try:
            paths, outside = context_paths(request.context, request.dockerfile)
            files = _context_digest(request.context, paths)
        except (OSError, ValueError):
            return None  # the build will say what is wrong with the context
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
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def recall(
        self, key: str, daemon: Daemon, bases: Callable[[], Mapping[str, str | None]]
    ) -> str | None:
        """The image a build with these inputs gave, if the daemon would give it again."""
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
            held = daemon.image_ids()
        except DaemonError:
            return None
        short = {x.removeprefix("sha256:")[:n] for x in held for n in {len(s) for s in steps}}
        if image_id not in held or not all(step in short for step in steps):
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


def step_ids(on_line: Callable[[str], None]) -> tuple[Callable[[str], None], list[str]]:
    """A build-log reader that also collects the id of every step's image (` ---> 1a2b…`)."""
    found: list[str] = []

    def read(line: str) -> None:
        if match := _STEP_ID.match(line):
            found.append(match.group(1) or match.group(2))
        on_line(line)

    return read, found


def _context_digest(context: Path, paths: Sequence[str]) -> str:
    """Every path's type, mode, owner, size, device, link target and content, in order."""
    hasher = hashlib.sha256()
    for relative in paths:
        path = context / relative
        info = os.lstat(path)
        link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        header = [relative, info.st_mode, info.st_uid, info.st_gid, info.st_rdev, link]
        if stat.S_ISREG(info.st_mode):
            header.append(info.st_size)
        hasher.update(json.dumps(header).encode() + b"\0")
        if stat.S_ISREG(info.st_mode):
            size = 0
            with path.open("rb") as file:
                while chunk := file.read(_READ):
                    hasher.update(chunk)
                    size += len(chunk)
            if size != info.st_size:
                raise ValueError(f"{relative} changed while it was read")
    return hasher.hexdigest()


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
