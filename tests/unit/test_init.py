"""`shipit init`: a starter spec from CI variables or the git remote, that validates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit import init
from tests.conftest import write
from tests.support.cli import run_shipit
from tests.support.gitrepo import git, make_repo

run = run_shipit


def repository(path: Path, remote: str | None = None, *, dockerfile: str = "Dockerfile") -> Path:
    make_repo(path, [{}])
    if remote:
        git(path, "remote", "add", "origin", remote)
    if dockerfile:
        write(path / dockerfile, "FROM scratch\n")
    return path


def spec_of(path: Path) -> dict[str, Any]:
    document = yaml.safe_load((path / "shipit.yml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def assert_validates(
    path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None
) -> None:
    """`shipit validate` passes, in the environment given and with no variables at all."""
    for environment in (env, None):
        code, out, err = run(["validate", "-C", str(path)], capsys, environment)
        assert code == 0, err
        assert out.endswith("valid (1 image)\n")


GITHUB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY_OWNER": "Acme-Corp",
    "GITHUB_REPOSITORY": "Acme-Corp/Web.Shop",
    "GITHUB_ACTOR": "octocat",
}
GITLAB_ENV = {
    "GITLAB_CI": "true",
    "CI_REGISTRY_IMAGE": "registry.example.org/platform/tools/builder",
    "CI_PROJECT_NAME": "builder",
    "CI_REGISTRY_USER": "gitlab-ci-token",
}


# -- the command, on real repositories -----------------------------------------------------


def test_github_actions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "checkout")
    code, out, err = run(["init", "-C", str(path)], capsys, GITHUB_ENV)
    assert code == 0, err
    assert out == ""  # everything for people goes to stderr
    spec = spec_of(path)
    assert spec["registries"] == [
        {
            "url": "ghcr.io/acme-corp",
            "username": "${GITHUB_ACTOR:-Acme-Corp}",
            "password_env": "GITHUB_TOKEN",
        }
    ]
    assert spec["image"] == {"name": "web.shop", "context": "."}
    assert spec["scan"] == {"fail_on": "HIGH"}
    assert "sign" not in spec
    assert "# sign:" in (path / "shipit.yml").read_text(encoding="utf-8")
    assert "ghcr.io/acme-corp (from GITHUB_REPOSITORY_OWNER)" in err
    workflow = yaml.safe_load(err[err.index("name: release") :])
    steps = workflow["jobs"]["release"]["steps"]
    assert steps[-1]["uses"] == init.ACTION
    assert steps[-1]["env"] == {"GITHUB_TOKEN": "${{ github.token }}"}
    assert steps[0]["with"]["fetch-depth"] == 0
    assert_validates(path, capsys, GITHUB_ENV)
    code, out, err = run(["tags", "-C", str(path)], capsys, GITHUB_ENV)
    assert code == 0, err
    assert out.startswith("ghcr.io/acme-corp/web.shop:")


def test_gitlab_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "builds")
    code, out, err = run(["init", "-C", str(path)], capsys, GITLAB_ENV)
    assert code == 0, err
    assert out == ""
    spec = spec_of(path)
    assert spec["registries"] == [
        {
            "url": "${CI_REGISTRY_IMAGE:-registry.example.org/platform/tools/builder}",
            "username": "${CI_REGISTRY_USER:-gitlab-ci-token}",
            "password_env": "CI_REGISTRY_PASSWORD",
        }
    ]
    assert spec["image"] == {"name": "builder", "context": "."}
    snippet = yaml.safe_load(err[err.index("include:") :])
    assert snippet["include"] == [{"remote": init.GITLAB_TEMPLATE}]
    assert "shipit" not in snippet  # the default spec needs no SHIPIT_SPEC
    assert_validates(path, capsys, GITLAB_ENV)


def test_github_remote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "local-name", "git@github.com:Octo-Org/Hello_World.git")
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    spec = spec_of(path)
    assert spec["registries"][0]["url"] == "ghcr.io/octo-org"
    assert spec["image"]["name"] == "hello_world"
    assert "from the git remote github.com/Octo-Org/Hello_World" in err
    assert f"uses: {init.ACTION}" in err
    assert_validates(path, capsys)


def test_gitlab_remote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "x", "https://user@gitlab.com/Group/Sub/My-Project.git")
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    spec = spec_of(path)
    url = "${CI_REGISTRY_IMAGE:-registry.gitlab.com/group/sub/my-project}"
    assert spec["registries"][0]["url"] == url
    assert spec["image"]["name"] == "my-project"
    assert f"remote: {init.GITLAB_TEMPLATE}" in err
    assert_validates(path, capsys)
    code, out, _ = run(["tags", "-C", str(path)], capsys)
    assert code == 0
    assert out.startswith("registry.gitlab.com/group/sub/my-project/my-project:")


def test_no_remote_pushes_to_a_local_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = repository(tmp_path / "My App!")
    code, out, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    assert out == ""
    spec = spec_of(path)
    assert spec["registries"] == ["localhost:5000"]
    assert spec["image"] == {"name": "my-app", "context": "."}
    assert "registry:2" in err and "uses:" not in err and "include:" not in err
    assert_validates(path, capsys)
    code, out, _ = run(["plan", "-C", str(path)], capsys)
    assert code == 0 and "localhost:5000/my-app:main" in out


def test_ci_variables_win_over_the_remote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = repository(tmp_path / "repo", "git@gitlab.com:acme/repo.git")
    code, _, err = run(["init", "-C", str(path)], capsys, GITHUB_ENV)
    assert code == 0, err
    assert spec_of(path)["registries"][0]["url"] == "ghcr.io/acme-corp"


def test_dockerfile_in_a_subfolder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "repo", dockerfile="")
    write(path / "node_modules" / "pkg" / "Dockerfile", "FROM scratch\n")
    write(path / ".devcontainer" / "Dockerfile", "FROM scratch\n")
    write(path / "deploy" / "docker" / "Dockerfile", "FROM scratch\n")
    write(path / "services" / "zz" / "Dockerfile", "FROM scratch\n")
    write(path / "a" / "b" / "c" / "d" / "e" / "Dockerfile", "FROM scratch\n")  # too deep
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    assert spec_of(path)["image"] == {"name": "repo", "context": "deploy/docker"}
    assert_validates(path, capsys)


def test_a_containerfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "repo", dockerfile="app/Containerfile")
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    assert spec_of(path)["image"] == {
        "name": "repo",
        "context": "app",
        "dockerfile": "Containerfile",
    }
    assert_validates(path, capsys)


def test_no_dockerfile_warns_and_still_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = repository(tmp_path / "repo", dockerfile="")
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0
    assert "warning: no Dockerfile found" in err
    assert spec_of(path)["image"] == {"name": "repo", "context": "."}
    write(path / "Dockerfile", "FROM scratch\n")
    assert_validates(path, capsys)


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = repository(tmp_path / "repo")
    write(path / "shipit.yml", "# mine\n")
    code, out, err = run(["init", "-C", str(path)], capsys)
    assert code == 2 and out == ""
    assert "already exists" in err and "--force" in err
    assert (path / "shipit.yml").read_text(encoding="utf-8") == "# mine\n"
    code, _, err = run(["init", "-C", str(path), "--force"], capsys)
    assert code == 0, err
    assert_validates(path, capsys)


def test_a_subfolder_of_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "mono", "https://github.com/acme/mono.git", dockerfile="")
    write(path / "services" / "API" / "Dockerfile", "FROM scratch\n")
    code, _, err = run(["init", "-C", str(path / "services" / "API")], capsys)
    assert code == 0, err
    assert spec_of(path / "services" / "API")["image"] == {"name": "api", "context": "."}
    workflow = yaml.safe_load(err[err.index("name: release") :])
    step = workflow["jobs"]["release"]["steps"][-1]
    assert step["with"]["working-directory"] == "services/API"
    assert_validates(path / "services" / "API", capsys)


def test_spec_file_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "repo", "git@gitlab.com:acme/repo.git")
    code, _, err = run(["init", "-C", str(path), "-f", "ci/shipit.yml"], capsys)
    assert code == 0, err
    text = (path / "ci" / "shipit.yml").read_text(encoding="utf-8")
    assert yaml.safe_load(text)["image"] == {"name": "repo", "context": ".."}
    snippet = yaml.safe_load(err[err.index("include:") :])
    assert snippet["shipit"] == {"variables": {"SHIPIT_SPEC": "ci/shipit.yml"}}
    code, _, err = run(["validate", "-C", str(path), "-f", "ci/shipit.yml"], capsys)
    assert code == 0, err


def test_a_repository_without_commits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "remote", "add", "origin", "https://github.com/acme/fresh")
    write(path / "Dockerfile", "FROM scratch\n")
    code, _, err = run(["init", "-C", str(path)], capsys)
    assert code == 0, err
    assert spec_of(path)["registries"][0]["url"] == "ghcr.io/acme"
    assert_validates(path, capsys)


def test_quiet_prints_no_snippet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repository(tmp_path / "repo", "git@github.com:acme/repo.git")
    code, out, err = run(["init", "-q", "-C", str(path)], capsys)
    assert code == 0 and out == "" and err == ""
    assert (path / "shipit.yml").is_file()


def test_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["init", "-C", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such folder" in err


# -- the pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("git@github.com:Acme/Repo.git", ("github.com", "Acme/Repo")),
        ("github.com:acme/repo", ("github.com", "acme/repo")),
        ("https://github.com/acme/repo", ("github.com", "acme/repo")),
        ("https://x-access-token:secret@github.com/acme/repo.git/", ("github.com", "acme/repo")),
        ("ssh://git@gitlab.example.org:2222/a/b/c.git", ("gitlab.example.org", "a/b/c")),
        ("git://GitHub.com/acme/repo.git", ("github.com", "acme/repo")),
        ("/srv/git/repo.git", None),
        ("file:///srv/git/repo.git", None),
        ("https://github.com/", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_remote(url: str | None, expected: tuple[str, str] | None) -> None:
    assert init.parse_remote(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("shop", "shop"),
        ("Web.Shop", "web.shop"),
        ("Hello_World", "hello_world"),
        ("My App!", "my-app"),
        ("--x--y..z__", "x-y-z"),
        ("a._b", "a-b"),
        ("_", "app"),
        ("", "app"),
        (None, "app"),
        ("Ünïcode", "n-code"),
    ],
)
def test_image_name(text: str | None, expected: str) -> None:
    assert init.image_name(text) == expected


def test_guess_order() -> None:
    github = {"GITHUB_REPOSITORY_OWNER": "Acme", "GITHUB_REPOSITORY": "Acme/Shop"}
    gitlab = {"CI_REGISTRY_IMAGE": "registry.gitlab.com/acme/shop"}
    remote = "git@gitlab.com:other/thing.git"
    assert init.guess_registry({**github, **gitlab}, remote).provider == "github"
    guess = init.guess_registry(gitlab, "git@github.com:other/thing.git")
    assert (guess.provider, guess.shown, guess.repository) == (
        "gitlab",
        "registry.gitlab.com/acme/shop",
        "shop",
    )
    guess = init.guess_registry({}, remote)
    assert (guess.provider, guess.shown, guess.repository) == (
        "gitlab",
        "registry.gitlab.com/other/thing",
        "thing",
    )
    guess = init.guess_registry({}, "https://gitlab.example.org/team/app.git")
    assert guess.shown == "registry.gitlab.example.org/team/app"
    guess = init.guess_registry({}, "git@bitbucket.org:team/app.git")
    assert (guess.provider, guess.url, guess.repository) == ("local", "localhost:5000", "app")
    # GitHub Enterprise has no ghcr.io
    assert init.guess_registry({}, "git@github.example.com:team/app.git").provider == "local"


def test_spec_text_is_the_same_for_the_same_facts() -> None:
    facts = init.Facts(registry=init.guess_registry({}, None), name="app")
    assert init.spec_text(facts) == init.spec_text(facts)
    assert init.ci_snippet(facts) == ""
    assert init.spec_text(facts).startswith("# shipit.yml, written by `shipit init`.")


def test_paths_that_need_quotes_are_quoted() -> None:
    facts = init.Facts(registry=init.guess_registry({}, None), name="app", context="my app/x")
    assert yaml.safe_load(init.spec_text(facts))["image"]["context"] == "my app/x"
    facts = init.Facts(registry=init.guess_registry({}, None), name="app", context="true")
    assert yaml.safe_load(init.spec_text(facts))["image"]["context"] == "true"


def test_the_search_is_bounded(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    write(deep / "Dockerfile", "FROM scratch\n")
    assert init.find_dockerfile(tmp_path) is None
    write(tmp_path / "a" / "b" / "c" / "d" / "Dockerfile", "FROM scratch\n")
    assert init.find_dockerfile(tmp_path) == tmp_path / "a" / "b" / "c" / "d" / "Dockerfile"
    (tmp_path / "link").symlink_to(tmp_path)  # a loop is not followed
    assert init.find_dockerfile(tmp_path) == tmp_path / "a" / "b" / "c" / "d" / "Dockerfile"
