"""When `docker buildx inspect` need not be asked: the current builder is certainly the docker
driver of the run's daemon (no BUILDX_BUILDER, no docker context chosen, no builder chosen
with `docker buildx use`); anything else, or anything unreadable, asks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipit.stages.build.probes import default_builder_is_the_daemons


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
