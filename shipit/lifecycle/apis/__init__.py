"""How `shipit prune` deletes in a registry: the distribution API, or the vendor's own.

GHCR refuses a manifest DELETE (405 UNSUPPORTED) and deletes through GitHub's Packages REST
API; GitLab deletes tags through its container registry API; Docker Hub deletes tags through
Hub's API and only untagged digests through the registry API (403 otherwise). Which path a
registry takes is the spec's `api:`, else follows from the host (`ghcr.io` is github,
`docker.io` and its aliases dockerhub, `registry.gitlab.com` or the `CI_REGISTRY` of a GitLab
job gitlab, anything else the distribution API); never silently another one.

A `DeletePath` reads nothing of the repository (the inventory does that over the registry
API, which every vendor serves); it answers whether deletes can work (`check`, read-only, for
the dry run; `probe`, on a manifest of its own, before `--apply` deletes anything), and
deletes a manifest or a tag.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from shipit.lifecycle.capabilities import Capabilities, placeholder
from shipit.registry import DOCKER_HUB_HOSTS, Registry, RegistryError
from shipit.spec import Registry as SpecRegistry

DEFAULT_URLS: Final = {
    "github": "https://api.github.com",  # GitHub's REST API; GITHUB_API_URL in a workflow
    "gitlab": "https://gitlab.com/api/v4",  # GitLab's REST API; CI_API_V4_URL in a job
    "dockerhub": "https://hub.docker.com",  # Docker Hub's API
}
CI_URLS: Final = {"github": "GITHUB_API_URL", "gitlab": "CI_API_V4_URL"}
NAMES: Final = {
    "github": "GitHub's Packages API",
    "gitlab": "GitLab's container registry API",
    "dockerhub": "Docker Hub's API",
    "registry": "the registry API",
}


class DeletePath(Protocol):
    """What deleting in one registry takes; see the module docstring."""

    api: str  # github | gitlab | dockerhub | registry

    def check(self, repository: str) -> str | None:
        """Read-only: why deletes cannot work in `repository`, or None if they may."""

    def probe(self, repository: str, *, registry: str, tags_too: bool) -> Capabilities:
        """Whether deletes work, found out on a manifest of the probe's own."""

    def delete_manifest(self, repository: str, digest: str, tags: tuple[str, ...]) -> str | None:
        """Delete `digest` (with `tags`, the tags that point at it now); a note when the
        registry leaves part of it to its own garbage collection. RegistryError if refused."""

    def delete_tag(self, repository: str, tag: str) -> bool:
        """Remove `tag` alone; False where the path has no such call."""

    def close(self) -> None: ...


def probe_with_tag(
    client: Registry,
    repository: str,
    *,
    registry: str,
    name: str,
    remove: Callable[[str, str], object],
    permissions: str,
    status: int,
) -> Capabilities:
    """Whether a path that deletes tags (GitLab, Docker Hub) may: a placeholder of its own is
    pushed under a probe tag and `remove(tag, digest)` takes it away. Where that is refused,
    the probe tag stays (nothing else may remove it) and the message says so."""
    stand_in = placeholder(client, repository)
    tag = f"shipit-probe-{secrets.token_hex(6)}"
    client.put_manifest(repository, tag, stand_in)
    try:
        remove(tag, stand_in.digest)
    except RegistryError as error:
        message = (
            f"{registry}: {name} refuses to delete ({error}); nothing was deleted there (its"
            f" probe tag {tag} stays, for the next prune that may): give it {permissions}"
        )
        return Capabilities(deletes=False, delete_status=error.status, message=message)
    return Capabilities(
        deletes=True, delete_status=status, tag_delete=True, tag_delete_status=status
    )


def api_of(registry: SpecRegistry, env: Mapping[str, str]) -> str:
    """The spec's `api:`, else what the host says (see the module docstring)."""
    if registry.api is not None:
        return registry.api
    host = registry.host.lower()
    if host == "ghcr.io":
        return "github"
    if host in DOCKER_HUB_HOSTS:
        return "dockerhub"
    ci_registry = env.get("CI_REGISTRY", "").lower().partition("/")[0]
    if host == "registry.gitlab.com" or (ci_registry and host == ci_registry):
        return "gitlab"
    return "registry"


def api_url(api: str, registry: SpecRegistry, env: Mapping[str, str]) -> str:
    """The entry's `api_url:`, else what the CI system sets, else the vendor's public API.
    The spec's own setting comes first, as every setting of the spec does."""
    if registry.api_url:
        return registry.api_url
    variable = CI_URLS.get(api)
    if variable and env.get(variable):
        return env[variable].rstrip("/")
    return DEFAULT_URLS[api]


def open_path(
    registry: SpecRegistry,
    client: Registry,
    env: Mapping[str, str],
    on_retry: Callable[[str], None] | None = None,
) -> DeletePath:
    """The deletion path of `registry`, with `client` (its registry API, credentials set)."""
    from shipit.lifecycle.apis import dockerhub, github, gitlab  # noqa: PLC0415
    from shipit.lifecycle.apis.distribution import DistributionPath  # noqa: PLC0415

    api = api_of(registry, env)
    if api == "registry":
        return DistributionPath(client)
    base = api_url(api, registry, env)
    insecure = registry.insecure
    if api == "github":
        return github.GithubPath(client, base, insecure=insecure, on_retry=on_retry)
    if api == "gitlab":
        return gitlab.GitlabPath(client, base, env, insecure=insecure, on_retry=on_retry)
    return dockerhub.DockerHubPath(client, base, insecure=insecure, on_retry=on_retry)
