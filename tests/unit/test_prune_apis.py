"""Which path `shipit prune` deletes through, and where that API is: pure rules, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipit.lifecycle.apis import api_of, api_url, open_path
from shipit.lifecycle.rest import ApiError, Rest
from shipit.registry import Endpoint, Registry
from shipit.spec import Registry as SpecRegistry
from tests.support.cli import run_shipit


def entry(url: str, **fields: object) -> SpecRegistry:
    host, _, namespace = url.partition("/")
    return SpecRegistry(url=url, host=host, namespace=namespace, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "env", "api"),
    [
        ("ghcr.io/acme", {}, "github"),
        ("docker.io/acme", {}, "dockerhub"),
        ("registry-1.docker.io/acme", {}, "dockerhub"),
        ("index.docker.io/acme", {}, "dockerhub"),
        ("registry.gitlab.com/group/project", {}, "gitlab"),
        ("gitlab.example.com:5050/group/project", {"CI_REGISTRY": "gitlab.example.com:5050"}, "gitlab"),
        ("gitlab.example.com:5050/group/project", {}, "registry"),
        ("quay.io/acme", {"CI_REGISTRY": "gitlab.example.com"}, "registry"),
        ("localhost:5000/acme", {}, "registry"),
    ],
)  # fmt: skip
def test_the_path_follows_from_the_host(url: str, env: dict[str, str], api: str) -> None:
    assert api_of(entry(url), env) == api


def test_the_spec_says_the_path_and_its_url_before_anything_else() -> None:
    ghcr = entry("ghcr.io/acme", api="registry")
    assert api_of(ghcr, {}) == "registry"  # as the spec says, even on ghcr.io
    mirror = entry("127.0.0.1:5000/acme", api="github", api_url="http://127.0.0.1:8080")
    assert api_of(mirror, {}) == "github"
    env = {"GITHUB_API_URL": "https://ghe.example.com/api/v3"}
    assert api_url("github", mirror, env) == "http://127.0.0.1:8080"
    assert api_url("github", entry("ghcr.io/acme"), env) == "https://ghe.example.com/api/v3"
    assert api_url("github", entry("ghcr.io/acme"), {}) == "https://api.github.com"
    gitlab = entry("registry.gitlab.com/g/p")
    assert api_url("gitlab", gitlab, {"CI_API_V4_URL": "https://gl.example.com/api/v4/"}) == (
        "https://gl.example.com/api/v4"
    )
    assert api_url("gitlab", gitlab, {}) == "https://gitlab.com/api/v4"
    assert api_url("dockerhub", entry("docker.io/acme"), {}) == "https://hub.docker.com"


def test_a_token_never_goes_to_an_api_over_plain_http_elsewhere_than_loopback() -> None:
    with pytest.raises(ApiError, match="shipit sends a token only over HTTPS"):
        Rest("http://api.example.com", {"Authorization": "Bearer x"}, name="an API")
    Rest("http://127.0.0.1:9", {}, name="a loopback API").close()
    Rest("http://api.example.com", {}, name="an insecure API", insecure=True).close()
    spec_entry = entry("ghcr.io/acme", api_url="http://api.example.com")
    with Registry(Endpoint(host="ghcr.io")) as client, pytest.raises(ApiError):
        open_path(spec_entry, client, {})


def test_api_and_api_url_are_read_from_the_spec_with_their_places(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "shipit.yml").write_text(
        "version: 1\nregistries:\n  - url: ghcr.io/acme\n    api: githu\n"
        "    api_url: ftp://x\nimage: {name: app}\n",
        encoding="utf-8",
    )
    code, _out, err = run_shipit(["validate", "-C", str(tmp_path)], capsys)
    assert code == 2
    assert "shipit.yml:4:10: api must be one of github, gitlab, dockerhub, registry" in err
    assert "shipit.yml:5:14: api_url 'ftp://x' must be an http(s) URL" in err
