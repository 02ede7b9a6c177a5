"""Deleting over the distribution API itself: DELETE by digest, and a tag alone where the
registry has a tag DELETE (found out by `capabilities.probe`)."""

from __future__ import annotations

from shipit.lifecycle.capabilities import Capabilities, probe, vendor_hint
from shipit.registry import Registry


class DistributionPath:
    api = "registry"

    def __init__(self, client: Registry) -> None:
        self.client = client

    def check(self, repository: str) -> str | None:
        return vendor_hint(self.client)

    def probe(self, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
        return probe(self.client, repository, registry=registry, tags_too=tags_too)

    def delete_manifest(self, repository: str, digest: str, tags: tuple[str, ...]) -> str | None:
        self.client.delete_manifest(repository, digest)  # False: gone already
        return None

    def delete_tag(self, repository: str, tag: str) -> bool:
        return self.client.delete_tag(repository, tag)

    def close(self) -> None:
        return None
