"""Credentials found where the containers tools look (containers-auth.json(5)), and the
registries that registries.conf marks insecure."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from shipit import containers_config, spec
from shipit.containers_config import find_auth, insecure_registries, is_listed

HOST = "registry.example:5000"


def auth_json(path: Path, entries: dict[str, tuple[str, str]], *, docker: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    auths = {
        key: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}
        for key, (user, pw) in entries.items()
    }
    path.write_text(json.dumps(auths if docker else {"auths": auths}), encoding="utf-8")
    return path


def places(tmp_path: Path) -> dict[str, Path]:
    """Every place of the lookup order, under tmp_path."""
    return {
        "REGISTRY_AUTH_FILE": tmp_path / "given" / "auth.json",
        "XDG_RUNTIME_DIR": tmp_path / "run" / "containers" / "auth.json",
        "XDG_CONFIG_HOME": tmp_path / "config" / "containers" / "auth.json",
        "DOCKER_CONFIG": tmp_path / "docker" / "config.json",
        "dockercfg": tmp_path / "home" / ".dockercfg",
    }


def lookup_env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "given" / "auth.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
    }


ORDER = ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "dockercfg"]


@pytest.mark.parametrize("first", range(len(ORDER)))
def test_the_first_file_with_an_entry_wins(tmp_path: Path, first: int) -> None:
    where = places(tmp_path)
    for index, name in enumerate(ORDER[first:], start=first):
        auth_json(where[name], {HOST: (f"user{index}", f"pw{index}")}, docker=name == "dockercfg")
    if first:  # an earlier file without an entry for the registry does not count
        auth_json(where[ORDER[0]], {"other.example": ("no", "no")})
    found = find_auth(f"{HOST}/team", lookup_env(tmp_path))
    assert found is not None
    assert (found.username, found.password) == (f"user{first}", f"pw{first}")
    assert found.source == where[ORDER[first]]
    assert f"pw{first}" not in repr(found)


def test_without_xdg_runtime_dir_the_run_containers_uid_file_is_looked_up(tmp_path: Path) -> None:
    files = dict(containers_config.auth_files({"HOME": str(tmp_path)}))
    paths = [p for _, p in containers_config.auth_files({"HOME": str(tmp_path)})]
    assert paths[0] == Path(f"/run/containers/{os.getuid()}/auth.json")
    assert paths[1] == tmp_path / ".config/containers/auth.json"
    assert paths[2] == tmp_path / ".docker/config.json"
    assert paths[3] == tmp_path / ".dockercfg"
    assert set(files) == {"containers", "docker", "dockercfg"}


def test_the_most_specific_key_wins_and_old_docker_keys_are_read(tmp_path: Path) -> None:
    path = auth_json(
        tmp_path / "auth.json",
        {HOST: ("host", "a"), f"{HOST}/team": ("team", "b"), "https://index.docker.io/v1/": ("hub", "c")},
    )  # fmt: skip
    env = {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(path), "XDG_RUNTIME_DIR": str(tmp_path)}
    assert (found := find_auth(f"{HOST}/team", env)) and found.username == "team"
    assert (found := find_auth(f"{HOST}/other", env)) and found.username == "host"
    assert (found := find_auth("docker.io/someone", env)) and found.username == "hub"
    assert find_auth("elsewhere.example", env) is None


def test_an_unreadable_file_is_passed_over(tmp_path: Path) -> None:
    where = places(tmp_path)
    where["REGISTRY_AUTH_FILE"].parent.mkdir(parents=True)
    where["REGISTRY_AUTH_FILE"].write_text("{not json", encoding="utf-8")
    auth_json(where["XDG_CONFIG_HOME"], {HOST: ("later", "pw")})
    found = find_auth(HOST, lookup_env(tmp_path))
    assert found is not None and found.username == "later"


REGISTRIES_V2 = """\
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "mirror.example/team"
location = "mirror.example/team"
insecure = true

[[registry]]
location = "secure.example"
insecure = false
"""

REGISTRIES_V1 = """\
[registries.search]
registries = ['docker.io']

[registries.insecure]
registries = ['10.0.0.1:5000', 'old.example']
"""


def test_registries_conf_v2_and_v1() -> None:
    v2 = insecure_registries(REGISTRIES_V2)
    assert v2 == {"127.0.0.1:5000", "mirror.example/team"}
    assert is_listed("127.0.0.1:5000/ns", v2)
    assert is_listed("mirror.example/team/sub", v2)
    assert not is_listed("mirror.example/other", v2)
    assert not is_listed("secure.example/x", v2)
    v1 = insecure_registries(REGISTRIES_V1)
    assert v1 == {"10.0.0.1:5000", "old.example"}
    assert is_listed("old.example/x", v1)
    with pytest.raises(ValueError, match="line 1"):
        insecure_registries("[[registry]\n")


def test_the_users_registries_conf_comes_first(tmp_path: Path) -> None:
    user = tmp_path / ".config/containers/registries.conf"
    user.parent.mkdir(parents=True)
    user.write_text(REGISTRIES_V1, encoding="utf-8")
    assert containers_config.registries_conf({"HOME": str(tmp_path)}) == user


def test_a_spec_registry_listed_insecure_becomes_insecure(tmp_path: Path) -> None:
    conf = tmp_path / ".config/containers/registries.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(REGISTRIES_V2, encoding="utf-8")
    path = tmp_path / "shipit.yml"
    text = "version: 1\nregistries: [127.0.0.1:5000/a, secure.example/b]\nimage: {name: x}\n"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    loaded = containers_config.with_insecure(spec.load(path, {}), {"HOME": str(tmp_path)})
    [image] = loaded.images
    assert [r.insecure for r in image.registries] == [True, False]
