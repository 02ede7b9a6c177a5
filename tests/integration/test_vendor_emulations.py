"""The vendor emulations of tests/support/vendors.py against a real distribution 2.8: every
REST endpoint, its pagination and permission errors, deletes that really delete from the
registry, and the registry API's refusals.

These start a registry, so they live with the integration tests (tests/unit is for the pure
core, no services).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests

from shipit.registry import Endpoint, Manifest
from shipit.registry import Registry as RegistryClient
from shipit.registry.oci import OCI_INDEX, OCI_MANIFEST
from tests.support.services import Registry, RegistryFactory, registry_client
from tests.support.vendors import (
    GITLAB_ROLES,
    Emulation,
    gitlab_duration,
    start_dockerhub,
    start_github,
    start_gitlab,
)

CREATED = "2024-05-01T10:00:00Z"


def image(client: RegistryClient, repo: str, arch: str, salt: str = "") -> Manifest:
    """A small image manifest of `arch`, its blobs pushed to `repo`."""
    layer = client.upload_blob(repo, f"layer {repo} {arch} {salt}".encode())
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": CREATED, "salt": salt,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }).encode()  # fmt: skip
    cfg = client.upload_blob(repo, config)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cfg.digest,
            "size": cfg.size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer.digest,
                "size": layer.size,
            }
        ],
    }
    return Manifest.from_bytes(json.dumps(doc).encode())


def index(children: dict[str, Manifest]) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": m.digest,
                "size": len(m.data),
                "platform": {"architecture": a, "os": "linux"},
            }
            for a, m in children.items()
        ],
    }
    return Manifest.from_bytes(json.dumps(doc).encode())


@dataclass
class Pushed:
    """What `push` put in a repository: v1 an index (amd64, arm64), v2 and latest one image,
    one untagged image; revision links aged so that the order is index, amd64, arm64, image,
    untagged (oldest first)."""

    repo: str
    index: Manifest
    amd64: Manifest
    arm64: Manifest
    image: Manifest
    untagged: Manifest

    def all(self) -> list[Manifest]:
        return [self.index, self.amd64, self.arm64, self.image, self.untagged]


def push(reg: Registry, repo: str) -> Pushed:
    client = registry_client(reg)
    amd64, arm64 = image(client, repo, "amd64"), image(client, repo, "arm64")
    for m in (amd64, arm64):
        client.put_manifest(repo, m.digest, m)
    idx = index({"amd64": amd64, "arm64": arm64})
    client.put_manifest(repo, "v1", idx)
    single = image(client, repo, "amd64", salt="single")
    client.put_manifest(repo, "v2", single)
    client.put_manifest(repo, "latest", single)
    untagged = image(client, repo, "amd64", salt="untagged")
    client.put_manifest(repo, untagged.digest, untagged)
    pushed = Pushed(repo, idx, amd64, arm64, single, untagged)
    revisions = reg.root / "docker/registry/v2/repositories" / repo / "_manifests/revisions/sha256"
    base = time.time() - 10 * 86400
    for age, m in enumerate(pushed.all()):
        os.utime(
            revisions / m.digest.split(":")[1] / "link", (base + age * 3600, base + age * 3600)
        )
    return pushed


def stored(reg: Registry, repo: str) -> set[str]:
    """The manifests the registry's storage holds for `repo`."""
    folder = reg.root / "docker/registry/v2/repositories" / repo / "_manifests/revisions/sha256"
    return {f"sha256:{p.parent.name}" for p in folder.glob("*/link")}


def tags_of(reg: Registry, repo: str) -> dict[str, str]:
    folder = reg.root / "docker/registry/v2/repositories" / repo / "_manifests/tags"
    return {p.parent.parent.name: p.read_text() for p in folder.glob("*/current/link")}


@pytest.fixture
def backend(registry_factory: RegistryFactory) -> Registry:
    return registry_factory()


@pytest.fixture
def stops() -> Iterator[list[Emulation]]:
    started: list[Emulation] = []
    yield started
    for e in started:
        e.stop()


# --- GitHub --------------------------------------------------------------------------------

GH_TOKENS = {
    "admin": {"read:packages", "delete:packages"},
    "reader": {"read:packages"},
    "none": set[str](),
}


def gh(
    url: str,
    token: str | None = "admin",  # noqa: S107
    method: str = "GET",
    **params: str,
) -> requests.Response:
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, url, headers=headers, params=params, timeout=30)


def test_github_lists_every_manifest_as_a_version_newest_first_with_link_pagination(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "acme/shop/web")
    e = start_github(backend, owner="acme", owner_kind="org", tokens=GH_TOKENS)
    stops.append(e)
    versions_url = f"{e.url}/orgs/acme/packages/container/{quote('shop/web', safe='')}/versions"
    first = gh(versions_url, per_page="2")
    assert first.status_code == 200
    assert first.headers["Link"] == (
        f'<{versions_url}?per_page=2&page=2>; rel="next", <{versions_url}?per_page=2&page=3>; rel="last"'
    )
    pages = [
        first.json(),
        gh(versions_url, per_page="2", page="2").json(),
        gh(versions_url, per_page="2", page="3").json(),
    ]
    last = gh(versions_url, per_page="2", page="3")
    assert 'rel="prev"' in last.headers["Link"] and 'rel="first"' in last.headers["Link"]
    assert 'rel="next"' not in last.headers["Link"]
    versions = [v for page in pages for v in page]
    assert [v["name"] for v in versions] == [m.digest for m in reversed(pushed.all())]
    by_digest = {v["name"]: v for v in versions}
    assert by_digest[pushed.index.digest]["metadata"] == {
        "package_type": "container",
        "container": {"tags": ["v1"]},
    }
    assert by_digest[pushed.image.digest]["metadata"]["container"]["tags"] == ["latest", "v2"]
    assert by_digest[pushed.untagged.digest]["metadata"]["container"]["tags"] == []
    one = by_digest[pushed.amd64.digest]
    assert set(one) >= {
        "id",
        "name",
        "url",
        "package_html_url",
        "created_at",
        "updated_at",
        "html_url",
        "metadata",
    }
    assert one["url"] == f"{versions_url}/{one['id']}"
    # ids are stable; one page without per_page holds all (30 a page); no Link then
    again = gh(versions_url)
    assert [v["id"] for v in again.json()] == [
        v["id"] for v in versions
    ] and "Link" not in again.headers
    assert gh(versions_url, state="deleted").json() == []
    assert gh(versions_url, per_page="2", page="9").json() == []


def test_github_deletes_versions_in_the_registry_and_refuses_what_github_refuses(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "acme/shop/web")
    e = start_github(backend, owner="acme", owner_kind="org", tokens=GH_TOKENS)
    stops.append(e)
    url = f"{e.url}/orgs/acme/packages/container/shop%2Fweb/versions"
    ids = {v["name"]: v["id"] for v in gh(url).json()}
    untagged = f"{url}/{ids[pushed.untagged.digest]}"
    assert gh(untagged, "reader", "DELETE").status_code == 403
    assert (
        gh(untagged, "reader", "DELETE").json()["message"]
        == "Resource not accessible by integration"
    )
    assert pushed.untagged.digest in stored(backend, "acme/shop/web")
    assert gh(untagged, method="DELETE").status_code == 204
    assert pushed.untagged.digest not in stored(backend, "acme/shop/web")
    assert gh(untagged, method="DELETE").status_code == 404
    # a tagged version: its tags go with it
    assert gh(f"{url}/{ids[pushed.image.digest]}", method="DELETE").status_code == 204
    assert tags_of(backend, "acme/shop/web") == {"v1": pushed.index.digest}
    # v1 is now the last tagged version: GitHub refuses, 400
    last_tagged = gh(f"{url}/{ids[pushed.index.digest]}", method="DELETE")
    assert last_tagged.status_code == 400
    assert last_tagged.json()["message"].startswith(
        "You cannot delete the last tagged version of a package."
    )
    assert [c.status for c in e.calls if c.method == "DELETE"] == [403, 403, 204, 404, 204, 400]


def test_github_refuses_the_last_version_and_answers_404_when_asked_to(
    backend: Registry, stops: list[Emulation]
) -> None:
    client = registry_client(backend)
    only = image(client, "acme/solo", "amd64")
    client.put_manifest("acme/solo", only.digest, only)
    e = start_github(backend, owner="acme", owner_kind="org", tokens=GH_TOKENS, deny_delete_as=404)
    stops.append(e)
    url = f"{e.url}/orgs/acme/packages/container/solo/versions"
    (version,) = gh(url).json()
    answer = gh(f"{url}/{version['id']}", method="DELETE")
    assert answer.status_code == 400
    assert (
        answer.json()["message"]
        == "You cannot delete the last version of a package. You must delete the package instead."
    )
    denied = gh(f"{url}/{version['id']}", "reader", "DELETE")
    assert (denied.status_code, denied.json()["message"]) == (404, "Package not found.")


def test_github_tokens_owner_kinds_and_unknown_packages(
    backend: Registry, stops: list[Emulation]
) -> None:
    push(backend, "octo/tool")
    e = start_github(backend, owner="octo", owner_kind="user", tokens=GH_TOKENS)
    stops.append(e)
    url = f"{e.url}/users/octo/packages/container/tool/versions"
    assert len(gh(url).json()) == 5
    assert len(gh(f"{e.url}/user/packages/container/tool/versions").json()) == 5
    org = gh(f"{e.url}/orgs/octo/packages/container/tool/versions")
    assert (org.status_code, org.json()["message"]) == (404, "Not Found")
    assert "documentation_url" in org.json()
    assert (
        gh(url, None).status_code == 401
        and gh(url, None).json()["message"] == "Requires authentication"
    )
    assert gh(url, "wrong").json()["message"] == "Bad credentials"
    assert gh(url, "none").status_code == 403
    missing = gh(f"{e.url}/users/octo/packages/container/nothing/versions")
    assert (missing.status_code, missing.json()["message"]) == (404, "Package not found.")
    with requests.get(url, headers={"Authorization": "token admin"}, timeout=30) as classic:
        assert classic.status_code == 200


def test_github_registry_forwards_pulls_and_pushes_and_refuses_manifest_deletes(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "acme/shop/web")
    e = start_github(backend, owner="acme", owner_kind="org", tokens=GH_TOKENS)
    stops.append(e)
    through = RegistryClient(Endpoint(host=e.host))
    assert through.manifest("acme/shop/web", "v1").digest == pushed.index.digest
    assert sorted(through.tags("acme/shop/web")) == ["latest", "v1", "v2"]
    fresh = image(
        through, "acme/shop/api", "amd64", salt="through the emulation"
    )  # uploads: Location rewritten
    assert through.put_manifest("acme/shop/api", "edge", fresh) == fresh.digest
    assert tags_of(backend, "acme/shop/api") == {"edge": fresh.digest}
    refused = requests.delete(
        f"{e.url}/v2/acme/shop/web/manifests/{pushed.untagged.digest}", timeout=30
    )
    assert refused.status_code == 405
    assert refused.json() == {
        "errors": [{"code": "UNSUPPORTED", "message": "The operation is unsupported."}]
    }
    assert pushed.untagged.digest in stored(backend, "acme/shop/web")
    assert any(c.method == "PUT" and c.status == 201 for c in e.registry_calls)


# --- GitLab --------------------------------------------------------------------------------

GL_TOKENS = {
    "maint": set(GITLAB_ROLES["maintainer"]),
    "dev": set(GITLAB_ROLES["developer"]),
    "rep": set(GITLAB_ROLES["reporter"]),
}


def gl(
    url: str,
    token: str | None = "maint",  # noqa: S107
    method: str = "GET",
    header: str = "PRIVATE-TOKEN",
    **params: str,
) -> requests.Response:
    headers = {header: token} if token else {}
    return requests.request(method, url, headers=headers, params=params, timeout=30)


def test_gitlab_repositories_tags_and_details(backend: Registry, stops: list[Emulation]) -> None:
    root, named = push(backend, "group/project"), push(backend, "group/project/web")
    push(backend, "group/other")
    e = start_gitlab(backend, project_path="group/project", project_id=42, tokens=GL_TOKENS)
    stops.append(e)
    repos = gl(f"{e.api_url}/projects/42/registry/repositories", tags="true", tags_count="true")
    assert repos.status_code == 200
    assert [(r["name"], r["path"], r["project_id"]) for r in repos.json()] == [
        ("", "group/project", 42),
        ("web", "group/project/web", 42),
    ]
    assert repos.json()[1]["location"] == f"{e.host}/group/project/web"
    assert repos.json()[1]["tags_count"] == 3
    assert repos.json()[1]["tags"][0] == {
        "name": "latest",
        "path": "group/project/web:latest",
        "location": f"{e.host}/group/project/web:latest",
    }
    by_path = gl(f"{e.api_url}/projects/group%2Fproject/registry/repositories")
    assert [r["id"] for r in by_path.json()] == [r["id"] for r in repos.json()]
    web = repos.json()[1]["id"]
    tags_url = f"{e.api_url}/projects/42/registry/repositories/{web}/tags"
    page = gl(tags_url, per_page="2")
    assert [t["name"] for t in page.json()] == ["latest", "v1"]
    assert (
        page.headers["X-Total"],
        page.headers["X-Total-Pages"],
        page.headers["X-Next-Page"],
        page.headers["X-Page"],
    ) == ("3", "2", "2", "1")
    assert 'rel="next"' in page.headers["Link"]
    assert [t["name"] for t in gl(tags_url, per_page="2", page="2").json()] == ["v2"]
    details = gl(f"{tags_url}/v2").json()
    config = next(iter(named.image.blobs())).digest
    assert details["digest"] == named.image.digest and details["revision"] == config.split(":")[1]
    assert details["short_revision"] == details["revision"][:9] and details["created_at"] == CREATED
    assert details["total_size"] == sum(b.size for b in named.image.blobs()[1:])
    assert gl(f"{tags_url}/nope").json() == {"message": "404 Tag Not Found"}
    assert root.index.digest in stored(backend, "group/project")


def test_gitlab_deletes_one_tag_only_and_checks_roles(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "group/project/web")
    e = start_gitlab(
        backend,
        project_path="group/project",
        project_id=42,
        tokens=GL_TOKENS,
        job_tokens={"job": set(GITLAB_ROLES["developer"])},
    )
    stops.append(e)
    (repo,) = gl(f"{e.api_url}/projects/42/registry/repositories").json()
    tag_url = f"{e.api_url}/projects/42/registry/repositories/{repo['id']}/tags/v2"
    assert gl(tag_url, None).json() == {"message": "401 Unauthorized"}
    assert gl(tag_url, "bogus").status_code == 401
    assert gl(tag_url, "rep", "DELETE").json() == {"message": "403 Forbidden"}
    assert gl(tag_url, "job", "DELETE", header="JOB-TOKEN").status_code == 200
    assert tags_of(backend, "group/project/web") == {
        "v1": pushed.index.digest,
        "latest": pushed.image.digest,
    }
    assert stored(backend, "group/project/web") == {m.digest for m in pushed.all()}
    assert gl(tag_url, "dev", "DELETE").status_code == 404
    assert gl(f"{e.api_url}/projects/7/registry/repositories").json() == {
        "message": "404 Project Not Found"
    }
    assert gl(f"{e.api_url}/projects/42/registry/repositories/999/tags").json() == {
        "message": "404 Not found"
    }


def test_gitlab_bulk_delete(backend: Registry, stops: list[Emulation]) -> None:
    client = registry_client(backend)
    repo = "group/project"
    for n in range(5):
        m = image(client, repo, "amd64", salt=str(n))
        client.put_manifest(repo, f"sha-{n}", m)
    client.put_manifest(repo, "latest", m)
    client.put_manifest(repo, "stable-1", image(client, repo, "amd64", salt="stable"))
    e = start_gitlab(backend, project_path=repo, project_id=42, tokens=GL_TOKENS)
    stops.append(e)
    (found,) = gl(f"{e.api_url}/projects/42/registry/repositories").json()
    tags_url = f"{e.api_url}/projects/42/registry/repositories/{found['id']}/tags"
    assert gl(tags_url, "dev", "DELETE", name_regex_delete=".*").json() == {
        "message": "403 Forbidden"
    }
    assert gl(tags_url, method="DELETE").status_code == 400
    assert (
        e.bulk_selection(repo, {"name_regex_delete": ".*", "older_than": "100000d"}, time.time())
        == []
    )
    assert "latest" not in e.bulk_selection(
        repo, {"name_regex_delete": ".*", "older_than": "1d"}, time.time()
    )
    # config created times are equal: keep_n keeps by that order, then names decide nothing
    answer = requests.delete(
        tags_url,
        headers={"PRIVATE-TOKEN": "maint"},
        data={"name_regex_delete": "sha-.*", "name_regex_keep": "sha-4", "keep_n": "1"},
        timeout=30,
    )
    assert answer.status_code == 202
    left = set(tags_of(backend, repo))
    assert {"latest", "stable-1", "sha-4"} <= left and len(
        left & {"sha-0", "sha-1", "sha-2", "sha-3"}
    ) == 1
    again = gl(tags_url, method="DELETE", name_regex_delete=".*")
    assert again.status_code == 400 and "at most once an hour" in again.json()["message"]
    assert (
        gitlab_duration("1h") == 3600
        and gitlab_duration("2d") == 172800
        and gitlab_duration("1month") == 2592000
    )


def test_gitlab_registry_deletes_need_the_delete_action(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "group/project")
    closed = start_gitlab(backend, project_path="group/project", project_id=42, tokens=GL_TOKENS)
    opened = start_gitlab(
        backend,
        project_path="group/project",
        project_id=42,
        tokens=GL_TOKENS,
        registry_deletes=True,
    )
    stops += [closed, opened]
    refused = requests.delete(
        f"{closed.url}/v2/group/project/manifests/{pushed.untagged.digest}", timeout=30
    )
    assert refused.status_code == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert (
        'scope="repository:group/project:delete"' in challenge
        and 'error="insufficient_scope"' in challenge
    )
    assert challenge.startswith(
        f'Bearer realm="{closed.url}/jwt/auth",service="container_registry"'
    )
    assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert requests.get(
        f"{closed.url}/jwt/auth", params={"service": "container_registry"}, timeout=30
    ).json()["token"]
    assert (
        requests.delete(
            f"{opened.url}/v2/group/project/manifests/{pushed.untagged.digest}", timeout=30
        ).status_code
        == 202
    )
    assert pushed.untagged.digest not in stored(backend, "group/project")


# --- Docker Hub ----------------------------------------------------------------------------

HUB_ACCOUNTS = {
    "owner": ("pat-rwd", {"read", "write", "delete"}),
    "ci": ("pat-rw", {"read", "write"}),
}


def hub_token(e: Emulation, user: str, secret: str) -> str:
    r = requests.post(
        f"{e.url}/v2/auth/token", json={"identifier": user, "secret": secret}, timeout=30
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def test_dockerhub_login_list_and_delete_tags(backend: Registry, stops: list[Emulation]) -> None:
    pushed = push(backend, "acme/web")
    e = start_dockerhub(backend, accounts=HUB_ACCOUNTS)
    stops.append(e)
    login = requests.post(
        f"{e.api_url}/v2/users/login", json={"username": "owner", "password": "pat-rwd"}, timeout=30
    )
    assert login.status_code == 200 and login.json()["token"]
    assert (
        requests.post(
            f"{e.api_url}/v2/users/login", json={"username": "owner", "password": "x"}, timeout=30
        ).status_code
        == 401
    )
    url = f"{e.api_url}/v2/namespaces/acme/repositories/web/tags"
    first = requests.get(url, params={"page_size": "2"}, timeout=30).json()
    assert first["count"] == 3 and first["previous"] is None and "page=2" in first["next"]
    second = requests.get(first["next"], timeout=30).json()
    assert second["next"] is None and second["previous"]
    v1 = requests.get(f"{url}/v1", timeout=30).json()
    assert v1["digest"] == pushed.index.digest
    assert [(i["architecture"], i["os"], i["digest"]) for i in v1["images"]] == [
        ("amd64", "linux", pushed.amd64.digest), ("arm64", "linux", pushed.arm64.digest)
    ]  # fmt: skip
    assert (
        requests.get(f"{e.api_url}/v2/repositories/acme/web/tags/", timeout=30).json()["count"] == 3
    )
    rw, rwd = hub_token(e, "ci", "pat-rw"), hub_token(e, "owner", "pat-rwd")
    assert requests.delete(f"{url}/v2", timeout=30).status_code == 401
    assert (
        requests.delete(
            f"{url}/v2", headers={"Authorization": f"Bearer {rw}"}, timeout=30
        ).status_code
        == 403
    )
    assert (
        requests.delete(
            f"{url}/v2", headers={"Authorization": f"Bearer {rwd}"}, timeout=30
        ).status_code
        == 204
    )
    assert tags_of(backend, "acme/web") == {
        "v1": pushed.index.digest,
        "latest": pushed.image.digest,
    }
    old = f"{e.api_url}/v2/repositories/acme/web/tags/latest/"
    assert (
        requests.delete(old, headers={"Authorization": f"JWT {rwd}"}, timeout=30).status_code == 204
    )
    assert tags_of(backend, "acme/web") == {"v1": pushed.index.digest}
    assert stored(backend, "acme/web") == {m.digest for m in pushed.all()}
    assert [c.status for c in e.calls if c.method == "DELETE"] == [401, 403, 204, 204]


def test_dockerhub_registry_deletes_only_unreferenced_manifests(
    backend: Registry, stops: list[Emulation]
) -> None:
    pushed = push(backend, "acme/web")
    e = start_dockerhub(backend, accounts=HUB_ACCOUNTS, private=True)
    stops.append(e)
    for referenced in (pushed.index, pushed.image, pushed.amd64):
        r = requests.delete(f"{e.url}/v2/acme/web/manifests/{referenced.digest}", timeout=30)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    assert (
        requests.delete(
            f"{e.url}/v2/acme/web/manifests/{pushed.untagged.digest}", timeout=30
        ).status_code
        == 202
    )
    assert stored(backend, "acme/web") == {m.digest for m in pushed.all()} - {
        pushed.untagged.digest
    }
    url = f"{e.api_url}/v2/namespaces/acme/repositories/web/tags"
    assert requests.get(url, timeout=30).status_code == 401
    token = hub_token(e, "ci", "pat-rw")
    assert (
        requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).json()["count"]
        == 3
    )
