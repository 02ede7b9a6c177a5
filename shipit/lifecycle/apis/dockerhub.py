"""Deleting on Docker Hub: tags through Hub's API, then the untagged digest over the registry.

What Docker documents: the registry API deletes a manifest only once no tag points at it
(403 otherwise: docker/docs PR #24078); Hub's API (docs.docker.com/reference/api/hub/latest)
logs in with `POST /v2/users/login` (`{"username", "password"}`, a personal access token as
the password, answering `{"token"}`), lists tags with
`GET /v2/namespaces/{namespace}/repositories/{repository}/tags` and deletes one with
`DELETE /v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}` (204), with
`Authorization: Bearer TOKEN`. Deleting needs an access token with the "Read, Write, Delete"
permission (Docker's personal access token docs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import quote

from shipit.lifecycle.apis import probe_with_tag
from shipit.lifecycle.capabilities import Capabilities
from shipit.lifecycle.rest import ApiError, Rest
from shipit.registry import Registry, RegistryError

PERMISSIONS = (
    "the Docker Hub username and a personal access token with the Read, Write, Delete"
    " permission (or the account's password)"
)


class DockerHubPath:
    api = "dockerhub"

    def __init__(
        self,
        client: Registry,
        base: str,
        *,
        insecure: bool = False,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.credentials = client.endpoint.credentials
        self.rest = Rest(
            base, {}, name=f"Docker Hub's API at {base}", insecure=insecure, on_retry=on_retry
        )
        self._logged_in = False
        self._lock = threading.Lock()

    def close(self) -> None:
        self.rest.close()

    def _login(self) -> None:
        with self._lock:
            if self._logged_in:
                return
            if self.credentials is None:
                raise ApiError(
                    f"{self.rest.name} needs {PERMISSIONS}", host=self.rest.host, status=401
                )
            body = {"username": self.credentials.username, "password": self.credentials.password}
            response = self.rest.call("POST", "/v2/users/login", json=body, what="a login")
            token = self.rest.json(response, "a login").get("token")
            if not isinstance(token, str) or not token:
                raise ApiError(f"{self.rest.name} logged in without a token", host=self.rest.host)
            self.rest.authorize(f"Bearer {token}")
            self._logged_in = True

    def _tags_path(self, repository: str) -> str:
        namespace, _, name = repository.partition("/")
        return (
            f"/v2/namespaces/{quote(namespace, safe='')}/repositories/{quote(name, safe='')}/tags"
        )

    def check(self, repository: str) -> str | None:
        try:
            self._login()
            self.rest.call(
                "GET", self._tags_path(repository), params={"page_size": "1"},
                what=f"the tags of {repository}",
            )  # fmt: skip
        except RegistryError as error:
            return f"{error}: it needs {PERMISSIONS}"
        return None

    def probe(self, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
        return probe_with_tag(
            self.client, repository, registry=registry, name=self.rest.name,
            remove=lambda tag, digest: self.delete_manifest(repository, digest, (tag,)),
            permissions=PERMISSIONS, status=204,
        )  # fmt: skip

    def delete_tag(self, repository: str, tag: str) -> bool:
        self._login()
        self.rest.call(
            "DELETE", f"{self._tags_path(repository)}/{quote(tag, safe='')}",
            expect=(200, 202, 204, 404), what=f"deleting tag {repository}:{tag}",
        )  # fmt: skip
        return True

    def delete_manifest(self, repository: str, digest: str, tags: tuple[str, ...]) -> str | None:
        for tag in tags:
            self.delete_tag(repository, tag)
        self.client.delete_manifest(repository, digest)  # untagged now: the registry may
        return None
