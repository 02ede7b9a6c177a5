"""When `docker buildx inspect` need not be asked: the current builder is certainly the docker
driver of the run's daemon (no BUILDX_BUILDER, no docker context chosen, no builder chosen
with `docker buildx use`); anything else, or anything unreadable, asks it. And when `docker
buildx version` need not be asked again: it passed with the same CLI and plugin files. And
that buildx runs as the docker CLI would run it, without the CLI's start, when that is safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipit.proc import ToolMissing
from shipit.stages.build.probes import (
    _SYSTEM_PLUGIN_DIRS,
    buildx_stamp,
    check_buildx,
    default_builder_is_the_daemons,
    direct,
)


def config(tmp_path: Path, *, current_context: str | None = None,
           buildx_current: object = None) -> dict[str, str]:  # fmt: skip
    folder = tmp_path / "docker-config"
    (folder / "buildx").mkdir(parents=True)
    if current_context is not None:
        (folder / "config.json").write_text(json.dumps({"currentContext": current_context}))
    if buildx_current is not None:
        text = buildx_current if isinstance(buildx_current, str) else json.dumps(buildx_current)
        (folder / "buildx" / "current").write_text(text)
    return {"DOCKER_CONFIG": str(folder)}


def test_a_fresh_docker_config_is_the_daemons_builder(tmp_path: Path) -> None:
    assert default_builder_is_the_daemons(config(tmp_path))
    assert default_builder_is_the_daemons({"HOME": str(tmp_path / "nobody")})


def test_buildx_use_default_is_the_daemons_builder(tmp_path: Path) -> None:
    # what `docker buildx use default` wrote with buildx 0.29.1
    current = {"Key": "unix:///var/run/docker.sock", "Name": "", "Global": False}
    assert default_builder_is_the_daemons(config(tmp_path, buildx_current=current))
    assert default_builder_is_the_daemons(config(tmp_path / "b", current_context="default"))


@pytest.mark.parametrize(
    ("env", "context", "current"),
    [
        ({"BUILDX_BUILDER": "ci"}, None, None),
        ({"DOCKER_CONTEXT": "remote"}, None, None),
        ({}, "remote", None),
        ({}, None, {"Key": "unix:///var/run/docker.sock", "Name": "ci", "Global": False}),
        ({}, None, "not json"),
        ({}, None, ["a list"]),
    ],
)
def test_anything_else_asks_buildx(
    tmp_path: Path, env: dict[str, str], context: str | None, current: object
) -> None:
    assert not default_builder_is_the_daemons(
        {**config(tmp_path, current_context=context, buildx_current=current), **env}
    )


def fake_docker(tmp_path: Path, version: str = "v0.29.1") -> tuple[dict[str, str], Path, Path]:
    """A docker CLI that logs each start and a buildx plugin in the config's cli-plugins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "starts.log"
    docker = bin_dir / "docker"
    docker.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\necho "github.com/docker/buildx {version} abc"\n'
    )
    docker.chmod(0o755)
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    plugin = plugins / "docker-buildx"
    plugin.write_bytes(b"buildx 0.29.1")
    env = {"PATH": str(bin_dir), "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    return env, log, plugin


def starts(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_buildx_check_that_passed_is_not_made_again_while_the_files_are_the_same(
    tmp_path: Path,
) -> None:
    env, log, plugin = fake_docker(tmp_path)
    passed = tmp_path / "cache" / "probes"
    check_buildx(env, passed)
    check_buildx(env, passed)
    assert starts(log) == 1  # the second check was remembered
    plugin.write_bytes(b"buildx 0.30.0, another binary")  # another size: another stamp
    check_buildx(env, passed)
    assert starts(log) == 2
    check_buildx(env)  # no cache folder: asked every time
    assert starts(log) == 3


def test_what_cannot_be_told_for_sure_is_asked_every_time(tmp_path: Path) -> None:
    env, _, plugin = fake_docker(tmp_path)
    docker = str(tmp_path / "bin" / "docker")
    assert buildx_stamp(docker, env) is not None
    (tmp_path / "docker-config" / "config.json").write_text('{"cliPluginsExtraDirs": ["/x"]}')
    assert buildx_stamp(docker, env) is None  # another folder may hold another docker-buildx
    (tmp_path / "docker-config" / "config.json").unlink()
    plugin.unlink()  # found nowhere the test can see (a system folder may still hold one)
    if not any(Path(d, "docker-buildx").exists() for d in _SYSTEM_PLUGIN_DIRS):
        assert buildx_stamp(docker, env) is None


def test_a_failed_or_too_old_buildx_is_never_remembered(tmp_path: Path) -> None:
    env, log, _ = fake_docker(tmp_path, version="v0.9.0")
    passed = tmp_path / "cache" / "probes"
    for _ in range(2):
        with pytest.raises(ToolMissing, match=r"docker buildx v0\.9\.0 is too old"):
            check_buildx(env, passed)
    assert starts(log) == 2
    assert not passed.exists() or not list(passed.iterdir())


def plugin_mode(tmp_path: Path, *, docker_is_a_program: bool = True) -> tuple[dict[str, str], Path]:
    """A docker CLI (an ELF program's first bytes, or a script) and a buildx plugin that logs
    how it was started: its arguments, and the CLI it was told of."""
    env, log, plugin = fake_docker(tmp_path)
    if docker_is_a_program:
        (tmp_path / "bin" / "docker").write_bytes(b"\x7fELF, never started by these tests")
    plugin.write_text(
        f'#!/bin/sh\necho "$DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND | $*" >> {log}\n'
        'echo "github.com/docker/buildx v0.29.1 abc"\n'
    )
    plugin.chmod(0o755)
    return env, log


def test_buildx_runs_as_the_docker_cli_would_run_it_without_the_clis_start(
    tmp_path: Path,
) -> None:
    env, log = plugin_mode(tmp_path)
    docker = str(tmp_path / "bin" / "docker")
    plugin = str(tmp_path / "docker-config" / "cli-plugins" / "docker-buildx")
    argv, child = direct([docker, "--context", "ci", "buildx", "build", "."], env)
    assert argv == [plugin, "--context", "ci", "buildx", "build", "."]
    assert child == {**env, "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND": docker}
    assert check_buildx(env) == docker  # the plugin answered in the CLI's place
    assert log.read_text().splitlines() == [f"{docker} | buildx version"]


def test_buildx_goes_through_the_cli_when_its_plugin_is_not_known_for_sure(
    tmp_path: Path,
) -> None:
    env, _ = plugin_mode(tmp_path)
    docker = str(tmp_path / "bin" / "docker")
    (tmp_path / "docker-config" / "config.json").write_text('{"cliPluginsExtraDirs": ["/x"]}')
    assert direct([docker, "buildx", "version"], env) == ([docker, "buildx", "version"], env)
    # a `docker` that is a script (podman-docker's runs podman) is run as it is
    env, log = plugin_mode(tmp_path / "podman", docker_is_a_program=False)
    script = str(tmp_path / "podman" / "bin" / "docker")
    assert direct([script, "buildx", "version"], env) == ([script, "buildx", "version"], env)
    check_buildx(env)
    assert log.read_text().splitlines() == ["buildx version"]  # the script's own log line
