"""Deleting on GHCR through GitHub's Packages REST API (version 2022-11-28).

What GitHub documents (docs.github.com/rest/packages/packages):
- a container image `ghcr.io/OWNER/PACKAGE` is package PACKAGE (the rest of the repository
  path, URL-encoded: `shop%2Fweb`) of OWNER, an organisation (`/orgs/{org}/packages/...`) or
  a user (`/users/{username}/packages/...`); shipit tries the organisation first, then the
  user, and keeps what answered;
- `GET .../packages/container/{package_name}/versions?per_page=100&state=active` lists the
  versions, paginated with a `Link` header; a version is one manifest: `id`, `name` (the
  digest) and `metadata.container.tags`; GHCR lists every manifest it holds as a version,
  the platform manifests of an index and signatures included (hence the cleanup tools'
  "ghost images");
- `DELETE .../versions/{package_version_id}` answers 204 and removes the manifest with all
  its tags. Reading needs `read:packages`, deleting `delete:packages` too (a personal access
  token, classic; its scopes come back in the `X-OAuth-Scopes` header) or, for a workflow's
  `GITHUB_TOKEN`, `permissions: packages: write` on a package whose "Manage Actions access"
  gives the repository the Admin role;
- headers `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`,
  `Authorization: Bearer TOKEN`.

A GHCR version is a digest with all its tags, so there is no tag DELETE: a tag that must go
from an image that stays is moved onto a tiny placeholder manifest, whose version is then
deleted (what dataaxiom/ghcr-cleanup-action does for the same reason).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final
from urllib.parse import quote

from shipit.lifecycle.capabilities import Capabilities, placeholder
from shipit.lifecycle.rest import ApiError, Rest
from shipit.registry import Registry, RegistryError

API_VERSION: Final = "2022-11-28"
DELETE_SCOPE: Final = "delete:packages"
PERMISSIONS: Final = (
    "a token that may delete package versions: a personal access token (classic) with"
    " read:packages and delete:packages, or in a workflow the GITHUB_TOKEN with"
    " `permissions: packages: write` on a package that gives the repository the Admin role"
    " (package settings, Manage Actions access)"
)


class GithubPath:
    api = "github"

    def __init__(
        self,
        client: Registry,
        base: str,
        *,
        insecure: bool = False,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        credentials = client.endpoint.credentials
        self.token = credentials.password if credentials else None
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.rest = Rest(
            base, headers, name=f"GitHub's API at {base}", insecure=insecure, on_retry=on_retry
        )
        self._owners: dict[str, str] = {}  # owner -> "orgs" | "users"
        self._versions: dict[str, dict[str, int]] = {}  # repository -> digest -> version id
        self._scopes: str | None = None  # X-OAuth-Scopes, where the token is a classic PAT
        self._lock = threading.Lock()

    def close(self) -> None:
        self.rest.close()

    def _versions_path(self, repository: str, kind: str) -> str:
        owner, _, package = repository.partition("/")
        return f"/{kind}/{owner}/packages/container/{quote(package, safe='')}/versions"

    def _list(self, repository: str) -> dict[str, int]:
        """digest -> version id of every version of the package, organisation or user."""
        owner = repository.partition("/")[0]
        kinds = [self._owners[owner]] if owner in self._owners else ["orgs", "users"]
        what = f"the versions of package {repository.partition('/')[2]} of {owner}"
        for kind in kinds:
            try:
                versions = {}
                params = {"per_page": "100", "state": "active"}
                path = self._versions_path(repository, kind)
                for version in self.rest.pages(path, params=params, what=what):
                    if isinstance(version, dict) and isinstance(version.get("id"), int):
                        versions[str(version.get("name"))] = version["id"]
            except ApiError as error:
                if error.status == 404 and kind != kinds[-1]:
                    continue  # not an organisation: a user
                raise
            self._owners[owner] = kind
            return versions
        raise AssertionError("unreachable")  # pragma: no cover

    def _version_id(self, repository: str, digest: str) -> int | None:
        with self._lock:
            known = self._versions.get(repository, {})
            if digest not in known:
                known = self._versions[repository] = self._list(repository)
            return known.get(digest)

    def check(self, repository: str) -> str | None:
        if not self.token:
            return (
                f"{self.rest.name} needs a token: give the registry `password_env:` naming"
                f" {PERMISSIONS}"
            )
        owner = repository.partition("/")[0]
        kinds = [self._owners[owner]] if owner in self._owners else ["orgs", "users"]
        for kind in kinds:
            try:
                response = self.rest.call(
                    "GET", self._versions_path(repository, kind), params={"per_page": "1"},
                    what=f"the versions of {repository}",
                )  # fmt: skip
            except RegistryError as error:
                if error.status == 404 and kind != kinds[-1]:
                    continue
                return f"{error}: it needs {PERMISSIONS}"
            self._owners[owner] = kind
            scopes = response.headers.get("X-OAuth-Scopes")
            if scopes is not None and DELETE_SCOPE not in {s.strip() for s in scopes.split(",")}:
                return (
                    f"{self.rest.name}: the token's scopes are {scopes.strip() or 'none'},"
                    f" without {DELETE_SCOPE}: it needs {PERMISSIONS}"
                )
        return None

    def probe(self, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
        stand_in = placeholder(self.client, repository)
        self.client.put_manifest(repository, stand_in.digest, stand_in)
        try:
            self.delete_manifest(repository, stand_in.digest, ())
        except RegistryError as error:
            message = (
                f"{registry}: {self.rest.name} refuses to delete package versions ({error});"
                f" nothing was deleted there: give it {PERMISSIONS}"
            )
            return Capabilities(deletes=False, delete_status=error.status, message=message)
        return Capabilities(deletes=True, delete_status=204, tag_delete=False)

    def delete_manifest(self, repository: str, digest: str, tags: tuple[str, ...]) -> str | None:
        version = self._version_id(repository, digest)
        if version is None:
            return "not a version of the package any more: gone already"
        owner = repository.partition("/")[0]
        path = f"{self._versions_path(repository, self._owners[owner])}/{version}"
        self.rest.call(
            "DELETE", path, expect=(204, 404), what=f"deleting version {version} ({digest[:19]})"
        )
        with self._lock:
            self._versions.get(repository, {}).pop(digest, None)
        return None

    def delete_tag(self, repository: str, tag: str) -> bool:
        return False  # a version carries all its tags: see the module docstring
