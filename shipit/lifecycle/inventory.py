"""What one repository holds, read over the registry API: `read_holdings`.

The API lists tags, not manifests, so everything is found from the tags: each tag's
manifest; an index's platform manifests; the image behind each artifact tag
(`sha256-<hex>.sig`, `.att`, `.sbom`, and the referrers index `sha256-<hex>`), which may be
untagged by now or gone; and, on registries that have the OCI referrers API, the referrers
of every image. A manifest that nothing tagged leads to is invisible to the API (the
registry's own garbage collection is the tool for those).

An image's creation time is the `org.opencontainers.image.created` label of its config
(shipit sets it to the commit time), else the config's `created`; an index's is its newest
platform's. Reads run in parallel, `parallel` at a time, with the client's retries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, TypeVar

from shipit.lifecycle.records import Holdings, Node, parse_time, tag_subject
from shipit.registry import Manifest, Registry, RegistryError

T = TypeVar("T")
R = TypeVar("R")

IMAGE_CONFIGS: Final = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
CREATED_LABEL: Final = "org.opencontainers.image.created"
MAX_CONFIG: Final = 4 * 1024 * 1024


class _Walk:
    """The manifests read so far, and the pool that reads more."""

    def __init__(self, client: Registry, repository: str, pool: ThreadPoolExecutor) -> None:
        self.client = client
        self.repository = repository
        self.pool = pool
        self.manifests: dict[str, Manifest] = {}
        self.missing: set[str] = set()

    def each(self, items: Iterable[T], work: Callable[[T], R]) -> list[R]:
        return list(self.pool.map(work, list(items)))

    def read(self, reference: str) -> Manifest | None:
        try:
            return self.client.manifest(self.repository, reference)
        except RegistryError as error:
            if error.kind == "not_found":
                return None  # deleted since the tag list was read, or an image that is gone
            raise

    def resolve_tags(self, tags: list[str]) -> dict[str, str]:
        """tag -> digest, every manifest kept; tags gone since the listing are left out."""
        found: dict[str, str] = {}
        for tag, manifest in zip(tags, self.each(tags, self.read), strict=True):
            if manifest is not None:
                found[tag] = manifest.digest
                self.manifests.setdefault(manifest.digest, manifest)
        return found

    def follow(self, digests: Iterable[str]) -> None:
        """Read the platform manifests of every index, level by level."""
        todo = set(digests)
        while todo:
            children = {c.digest for d in todo for c in self.manifests[d].children()}
            wanted = sorted(children - self.manifests.keys() - self.missing)
            for digest, manifest in zip(wanted, self.each(wanted, self.read), strict=True):
                if manifest is None:
                    self.missing.add(digest)
                else:
                    self.manifests[digest] = manifest
            todo = {d for d in wanted if d in self.manifests}

    def add(self, digests: Iterable[str]) -> set[str]:
        """Read manifests by digest; the ones that are gone go to `missing`."""
        wanted = sorted(set(digests) - self.manifests.keys() - self.missing)
        for digest, manifest in zip(wanted, self.each(wanted, self.read), strict=True):
            if manifest is None:
                self.missing.add(digest)
            else:
                self.manifests[digest] = manifest
        found = {d for d in wanted if d in self.manifests}
        self.follow(found)
        return found


def read_holdings(
    client: Registry, *, registry: str, repository: str, parallel: int = 4
) -> Holdings:
    """Everything `repository` holds that its tags lead to (see the module docstring)."""
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="inventory") as pool:
        walk = _Walk(client, repository, pool)
        tags = walk.resolve_tags(client.tags(repository))
        walk.follow(set(tags.values()))
        attached: dict[str, set[str]] = {}
        subjects = {}
        for tag, digest in tags.items():
            found = tag_subject(tag)
            if found is not None:
                subjects[digest] = found[0]
                attached.setdefault(found[0], set()).add(digest)
        walk.add(subjects.values())
        missing = {s for s in subjects.values() if s not in walk.manifests}
        referrers_api = _referrers(walk, attached, set(subjects))
        for digest, manifest in walk.manifests.items():
            subject = _document(manifest).get("subject")
            if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                attached.setdefault(subject["digest"], set()).add(digest)
        nodes = _nodes(walk, artifacts=_artifacts(walk, attached))
    return Holdings(
        registry=registry,
        host=client.host,
        repository=repository,
        tags=tags,
        nodes=nodes,
        attached={s: tuple(sorted(a)) for s, a in attached.items()},
        missing=frozenset(missing),
        referrers_api=referrers_api,
    )


def _referrers(walk: _Walk, attached: dict[str, set[str]], artifacts: set[str]) -> bool:
    """Ask the referrers API of every image (if the registry has one); whether it has one."""
    images = sorted(d for d in walk.manifests if d not in artifacts)
    if not images:
        return False
    first = walk.client.referrers(walk.repository, images[0])
    if first is None:
        return False
    answers = [first, *walk.each(images[1:], lambda d: walk.client.referrers(walk.repository, d))]
    for digest, referrers in zip(images, answers, strict=True):
        for referrer in referrers or ():
            attached.setdefault(digest, set()).add(referrer.digest)
    walk.add(r for found in attached.values() for r in found)
    return True


def _artifacts(walk: _Walk, attached: dict[str, set[str]]) -> set[str]:
    """Every manifest that belongs to another one (and their children): no config to read."""
    todo = [a for found in attached.values() for a in found]
    seen: set[str] = set()
    while todo:
        digest = todo.pop()
        if digest in seen or digest not in walk.manifests:
            continue
        seen.add(digest)
        todo.extend(c.digest for c in walk.manifests[digest].children())
    return seen


def _nodes(walk: _Walk, *, artifacts: set[str]) -> dict[str, Node]:
    images = sorted(d for d, m in walk.manifests.items() if d not in artifacts and not m.is_index)
    created = dict(zip(images, walk.each(images, lambda d: _created(walk, d)), strict=True))
    nodes: dict[str, Node] = {}
    for digest, manifest in walk.manifests.items():
        document = _document(manifest)
        children = tuple(c.digest for c in manifest.children())
        when = created.get(digest)
        if manifest.is_index and digest not in artifacts:
            times = [t for c in children if (t := created.get(c)) is not None]
            when = max(times) if times else None
        subject = document.get("subject")
        nodes[digest] = Node(
            digest=digest,
            media_type=manifest.media_type,
            children=children,
            created=when,
            subject=subject.get("digest") if isinstance(subject, dict) else None,
        )
    return nodes


def _created(walk: _Walk, digest: str) -> datetime | None:
    """The image's creation time from its config (the label first), or None."""
    config = next(iter(walk.manifests[digest].blobs()), None)
    if config is None or config.media_type not in IMAGE_CONFIGS:
        return None
    try:
        data = walk.client.read_blob(walk.repository, config.digest, limit=MAX_CONFIG)
        document = json.loads(data)
    except (RegistryError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    labels = (document.get("config") or {}).get("Labels") or {}
    label = labels.get(CREATED_LABEL) if isinstance(labels, dict) else None
    return parse_time(label) or parse_time(document.get("created"))


def _document(manifest: Manifest) -> dict[str, Any]:
    try:
        document = json.loads(manifest.data)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
