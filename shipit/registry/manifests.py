"""The manifest and tag calls of the `Registry` client: get, HEAD, put and list.

Manifests are read and written as bytes, never re-serialised: a read is checked against the
digest the registry reports and the digest it was asked for, and a write fails if the
registry reports a digest other than that of the bytes sent (a registry that rewrites
manifests would break every signature). Tags are listed page by page, following the `Link` header.

Writes are idempotent: a tag that already points at the manifest is not written again (a HEAD
first), since immutable repositories refuse even a PUT of the same digest (Amazon ECR:
aws/containers-roadmap#862; Harbor's immutability rules). A manifest over `MAX_MANIFEST_BYTES`
is refused before it is sent (`check_manifest_size`): registries need not take more
(opencontainers/distribution-spec#293).
"""

from __future__ import annotations

from typing import Final

import requests

from shipit.registry.auth import pull_scope, push_scope
from shipit.registry.door import Door, join_location
from shipit.registry.errors import RegistryError
from shipit.registry.oci import (
    DIGEST_RE,
    MANIFEST_MEDIA_TYPES,
    Manifest,
    check_reference,
    compute_digest,
    repo_ref,
)

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024  # what the distribution registry accepts
MAX_TAG_PAGES: Final = 1000


class ManifestApi(Door):
    """Reading, checking and writing manifests and tags."""

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest of `repository:reference` exactly as stored, its digest checked."""
        repo = self.endpoint.repository(repository)
        check_reference(reference)
        what = f"manifest {repo_ref(repo, reference)}"
        response = self._request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scope=(pull_scope(repo),),
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            stream=True,
            what=what,
        )
        with response:
            if response.status_code != 200:
                raise self._error_for(response, what)
            data = self._read_limited(response, MAX_MANIFEST_BYTES, what)
            header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            reported = response.headers.get("Docker-Content-Digest")
        return self._manifest_from(data, header_type, reference, reported, what)

    def has_manifest(self, repository: str, reference: str) -> bool:
        """Whether `repository` holds a manifest under `reference` (a tag or a digest)."""
        repo = self.endpoint.repository(repository)
        what = f"manifest {repo_ref(repo, check_reference(reference))}"
        return self._exists(
            f"/v2/{repo}/manifests/{reference}",
            repo,
            what,
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        )

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """Store `manifest`'s bytes under `reference`; returns the digest the registry reports."""
        repo = self.endpoint.repository(repository)
        check_reference(reference)
        if DIGEST_RE.fullmatch(reference) and reference != manifest.digest:
            raise ValueError(f"cannot store manifest {manifest.digest} under digest {reference}")
        what = f"the manifest {repo_ref(repo, reference)}"
        check_manifest_size(manifest, host=self.host, what=what)
        current = None
        if not DIGEST_RE.fullmatch(reference):
            current = self._points_at(repo, reference, f"where {what} points")
            if current == manifest.digest:
                return manifest.digest  # already there: not written again (immutable tags)
        response = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scope=(push_scope(repo),),
            headers={"Content-Type": manifest.media_type},
            data=manifest.data,
            what=f"writing {what}",
        )
        with response:
            if response.status_code not in (200, 201):
                error = self._error_for(response, f"writing {what}")
                if current is not None and error.kind == "denied" and "immutable" in error.message:
                    error = RegistryError(
                        f"{error.message}; the tag points at {current}",
                        host=self.host,
                        kind=error.kind,
                        status=error.status,
                    )
                raise error
            reported = response.headers.get("Docker-Content-Digest")
        if reported is not None and reported != manifest.digest:
            raise RegistryError(
                f"{self.host} stored {what} as {reported}, but its bytes are {manifest.digest}: "
                f"the registry rewrote the manifest (does it support {manifest.media_type}?)",
                host=self.host,
                kind="protocol",
            )
        return reported or manifest.digest

    def _points_at(self, repo: str, tag: str, what: str) -> str | None:
        """The digest `repo:tag` points at now (HEAD), None if there is no such tag."""
        response = self._request(
            "HEAD",
            f"/v2/{repo}/manifests/{tag}",
            scope=(pull_scope(repo),),
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            what=what,
        )
        with response:
            reported = response.headers.get("Docker-Content-Digest", "")
        # 404, any other answer or no digest in it: unknown, so the PUT goes ahead and its own
        # answer says what is wrong, if anything
        ok = response.status_code == 200 and DIGEST_RE.fullmatch(reported)
        return reported if ok else None

    def tags(self, repository: str) -> list[str]:
        """The tags of `repository`, every page of them; [] if the repository does not exist."""
        repo = self.endpoint.repository(repository)
        what = f"the tags of {repo}"
        target = f"/v2/{repo}/tags/list"
        tags: list[str] = []
        for _ in range(MAX_TAG_PAGES):
            response = self._request("GET", target, scope=(pull_scope(repo),), what=what)
            with response:
                if response.status_code == 404 and not tags:
                    return []
                if response.status_code != 200:
                    raise self._error_for(response, what)
                try:
                    page = response.json().get("tags") or []
                except (ValueError, AttributeError) as exc:
                    raise self._protocol(f"{what} are not a JSON tag list") from exc
                tags.extend(str(t) for t in page)
                following = response.links.get("next", {}).get("url")
                if not following:
                    return tags
                target = join_location(response.url, following)
        raise self._protocol(f"{what} go on for more than {MAX_TAG_PAGES} pages")

    def _manifest_from(
        self, data: bytes, header_type: str, reference: str, reported: str | None, what: str
    ) -> Manifest:
        media_type = header_type if header_type in MANIFEST_MEDIA_TYPES else None
        try:
            manifest = Manifest.from_bytes(data, media_type)
        except ValueError as exc:
            raise self._protocol(f"{self.host} sent an unusable {what}: {exc}") from exc
        if manifest.media_type not in MANIFEST_MEDIA_TYPES:
            raise self._protocol(
                f"{what} on {self.host} is a {manifest.media_type}, which shipit cannot copy "
                "(it copies Docker schema 2 and OCI manifests and indexes)"
            )
        expected = [d for d in (reported, reference) if d and DIGEST_RE.fullmatch(d)]
        for digest in expected:
            algorithm = digest.split(":", 1)[0]
            if compute_digest(data, algorithm) != digest:
                raise self._protocol(
                    f"{what} on {self.host} does not match its digest {digest} "
                    f"(its bytes are {manifest.digest})"
                )
        return manifest

    def _read_limited(self, response: requests.Response, limit: int, what: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise self._protocol(f"{what} on {self.host} is larger than {limit} bytes")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise self._transport_error(exc)[0] from exc
        return b"".join(chunks)


def check_manifest_size(manifest: Manifest, *, host: str, what: str = "the manifest") -> None:
    """Refuse a manifest registries need not take (over 4 MiB: opencontainers/distribution-spec
    #293; regclient refuses to push one too), before anything is sent. A preflight may call it
    on a plan's manifests as soon as they are known."""
    size = len(manifest.data)
    if size > MAX_MANIFEST_BYTES:
        raise RegistryError(
            f"{what} for {host} has {size} bytes, more than the {MAX_MANIFEST_BYTES} bytes (4 MiB) "
            "registries must take: publish fewer platforms or layers in one manifest, or "
            "smaller annotations",
            host=host,
            kind="unsupported",
        )
