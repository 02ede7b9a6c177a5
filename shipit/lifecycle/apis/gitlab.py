"""Deleting in GitLab's container registry through its REST API (`/api/v4`).

What GitLab documents (docs.gitlab.com/api/container_registry):
- `GET /projects/:id/registry/repositories` lists a project's registry repositories (`id`,
  `path` such as `group/project/name`), `:id` the project's number or its URL-encoded path;
  pages of `per_page` (default 20), the next one in the `Link` header (`X-Next-Page` too);
- `DELETE /projects/:id/registry/repositories/:repository_id/tags/:tag_name` deletes one tag
  (200); the manifest it pointed at is left untagged, for the registry's garbage collection;
- a CI job authenticates with `JOB-TOKEN: $CI_JOB_TOKEN` (the job token reaches the registry
  of its own project only), anyone else with `PRIVATE-TOKEN`; deleting needs the Developer
  role or higher (docs.gitlab.com/user/permissions).

The project of a repository is `CI_PROJECT_PATH` where the repository lies under it, else the
longest leading part of the repository path that GitLab knows as a project (a registry
repository is the project's path, or the project's path and a name). The registry's login is
the API's: the job token where the registry's username is `gitlab-ci-token` (GitLab's name for
it, `CI_REGISTRY_USER`), a personal, project or group access token otherwise.

A manifest is deleted by deleting its tags; what is left untagged (an index's platform
manifests, signatures' bundles) is deleted over the registry API where the token may (not
every version grants a job token the registry's `delete` action), else left to GitLab's
garbage collection, and the report says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from urllib.parse import quote

from shipit.lifecycle.apis import probe_with_tag
from shipit.lifecycle.capabilities import Capabilities
from shipit.lifecycle.rest import ApiError, Rest
from shipit.registry import Registry, RegistryError

JOB_TOKEN_USER = "gitlab-ci-token"  # noqa: S105 (a username, GitLab's CI_REGISTRY_USER)
LEFT_TO_GC = "untagged now; GitLab's garbage collection removes it (the registry API refused to"
PERMISSIONS = (
    "a token of an account with the Developer role or higher on the project: in a job the"
    " CI_JOB_TOKEN (username gitlab-ci-token), else a personal, project or group access token"
    " with the api scope"
)


def _enc(path: str) -> str:
    return quote(path, safe="")


class GitlabPath:
    api = "gitlab"

    def __init__(
        self,
        client: Registry,
        base: str,
        env: Mapping[str, str],
        *,
        insecure: bool = False,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.project_path = env.get("CI_PROJECT_PATH", "")
        credentials = client.endpoint.credentials
        headers: dict[str, str] = {}
        if credentials is not None:
            header = "JOB-TOKEN" if credentials.username == JOB_TOKEN_USER else "PRIVATE-TOKEN"
            headers[header] = credentials.password
        self.has_token = credentials is not None
        self.rest = Rest(
            base, headers, name=f"GitLab's API at {base}", insecure=insecure, on_retry=on_retry
        )
        self._found: dict[str, tuple[str, int]] = {}  # repository -> (project, repository id)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.rest.close()

    def _projects(self, repository: str) -> list[str]:
        parts = repository.split("/")
        candidates = ["/".join(parts[:n]) for n in range(len(parts), 1, -1)]
        ours = self.project_path
        if ours and (repository == ours or repository.startswith(ours + "/")):
            candidates = [ours, *(c for c in candidates if c != ours)]
        return candidates

    def _locate(self, repository: str) -> tuple[str, int]:
        """(URL-encoded project, registry repository id) of `repository`."""
        with self._lock:
            if repository in self._found:
                return self._found[repository]
        for project in self._projects(repository):
            path = f"/projects/{_enc(project)}/registry/repositories"
            try:
                listed = list(
                    self.rest.pages(path, params={"per_page": "100"}, what=f"{project}'s registry")
                )
            except ApiError as error:
                if error.status == 404:
                    continue  # not a project (or not one this token sees)
                raise
            for entry in listed:
                if isinstance(entry, dict) and entry.get("path") == repository:
                    found = (_enc(project), int(entry["id"]))
                    with self._lock:
                        self._found[repository] = found
                    return found
        raise ApiError(
            f"{self.rest.name} knows no registry repository {repository} in a project this"
            " token can see",
            host=self.rest.host,
            status=404,
        )

    def _tag_path(self, repository: str, tag: str) -> str:
        project, repository_id = self._locate(repository)
        return f"/projects/{project}/registry/repositories/{repository_id}/tags/{_enc(tag)}"

    def check(self, repository: str) -> str | None:
        if not self.has_token:
            return f"{self.rest.name} needs a token: give the registry {PERMISSIONS}"
        try:
            self._locate(repository)
        except RegistryError as error:
            return f"{error}: it needs {PERMISSIONS}"
        return None

    def probe(self, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
        def remove(tag: str, digest: str) -> None:
            self.delete_tag(repository, tag)
            self._delete_untagged(repository, digest)

        return probe_with_tag(
            self.client, repository, registry=registry, name=self.rest.name, remove=remove,
            permissions=PERMISSIONS, status=200,
        )  # fmt: skip

    def delete_tag(self, repository: str, tag: str) -> bool:
        self.rest.call(
            "DELETE", self._tag_path(repository, tag), expect=(200, 202, 204, 404),
            what=f"deleting tag {repository}:{tag}",
        )  # fmt: skip
        return True

    def delete_manifest(self, repository: str, digest: str, tags: tuple[str, ...]) -> str | None:
        for tag in tags:
            self.delete_tag(repository, tag)
        return self._delete_untagged(repository, digest)

    def _delete_untagged(self, repository: str, digest: str) -> str | None:
        try:
            self.client.delete_manifest(repository, digest)
        except RegistryError as error:
            if error.kind not in ("auth", "denied", "unsupported"):
                raise
            return f"{LEFT_TO_GC} delete it: {error.status})"
        return None
