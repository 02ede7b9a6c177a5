"""shipit against a registry with bearer tokens and scopes: distribution 2.8 with `auth: token`
and the tests' own token server (tests/support/tokenauth.py), beside the basic-auth registry.

Three accounts: `admin` (pull, push, delete), `pusher` (pull, push) and `reader` (pull). The
pipeline, a second run of the same commit, verify (cosign gets the credentials too), promote
and prune run against it; what the token server was asked for is recorded and checked.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from shipit.registry import OCI_MANIFEST, Credentials, Endpoint, Manifest, Registry, copy_image
from tests.integration.conftest import TokenRegistry
from tests.support.cli import run_shipit
from tests.support.gitrepo import add_commit, git
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory, tool_path
from tests.support.tokenauth import TokenServer, accounts, token_auth_config

pytestmark = pytest.mark.timeout(900)

REPO = "team/app"


def spec(host: str, username: str, key: Path, namespace: str = "team") -> str:
    return f"""\
version: 1
registries:
  - url: {host}/{namespace}
    username: {username}
    password_env: REGISTRY_PASSWORD
image:
  name: app
sign: {{key: {key}, tlog: false}}
retention:
  keep:
    - {{tags: '^v'}}
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


def env_for(
    token_registry: TokenRegistry, name: str, dockerd: Dockerd, home: Path, keys: KeyPair
) -> dict[str, str]:
    env = run_env(
        dockerd.host, home, REGISTRY_PASSWORD=token_registry.account(name).password,
        COSIGN_PASSWORD=keys.password,
    )  # fmt: skip
    env["PATH"] = str(Path(tool_path("cosign")).parent) + ":" + env["PATH"]
    return env


def client_as(token_registry: TokenRegistry, name: str) -> Registry:
    account = token_registry.account(name)
    credentials = Credentials(username=account.username, password=account.password)
    return Registry(Endpoint(host=token_registry.registry.host, credentials=credentials))


def open_uploads(token_registry: TokenRegistry, repository: str) -> list[Path]:
    """Upload sessions the registry still holds open (distribution keeps `startedat` and
    `data` for one; a cancelled one leaves only its hash states)."""
    uploads = token_registry.registry.root / "docker/registry/v2/repositories"
    return sorted((uploads / repository / "_uploads").glob("*/startedat"))


def shipit_asked(token_registry: TokenRegistry, name: str) -> list[tuple[str, ...]]:
    """The scope sets shipit itself (not cosign) asked the token server for, as `name`."""
    return [
        a.scope_set
        for a in token_registry.tokens.requests_by(name)
        if a.agent.startswith("shipit/")
    ]


def test_a_run_a_second_run_and_verify_with_tokens_and_nothing_left_behind(
    token_registry: TokenRegistry,
    dockerd: Dockerd,
    keys: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = token_registry.registry.host
    project = make_project(tmp_path / "project", spec(host, "admin", keys.private), tag="v1.0.0")
    git(project, "checkout", "-q", "v1.0.0")  # as CI checks out a release tag
    env = env_for(token_registry, "admin", dockerd, tmp_path, keys)
    report = tmp_path / "report.json"
    token_registry.tokens.clear()
    code, out, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 0, err
    assert "result: success" in out
    first = json.loads(report.read_text(encoding="utf-8"))["images"][0]
    asked = shipit_asked(token_registry, "admin")
    # one token per scope set: parallel uploads and manifests share them, nothing fetched twice
    assert [s for s, n in Counter(asked).items() if n > 1] == []
    assert (f"repository:{REPO}:delete",) in asked  # preflight cancelled its upload
    assert open_uploads(token_registry, REPO) == []  # and left no session open
    password = token_registry.account("admin").password
    assert password not in out + err + report.read_text(encoding="utf-8")

    token_registry.tokens.clear()
    code, out, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 0, err
    again = json.loads(report.read_text(encoding="utf-8"))["images"][0]
    assert again["digest"] == first["digest"]  # the same commit gives the same image
    assert [s for s, n in Counter(shipit_asked(token_registry, "admin")).items() if n > 1] == []
    with client_as(token_registry, "reader") as reader:
        tags = reader.tags(REPO)
        assert {"v1.0.0", "1.0.0", "latest"} <= set(tags)
        assert reader.manifest(REPO, "v1.0.0").digest == first["digest"]
        assert f"{first['digest'].replace(':', '-')}" in " ".join(tags)  # signed: cosign 3's tag

    code, out, err = run_shipit(
        ["verify", "-C", str(project), "--report", str(report)], capsys, env
    )
    assert code == 0, err + out
    assert [a for a in token_registry.tokens.asked if not a.agent.startswith("shipit/")]


def test_an_account_that_may_push_but_not_delete_runs_all_the_same(
    token_registry: TokenRegistry,
    dockerd: Dockerd,
    keys: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = token_registry.registry.host
    project = make_project(tmp_path / "project", spec(host, "pusher", keys.private))
    env = env_for(token_registry, "pusher", dockerd, tmp_path, keys)
    code, out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 0, err
    assert "result: success" in out
    granted = {g for a in token_registry.tokens.requests_by("pusher") for g in a.granted}
    assert (REPO, ()) in granted  # it asked to delete preflight's upload and was not allowed


def test_a_missing_permission_is_named_as_such_not_as_wrong_credentials(
    token_registry: TokenRegistry,
    dockerd: Dockerd,
    keys: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = token_registry.registry.host
    project = make_project(tmp_path / "project", spec(host, "reader", keys.private))
    env = env_for(token_registry, "reader", dockerd, tmp_path, keys)
    token_registry.tokens.clear()
    code, _out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 1, err
    assert "nothing was built" in err
    assert (
        f"the account 'reader' may not do it (401 insufficient_scope for repository:{REPO}" in err
    )
    assert "grant the account pull, push on team/app" in err
    assert "did not accept the credentials" not in err and "Traceback" not in err
    # asked once: a token that lacks what was asked for is not fetched again
    assert shipit_asked(token_registry, "reader").count((f"repository:{REPO}:pull,push",)) == 1

    env["REGISTRY_PASSWORD"] = "not-the-password"
    code, _out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 1
    assert "refused the credentials of 'reader'" in err and "check the username" in err


def test_promote_mounts_across_repositories_and_prune_needs_the_delete_permission(
    token_registry: TokenRegistry,
    dockerd: Dockerd,
    keys: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = token_registry.registry.host
    source = "lifecycle/app"
    as_admin = spec(host, "admin", keys.private, "lifecycle")
    project = make_project(tmp_path / "project", as_admin, tag="v2.0.0")
    git(project, "checkout", "-q", "v2.0.0")
    env = env_for(token_registry, "admin", dockerd, tmp_path, keys)
    code, _out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 0, err
    old_sha = git(project, "rev-parse", "HEAD")[:7]
    git(project, "checkout", "-q", "main")
    add_commit(project, "next")  # a build of main: the release's sha- tag is no longer HEAD's
    code, _out, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 0, err

    # promote's target is not in the spec: its credentials come from `docker login`'s file
    admin = token_registry.account("admin")
    login = base64.b64encode(f"{admin.username}:{admin.password}".encode()).decode()
    docker_config = tmp_path / ".docker" / "config.json"
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {host: {"auth": login}}}), encoding="utf-8")
    token_registry.tokens.clear()
    code, out, err = run_shipit(
        ["promote", "-C", str(project), f"{host}/{source}:v2.0.0", "--to", f"{host}/prod"],
        capsys,
        env,
    )
    assert code == 0, err + out
    mount = ("repository:lifecycle/app:pull", "repository:prod/app:pull,push")
    assert mount in shipit_asked(token_registry, "admin")  # the source's pull, with the mount
    with client_as(token_registry, "reader") as reader:
        promoted = reader.manifest("prod/app", "v2.0.0").digest
        assert promoted == reader.manifest(source, "v2.0.0").digest

    # the policy keeps `^v` tags; the release's `sha-` tag goes, which needs a delete
    (project / "shipit.yml").write_text(
        spec(host, "pusher", keys.private, "lifecycle"), encoding="utf-8"
    )
    env = env_for(token_registry, "pusher", dockerd, tmp_path, keys)
    prune = ["prune", "-C", str(project), "--apply", "--max-delete", "100%"]
    code, out, err = run_shipit(prune, capsys, env)
    assert code == 1, err
    assert "refuses deletes (401:" in err and "repository:lifecycle/app:delete" in err
    assert "the credentials were accepted" in err and "did not accept" not in err
    with client_as(token_registry, "reader") as reader:
        assert f"sha-{old_sha}" in reader.tags(source)  # nothing was deleted
    (project / "shipit.yml").write_text(as_admin, encoding="utf-8")
    env = env_for(token_registry, "admin", dockerd, tmp_path, keys)
    code, out, err = run_shipit(prune, capsys, env)
    assert code == 0, err + out
    with client_as(token_registry, "reader") as reader:
        tags = reader.tags(source)
        assert f"sha-{old_sha}" not in tags and "v2.0.0" in tags


def test_a_registry_that_honours_one_scope_a_token_request_still_takes_a_copy(
    registry_factory: RegistryFactory,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GitLab's realm and service, and its older token service that honoured only the first
    `scope` of a request: a mount's token lacks the target's push, the mount is refused
    (401 insufficient_scope), and the blobs are uploaded instead."""
    tokens = TokenServer(accounts=accounts(("ci", "pull,push")), gitlab=True).start()
    try:
        bundle = tokens.write_bundle(tmp_path_factory.mktemp("gitlab-auth") / "bundle.pem")
        registry = registry_factory(auth_config=token_auth_config(tokens, bundle))
        ci = tokens.accounts["ci"]
        credentials = Credentials(username=ci.username, password=ci.password)
        with Registry(Endpoint(host=registry.host, credentials=credentials)) as client:
            layer = client.upload_blob("group/project", b"a layer of the project's image\n")
            config = client.upload_blob("group/project", b"{}")
            document = {
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config.digest, "size": config.size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer.digest, "size": layer.size}],
            }  # fmt: skip
            manifest = Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
            client.put_manifest("group/project", "v1", manifest)
            tokens.clear()
            copy_image(client, "group/project", manifest.digest, client, "group/mirror", ["v1"])
            assert client.manifest("group/mirror", "v1").digest == manifest.digest
        mounts = [a for a in tokens.asked if len(a.scope_set) == 2]
        assert mounts and all(len(a.granted) == 1 for a in mounts)  # the first scope only
        assert tokens.realm.endswith("/jwt/auth")
    finally:
        tokens.stop()
