"""`engine: buildah`, the pure parts: the spec's checks, the command lines, the log reader."""

from __future__ import annotations

import io
import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from shipit import proc
from shipit.errors import SpecError
from shipit.log import Console
from shipit.plan import BuildSecret, BuildSettings
from shipit.registry import OCI_MANIFEST, Manifest
from shipit.spec import Spec, parse
from shipit.spec.build import buildah_cache
from shipit.stages.build.buildah import (
    StepTracker,
    build_command,
    inspect_record,
    name_in_index,
    push_command,
)

SECRET = "s3cr3t-value-never-on-argv"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n", encoding="utf-8")
    return tmp_path


def load(project: Path, text: str) -> Spec:
    return parse(textwrap.dedent(text), project / "shipit.yml", {"HOME": "/home/ci"})


def problems(project: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(project, text)
    return [f"{p.location.line}:{p.location.column}: {p.message}" for p in info.value.problems]


def settings(**changes: object) -> BuildSettings:
    values: dict[str, object] = {
        "context": "/src/app",
        "dockerfile": "Dockerfile",
        "target": None,
        "platforms": (),
        "build_args": {},
        "labels": {},
        "pull": False,
        "cache_from": (),
        "engine": "buildah",
    }
    values.update(changes)
    return BuildSettings(**values)  # type: ignore[arg-type]


# --- the spec ---------------------------------------------------------------------------------


def test_every_key_buildah_takes_is_read(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: [r.io/a]
        isolation: oci
        image:
          name: api
          engine: buildah
          platforms: [linux/amd64, linux/arm64]
          secrets: {tok: {env: TOK}, rc: {file: .netrc}}
          ssh: [default]
          cache_from: [type=registry,ref=r.io/a/api:cache]
          cache_to: [r.io/a/api-cache]
          network: none
          no_cache: true
        """,
    )
    build = spec.images[0].build
    assert (build.engine, build.isolation, build.network) == ("buildah", "oci", "none")
    assert build.cache_from == ("type=registry,ref=r.io/a/api:cache",)
    assert [s.id for s in build.secrets] == ["tok", "rc"]


def test_isolation_is_left_to_the_engine_when_the_spec_names_none(project: Path) -> None:
    spec = load(project, "version: 1\nregistries: [r.io/a]\nimage: {name: a, engine: buildah}\n")
    assert spec.images[0].build.isolation is None


def test_a_top_level_isolation_is_only_buildahs(project: Path) -> None:
    spec = load(
        project,
        "version: 1\nregistries: [r.io/a]\nisolation: rootless\n"
        "images: [{name: a, engine: buildah}, {name: b, engine: buildx}]\n",
    )
    assert [i.build.isolation for i in spec.images] == ["rootless", None]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("{name: a, engine: buildah, builder: farm}", "3:44: `builder` is buildx's;"),
        ("{name: a, engine: buildah, cache_to: ['type=local,dest=/c']}", "3:45: cache_to"),
        ("{name: a, engine: buildah, cache_from: ['type=gha']}", "3:47: cache_from 'type=gha':"),
        ("{name: a, engine: buildah, isolation: vm}", "isolation must be one of chroot, oci"),
        ("{name: a, engine: buildx, isolation: oci}", "3:45: `isolation` is buildah's"),
        ("{name: a, engine: buildah, network: none}", "3:44: `network: none` needs"),
        ("{name: a, engine: buildah, isolation: chroot, network: none}", "`network: none` needs"),
    ],
)
def test_what_buildah_cannot_do_is_a_located_problem(
    project: Path, image: str, expected: str
) -> None:
    found = problems(project, f"version: 1\nregistries: [r.io/a]\nimage: {image}\n")
    assert any(expected in p for p in found), found


def test_network_none_builds_with_oci_isolation(project: Path) -> None:
    text = "version: 1\nregistries: [r.io/a]\nimage: {name: a, engine: buildah, isolation: oci,"
    spec = load(project, text + " network: none}\n")
    assert spec.images[0].build.network == "none"


@pytest.mark.parametrize(
    ("dockerfile", "line", "what"),
    [
        ("FROM scratch\nRUN <<EOF\necho hi\nEOF\n", 2, "a heredoc (<<EOF)"),
        ("FROM scratch\nCOPY --link a /a\n", 2, "COPY --link"),
        ("FROM scratch\nRUN --network=none true\n", 2, "RUN --network"),
        ("FROM scratch\nADD --checksum=sha256:00 a /a\n", 2, "ADD --checksum"),
    ],
)
def test_dockerfile_syntax_buildah_refuses_is_a_located_error(
    project: Path, dockerfile: str, line: int, what: str
) -> None:
    (project / "Dockerfile.x").write_text(dockerfile, encoding="utf-8")
    text = "version: 1\nregistries: [r.io/a]\nimage:\n  name: a\n  engine: buildah\n"
    found = problems(project, text + "  dockerfile: Dockerfile.x\n")
    assert found == [f"6:15: Dockerfile.x line {line} uses {what}, which buildah 1.28"
                     " (Debian 12) does not build; set `engine: buildx`"]  # fmt: skip


def test_buildah_builds_run_mount_and_ignores_a_syntax_line(project: Path) -> None:
    (project / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1\nFROM scratch\n"
        "RUN --mount=type=secret,id=tok cat /run/secrets/tok\nCOPY --chmod=755 a /a\n",
        encoding="utf-8",
    )
    spec = load(project, "version: 1\nregistries: [r.io/a]\nimage: {name: a, engine: buildah}\n")
    assert spec.images[0].build.engine == "buildah"


@pytest.mark.parametrize(
    ("entry", "repository"),
    [
        ("ghcr.io/acme/api-cache", "ghcr.io/acme/api-cache"),
        ("type=registry,ref=ghcr.io/acme/api:cache", "ghcr.io/acme/api:cache"),
        ("type=registry,ref=ghcr.io/acme/api:cache,mode=max", "ghcr.io/acme/api:cache"),
        ("type=registry", None),
        ("type=local,src=/cache", None),
        ("type=inline", None),
        ("type=registry,ref=r.io/a,compression=zstd", None),
    ],
)
def test_a_cache_entry_is_a_registry_repository_for_buildah(
    entry: str, repository: str | None
) -> None:
    assert buildah_cache(entry) == repository


# --- the command lines ------------------------------------------------------------------------


def test_the_build_command_line_names_no_value_of_an_arg_or_a_secret(tmp_path: Path) -> None:
    built = settings(
        target="runtime",
        build_args={"TOKEN_ARG": SECRET, "VERSION": "1.2.3"},
        labels={"org.opencontainers.image.version": "1.2.3"},
        secrets=(BuildSecret(id="tok", env="TOK"), BuildSecret(id="rc", file="/home/ci/.netrc")),
        ssh=("default",),
        cache_from=("type=registry,ref=r.io/a/api:cache",),
        cache_to=("r.io/a/api-cache",),
        network="host",
        no_cache=True,
        pull=True,
    )
    env = {"PATH": "/usr/bin", "TOK": SECRET}
    argv, child = build_command(
        "buildah", built, "linux/arm64", tag="r.io/a/api:1-linux-arm64",
        iidfile=tmp_path / "iid", env=env,
    )  # fmt: skip
    assert argv == [
        "buildah", "build", "--format", "oci", "--layers", "--iidfile", str(tmp_path / "iid"),
        "--isolation", "chroot",
        "--file", "/src/app/Dockerfile", "--tag", "r.io/a/api:1-linux-arm64",
        "--platform", "linux/arm64", "--target", "runtime",
        "--build-arg", "TOKEN_ARG", "--build-arg", "VERSION",
        "--label", "org.opencontainers.image.version=1.2.3",
        "--secret", "id=tok,type=env,env=TOK", "--secret", "id=rc,type=file,src=/home/ci/.netrc",
        "--ssh", "default",
        "--cache-from", "r.io/a/api:cache", "--cache-to", "r.io/a/api-cache",
        "--network", "host", "--no-cache", "--pull=always", "/src/app",
    ]  # fmt: skip
    assert not any(SECRET in arg for arg in argv)
    assert child["TOKEN_ARG"] == SECRET and child["VERSION"] == "1.2.3"
    assert env == {"PATH": "/usr/bin", "TOK": SECRET}  # the run's environment is not changed


def test_isolation_comes_from_the_spec_else_buildah_isolation_else_chroot(tmp_path: Path) -> None:
    def isolation(spec: str | None, env: dict[str, str]) -> list[str]:
        argv, _ = build_command(
            "buildah", settings(isolation=spec), None, tag="a:1", iidfile=tmp_path / "i", env=env
        )
        return (
            argv[argv.index("--isolation") : argv.index("--isolation") + 2]
            if ("--isolation" in argv)
            else []
        )

    assert isolation(None, {}) == ["--isolation", "chroot"]
    assert isolation(None, {"BUILDAH_ISOLATION": "oci"}) == []  # buildah reads it itself
    assert isolation("rootless", {"BUILDAH_ISOLATION": "oci"}) == ["--isolation", "rootless"]


def test_defaults_pull_only_what_is_missing_and_leave_the_network_alone(tmp_path: Path) -> None:
    argv, _ = build_command(
        "buildah", settings(network="default"), None, tag="a:1", iidfile=tmp_path / "i", env={}
    )
    assert "--network" not in argv and "--platform" not in argv and "--no-cache" not in argv
    assert argv[-2:] == ["--pull=false", "/src/app"]


@pytest.mark.parametrize(("docker", "name"), [(False, "oci"), (True, "v2s2")])
def test_the_push_writes_one_named_entry_of_the_layout_and_its_digest(
    tmp_path: Path, docker: bool, name: str
) -> None:
    assert push_command("buildah", "sha256:" + "a" * 64, tmp_path / "oci", "linux-arm64",
                        tmp_path / "d", docker=docker) == [
        "buildah", "push", "--format", name, "--digestfile", str(tmp_path / "d"), "--quiet",
        "sha256:" + "a" * 64, f"oci:{tmp_path / 'oci'}:linux-arm64",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "docker"),
    [
        ('HEALTHCHECK --interval=5s CMD ["true"]', True),
        ("  healthcheck NONE", True),
        ('SHELL ["/bin/bash", "-c"]', True),
        ("ONBUILD RUN make", True),
        ("RUN echo HEALTHCHECK", False),
        ("# HEALTHCHECK later", False),
        ("STOPSIGNAL SIGTERM", False),  # OCI's config has StopSignal
    ],
)
def test_a_dockerfile_with_what_only_dockers_config_holds_is_built_in_dockers_format(
    tmp_path: Path, line: str, docker: bool
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM scratch\n{line}\n", encoding="utf-8")
    built = replace(settings(), context=str(tmp_path), dockerfile="Dockerfile")
    argv, _ = build_command("buildah", built, None, tag="a:1", iidfile=tmp_path / "i", env={})
    assert argv[2:4] == ["--format", "docker" if docker else "oci"]


# --- the log and inspect -----------------------------------------------------------------------


def failed_with(lines: list[str]) -> str:
    steps = StepTracker()
    handle = steps.line_handler(Console({}, stream=io.StringIO()))
    for line in lines:
        handle(line)
    result = proc.Result(argv=("buildah",), returncode=1, stdout="\n".join(lines), stderr="",
                         seconds=0.1)  # fmt: skip
    return steps.failure("api", " for linux/arm64", proc.CommandError(result))


def test_a_failing_step_is_named_from_buildahs_error_line() -> None:
    text = failed_with([
        "STEP 1/3: FROM scratch",
        "STEP 3/3: RUN make",
        'Error: building at STEP "RUN make": while running runtime: exit status 2',
    ])  # fmt: skip
    assert text == (
        "image api for linux/arm64: step RUN make failed: while running runtime: exit status 2"
    )


def test_without_an_error_line_the_last_step_is_named() -> None:
    text = failed_with(["STEP 2/3: RUN ./a.out", "exec /a.out: exec format error"])
    assert text.startswith("image api for linux/arm64: step RUN ./a.out failed: exec /a.out")
    assert "another CPU" in text


def test_in_a_dockerfile_of_stages_the_last_step_is_named_without_its_stage() -> None:
    """buildah 1.28 puts the stage before each step of a multi-stage build (seen on this
    machine: `[2/2] STEP 3/3: COPY missing /m`)."""
    text = failed_with(["[1/2] STEP 2/2: COPY f /f", "[2/2] STEP 2/3: RUN ./a.out", "killed"])
    assert text == "image api for linux/arm64: step RUN ./a.out failed: killed"


def test_inspect_gives_a_registry_digest_only_for_an_image_from_a_registry() -> None:
    digest = "sha256:" + "d" * 64
    document = {"FromImageID": "e" * 64, "FromImageDigest": digest}
    assert inspect_record("r.io/base:1", document) == {
        "Id": "sha256:" + "e" * 64,
        "RepoDigests": [f"r.io/base@{digest}"],
    }
    assert inspect_record("localhost/made-here:1", document) == {"Id": "sha256:" + "e" * 64}
    assert inspect_record("r.io/base:1", ["not", "a", "dict"]) is None


def test_a_manifest_is_named_in_the_layouts_index_as_buildah_push_names_it(
    tmp_path: Path,
) -> None:
    """`oci:DIR:NAME` names the manifest NAME in index.json (org.opencontainers.image.ref.name);
    naming another manifest the same replaces the entry, other names stay."""

    def manifest(n: int) -> Manifest:
        return Manifest.from_bytes(json.dumps({"schemaVersion": 2, "n": n}).encode(), OCI_MANIFEST)

    name_in_index(tmp_path, manifest(1), "linux-amd64")
    name_in_index(tmp_path, manifest(2), "linux-arm64")
    name_in_index(tmp_path, manifest(3), "linux-amd64")
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["schemaVersion"] == 2
    named = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}
    assert named["linux-amd64"]["digest"] == manifest(3).digest
    assert named["linux-arm64"]["digest"] == manifest(2).digest
    assert named["linux-amd64"]["size"] == len(manifest(3).data)
    assert len(index["manifests"]) == 2
