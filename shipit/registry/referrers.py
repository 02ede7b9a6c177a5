"""The OCI referrers API: the manifests whose `subject` is a digest (signatures, SBOMs...).

`GET /v2/<name>/referrers/<digest>` answers an OCI index of descriptors, one per manifest
that names the digest as its `subject` (OCI distribution spec 1.1, "Listing Referrers"). A
registry that has the API must not answer 404 there; one without it does (distribution 2.8
has no such route: 404 with a plain-text body). Clients then fall back to the "referrers tag"
`sha256-<hex>`, an index listing the same descriptors, which cosign 3 writes on such
registries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from shipit.registry.auth import pull_scope
from shipit.registry.door import Door, join_location
from shipit.registry.oci import DIGEST_RE, OCI_INDEX, check_digest, short_digest

MAX_REFERRER_PAGES: Final = 100
MAX_REFERRERS_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Referrer:
    """One manifest that refers to a subject: its digest, media type and artifact type."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None = None


def parse_referrers(data: bytes) -> tuple[Referrer, ...]:
    """The descriptors of a referrers index (the API's answer, or a `sha256-<hex>` tag's)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the referrers index is not JSON: {exc}") from exc
    items = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ValueError("the referrers index has no list of manifests")
    found: list[Referrer] = []
    for item in items:
        digest = item.get("digest") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"a referrer has a bad digest: {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"the referrer {digest} has a bad size: {size!r}")
        kind = item.get("artifactType")
        found.append(
            Referrer(
                digest=digest,
                media_type=str(item.get("mediaType", "")),
                size=size,
                artifact_type=kind if isinstance(kind, str) else None,
            )
        )
    return tuple(found)


class ReferrersApi(Door):
    """The referrers of a digest, where the registry has the API."""

    def referrers(self, repository: str, digest: str) -> tuple[Referrer, ...] | None:
        """Every manifest whose subject is `digest`, every page; None without the API (404)."""
        repo = self.endpoint.repository(repository)
        check_digest(digest)
        what = f"the referrers of {short_digest(digest)} in {repo}"
        target = f"/v2/{repo}/referrers/{digest}"
        found: list[Referrer] = []
        for _ in range(MAX_REFERRER_PAGES):
            response = self._request(
                "GET", target, scope=(pull_scope(repo),), headers={"Accept": OCI_INDEX}, what=what
            )
            with response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise self._error_for(response, what)
                if len(response.content) > MAX_REFERRERS_BYTES:
                    raise self._protocol(f"{what} on {self.host} are larger than 4 MiB")
                try:
                    found.extend(parse_referrers(response.content))
                except ValueError as exc:
                    raise self._protocol(f"{self.host} sent unusable {what}: {exc}") from exc
                following = response.links.get("next", {}).get("url")
                if not following:
                    return tuple(found)
                target = join_location(response.url, following)
        raise self._protocol(f"{what} go on for more than {MAX_REFERRER_PAGES} pages")
