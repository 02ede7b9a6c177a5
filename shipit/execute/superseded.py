"""The attachment manifests cosign replaces while it signs and attests, deleted once untagged.

On a registry without the referrers API, cosign 3 keeps the attachments of a digest in an
OCI index under the tag `sha256-<hex>` (registry/referrers.py). Each `cosign sign` or
`cosign attest` writes a new index, one entry longer, and moves the tag to it; the index it
replaced stays in the repository with no tag. Nothing lists such a manifest (distribution 2.8
has no API for untagged ones), so `shipit prune` cannot find it, and distribution's garbage
collector, which marks every manifest it holds unless told `--delete-untagged`, keeps what
it lists alive: a pruned image's signature manifest included. The legacy format does the
same with `sha256-<hex>.att` each time a digest is attested again, and with `.sig` when it
is signed again with another key (cosign writes the tag's manifest anew with one more layer;
a second signature by the same key it leaves out). Seen with Debian's cosign 3.1 on
distribution 2.8.

`Watch` asks with HEAD where those tags point before each cosign step and after the last;
each digest a tag left is deleted by digest (`DELETE /v2/<name>/manifests/<digest>`) once no
tag of the repository points at it (distribution 2.8 untags every tag of a digest it
deletes). A registry that does not delete (405 UNSUPPORTED) or does not let these
credentials delete keeps it: nothing is wrong with the image, the manifest is only left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from shipit import log
from shipit.registry import Registry, RegistryError
from shipit.registry.oci import short_digest
from shipit.stages.preflight import Access
from shipit.stages.push import TargetResult

_log = log.get(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True)
class Spot:
    """One attachment tag of one stored digest in one registry."""

    registry: str  # the spec's registry, the key of `access`
    repository: str
    tag: str


def attachment_tags(digest: str, *, legacy: bool) -> tuple[str, ...]:
    """The tags cosign rewrites for `digest`: the referrers tag for bundles, `.sig` and
    `.att` for the legacy format."""
    base = digest.replace(":", "-", 1)
    return (f"{base}.sig", f"{base}.att") if legacy else (base,)


class Watch:
    """Where the attachment tags of every stored digest point, seen step by step; `clean`
    deletes the manifests they left that no tag points at anymore."""

    def __init__(
        self,
        targets: Sequence[TargetResult],
        access: Mapping[str, Access],
        *,
        legacy: bool,
        parallel: int = 4,
    ) -> None:
        self._access = access
        self._parallel = max(1, parallel)
        self._spots = [
            Spot(registry=t.registry, repository=t.repository, tag=tag)
            for t in targets
            for digest in t.stored
            for tag in attachment_tags(digest, legacy=legacy)
        ]
        self._now: dict[Spot, str | None] = {}
        self._left: dict[tuple[str, str], set[str]] = {}
        self._blind: set[str] = set()  # registries that failed a HEAD: no longer asked

    def look(self) -> None:
        """Where every tag points now; a digest a tag moved away from is kept to delete."""
        spots = [s for s in self._spots if s.registry not in self._blind]
        for spot, found in zip(spots, self._map(self._where, spots), strict=True):
            if isinstance(found, RegistryError):
                self._blind.add(spot.registry)
                _log.debug("cannot follow %s in %s: %s", spot.tag, spot.registry, found)
                continue
            before = self._now.get(spot)
            if before is not None and before != found:
                self._left.setdefault((spot.registry, spot.repository), set()).add(before)
            self._now[spot] = found

    def clean(self) -> None:
        """Look once more, then delete each manifest a tag left that no tag points at."""
        self.look()
        for (registry, repository), digests in sorted(self._left.items()):
            self._delete(self._access[registry].client, repository, digests)
        self._left.clear()

    def _where(self, spot: Spot) -> str | RegistryError | None:
        try:
            return self._access[spot.registry].client.manifest_digest(spot.repository, spot.tag)
        except RegistryError as exc:
            return exc

    def _delete(self, client: Registry, repository: str, digests: set[str]) -> None:
        where = f"{client.host}/{repository}"
        try:
            tags = client.tags(repository)
            pointed = set(self._map(lambda t: client.manifest_digest(repository, t), tags))
        except RegistryError as exc:
            _log.info("left %s that cosign replaced in %s: %s", _count(digests), where, exc)
            return
        done: list[str] = []
        for digest in sorted(digests - pointed):
            try:
                if client.delete_manifest(repository, digest):
                    done.append(digest)
            except RegistryError as exc:
                if exc.kind == "unsupported":  # deletes are off: nothing wrong, it stays
                    _log.debug("left %s in %s: %s", _count(digests - pointed), where, exc)
                    break
                _log.info(
                    "left the attachment manifest %s in %s: %s", short_digest(digest), where, exc
                )
        if done:
            _log.info("deleted %s that cosign replaced in %s", _count(done), where)

    def _map(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if not items:
            return []
        workers = min(self._parallel, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attachments") as pool:
            return list(pool.map(work, items))


def _count(digests: Iterable[str]) -> str:
    return log.counted(len(list(digests)), "attachment manifest")
