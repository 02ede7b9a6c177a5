"""The build keys of DESIGN section 8: engines, platforms, BuildKit secrets and caches."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shipit.errors import SpecError
from shipit.spec import BuildSecret, Spec, parse


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n", encoding="utf-8")
    return tmp_path


def load(project: Path, text: str, env: dict[str, str] | None = None) -> Spec:
    return parse(textwrap.dedent(text), project / "shipit.yml", env or {"HOME": "/home/ci"})


def problems(project: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(project, text)
    return [f"{p.location.line}:{p.location.column}: {p.message}" for p in info.value.problems]


def test_the_default_engine_is_the_sdk_for_the_builders_own_platform(project: Path) -> None:
    [image] = load(project, "version: 1\nregistries: [r.io/a]\nimage: {name: app}\n").images
    build = image.build
    assert (build.engine, build.platforms, build.secrets, build.builder) == ("sdk", (), (), None)


def test_every_buildkit_key_is_read(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: [r.io/a]
        image:
          name: api
          engine: buildx
          builder: ci-farm
          platforms: [linux/amd64, linux/arm64/v8]
          secrets:
            npm_token: {env: NPM_TOKEN}
            netrc: {file: ~/.netrc}
            ca: {file: certs/ca.pem}
          ssh: [default, deploy=/keys/id]
          cache_from: [type=registry,ref=r.io/a/api:cache]
          cache_to: [type=registry,ref=r.io/a/api:cache,mode=max]
          network: none
          no_cache: true
        """,
    )
    build = spec.images[0].build
    assert build.engine == "buildx" and build.builder == "ci-farm"
    assert build.platforms == ("linux/amd64", "linux/arm64/v8")
    assert build.secrets == (
        BuildSecret(id="npm_token", env="NPM_TOKEN"),
        BuildSecret(id="netrc", file=Path("/home/ci/.netrc")),
        BuildSecret(id="ca", file=project / "certs/ca.pem"),
    )
    assert build.ssh == ("default", "deploy=/keys/id")
    assert build.cache_from == ("type=registry,ref=r.io/a/api:cache",)
    assert build.cache_to == ("type=registry,ref=r.io/a/api:cache,mode=max",)
    assert (build.network, build.no_cache) == ("none", True)


def test_platform_is_shorthand_for_one_platform_and_top_level_keys_are_defaults(
    project: Path,
) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: [r.io/a]
        engine: buildx
        platforms: [linux/amd64, linux/arm64]
        images:
          - {name: both}
          - {name: one, platform: linux/arm64}
          - {name: classic, engine: sdk}
        """,
    )
    both, one, classic = spec.images
    assert (both.build.engine, both.build.platforms) == ("buildx", ("linux/amd64", "linux/arm64"))
    assert (one.build.engine, one.build.platforms) == ("buildx", ("linux/arm64",))
    assert (classic.build.engine, classic.build.platforms) == (
        "sdk",
        ("linux/amd64", "linux/arm64"),
    )


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("{name: a, engine: kaniko}", "engine must be one of sdk, buildx"),
        ("{name: a, platform: linux/amd64, platforms: [linux/arm64]}", "either `platform:`"),
        ("{name: a, platforms: []}", "`platforms` is empty"),
        ("{name: a, platforms: [amd64]}", "platform 'amd64' must look like linux/amd64"),
        ("{name: a, platforms: [linux/amd64, linux/amd64]}", "listed twice"),
        ("{name: a, engine: buildx, secrets: {tok: hunter2}}", "never the value"),
        ("{name: a, engine: buildx, secrets: {tok: {env: 'not a name'}}}", "names a variable"),
        ("{name: a, engine: buildx, secrets: {tok: {env: A, file: b}}}", "exactly one of"),
        ("{name: a, engine: buildx, secrets: {'bad id!': {env: A}}}", "secret id 'bad id!'"),
        ("{name: a, engine: buildx, ssh: ['two words']}", "ssh entry 'two words'"),
        ("{name: a, network: bridge}", "network must be one of default, none, host"),
    ],
)
def test_bad_build_keys_are_located_problems(project: Path, image: str, expected: str) -> None:
    found = problems(project, f"version: 1\nregistries: [r.io/a]\nimage: {image}\n")
    assert any(expected in p for p in found), found
    assert all(p.split(":")[0] == "3" for p in found), found  # on the image's line


@pytest.mark.parametrize("key", ["builder: farm", "secrets: {t: {env: T}}", "ssh: [default]",
                                 "cache_to: [type=inline]"])  # fmt: skip
def test_buildkit_only_keys_under_the_sdk_say_to_set_engine_buildx(project: Path, key: str) -> None:
    found = problems(project, f"version: 1\nregistries: [r.io/a]\nimage:\n  name: a\n  {key}\n")
    name = key.partition(":")[0]
    assert found == [f"5:{len(name) + 5}: `{name}` needs BuildKit: set `engine: buildx`"]


def test_a_buildkit_cache_source_under_the_sdk_says_to_set_engine_buildx(project: Path) -> None:
    found = problems(
        project,
        "version: 1\nregistries: [r.io/a]\nimage: {name: a, cache_from: ['type=gha']}\n",
    )
    assert found == ["3:30: cache_from 'type=gha' is a BuildKit cache and needs BuildKit:"
                     " set `engine: buildx`"]  # fmt: skip


@pytest.mark.parametrize(
    ("dockerfile", "line", "what"),
    [
        ("FROM scratch\nRUN --mount=type=cache,target=/c true\n", 2, "RUN --mount"),
        ("# syntax=docker/dockerfile:1\nFROM scratch\n", 1, "a `# syntax=` directive"),
        ("FROM scratch\nRUN <<EOF\necho hi\nEOF\n", 2, "a heredoc (<<EOF)"),
        ("FROM scratch\nCOPY --link a /a\n", 2, "COPY --link"),
        ("FROM scratch\nRUN --network=none true\n", 2, "RUN --network"),
        ("FROM scratch\nrun --mount=type=secret,id=a cat /run/secrets/a\n", 2, "RUN --mount"),
    ],
)
def test_a_dockerfile_that_needs_buildkit_under_the_sdk_is_a_located_error(
    project: Path, dockerfile: str, line: int, what: str
) -> None:
    (project / "Dockerfile.bk").write_text(dockerfile, encoding="utf-8")
    text = "version: 1\nregistries: [r.io/a]\nimage:\n  name: a\n  dockerfile: Dockerfile.bk\n"
    found = problems(project, text)
    assert found == [f"5:15: Dockerfile.bk line {line} uses {what}, which needs BuildKit:"
                     " set `engine: buildx`"]  # fmt: skip
    spec = load(project, text + "  engine: buildx\n")  # the same file is fine for BuildKit
    assert spec.images[0].build.engine == "buildx"


def test_a_plain_dockerfile_is_fine_for_the_sdk(project: Path) -> None:
    (project / "Dockerfile").write_text(
        "FROM scratch\n# RUN --mount is only a comment here\nCOPY a /a\nRUN echo '<<x'\n",
        encoding="utf-8",
    )
    spec = load(project, "version: 1\nregistries: [r.io/a]\nimage: {name: a}\n")
    assert spec.images[0].build.engine == "sdk"
