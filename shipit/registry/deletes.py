"""The calls `shipit prune` needs: where a tag points now, and deleting manifests and tags.

`manifest_digest` asks with HEAD where a tag (or digest) points, so a delete can first check
that nothing moved. `delete_manifest` deletes by digest: the OCI distribution spec's
`DELETE /v2/<name>/manifests/<digest>` (202 Accepted). `delete_tag` is the same request with a
tag, which only some registries implement.

What the CNCF distribution registry 2.8 (Debian's `docker-registry`) answers, read in its
source (tag v2.8.3, registry/handlers/manifests.go `DeleteManifest`, registry/storage/
linkedblobstore.go `Delete`, registry/api/errcode/register.go) and seen on 2.8.2:

- deletes turned off (`storage.delete.enabled: false`, the default): every DELETE of a
  manifest is 405 with the error code UNSUPPORTED;
- a DELETE by digest is 202 and also removes every tag that pointed at the digest (the
  handler looks the tags up and untags them);
- a DELETE by tag is 400 DIGEST_INVALID: the handler always deletes by digest, and a tag
  leaves the digest empty. Distribution 3 untags instead (`tagService.Untag`, 202).
"""

from __future__ import annotations

import requests

from shipit.registry.auth import delete_scope, pull_scope
from shipit.registry.door import Door
from shipit.registry.errors import RegistryError, error_detail, says_rate_limited
from shipit.registry.oci import (
    MANIFEST_MEDIA_TYPES,
    TAG_RE,
    check_digest,
    check_reference,
    compute_digest,
    repo_ref,
    short_digest,
)


class DeleteApi(Door):
    """Where a reference points, and deleting manifests (by digest) and tags."""

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest `repository:reference` points at now; None when there is none (404)."""
        repo = self.endpoint.repository(repository)
        check_reference(reference)
        what = f"manifest {repo_ref(repo, reference)}"
        for method in ("HEAD", "GET"):  # GET: a registry that leaves the header out of HEAD
            response = self._request(
                method,
                f"/v2/{repo}/manifests/{reference}",
                scope=(pull_scope(repo),),
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                what=what,
            )
            with response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise self._error_for(response, what)
                reported = response.headers.get("Docker-Content-Digest")
                if reported:
                    return check_digest(reported)
                if method == "GET":
                    return compute_digest(response.content)
        raise AssertionError("unreachable")  # pragma: no cover

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete the manifest `digest`; False when the registry did not have it (404).

        A registry that does not delete at all raises a RegistryError of kind "unsupported".
        """
        repo = self.endpoint.repository(repository)
        check_digest(digest)
        what = f"deleting manifest {short_digest(digest)} from {repo}"
        return self._delete(f"/v2/{repo}/manifests/{digest}", repo, what)

    def delete_tag(self, repository: str, tag: str) -> bool:
        """`DELETE /v2/<name>/manifests/<tag>`; False when the tag was not there (404).

        Registries that only delete by digest refuse it (distribution 2.8: 400 DIGEST_INVALID;
        405 where deletes are off); that is a RegistryError with the status.
        """
        repo = self.endpoint.repository(repository)
        if not TAG_RE.fullmatch(tag):
            raise ValueError(f"{tag!r} is not a valid tag")
        return self._delete(f"/v2/{repo}/manifests/{tag}", repo, f"deleting tag {repo}:{tag}")

    def _delete(self, path: str, repo: str, what: str) -> bool:
        response = self._request("DELETE", path, scope=(delete_scope(repo),), what=what)
        with response:
            if response.status_code in (200, 202, 204):
                return True
            if response.status_code == 404:
                return False
            raise self._delete_error(response, what)

    def _delete_error(self, response: requests.Response, what: str) -> RegistryError:
        detail = error_detail(response)
        status = response.status_code
        if status == 405 or (status == 400 and "UNSUPPORTED" in detail):
            return RegistryError(
                f"{self.host} does not delete manifests ({status}{detail}): {what} is refused",
                host=self.host,
                kind="unsupported",
                status=status,
            )
        if status == 403 and not says_rate_limited(status, detail):
            # Docker Hub deletes a manifest over the registry API only while no tag points at
            # it (docker/docs PR #24078, docker/hub-feedback#2360): 403 otherwise
            who = repr(self.endpoint.credentials.username) if self.endpoint.credentials else None
            return RegistryError(
                f"{self.host} refused {what} to {who or 'an anonymous client'} ({status}{detail}):"
                " the credentials may not delete here, or the registry deletes only manifests no"
                " tag points at (Docker Hub): remove the tags with the registry's own API first",
                host=self.host,
                kind="denied",
                status=status,
            )
        return self._error_for(response, what)
