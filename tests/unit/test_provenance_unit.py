"""The provenance's pure parts: the spec key, Dockerfile bases, the predicate, the checks of
what `cosign verify-attestation` verified, and the command lines (no Docker, no cosign)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shipit.context import GitFacts, History, Overrides, resolve
from shipit.errors import SpecError
from shipit.plan import ImagePlan, Source, make_plan
from shipit.spec import SignPolicy, parse
from shipit.stages import provenance, sign
from shipit.stages.build.bases import BaseImage, base_from_inspect, normalize_ref
from shipit.stages.build.dockerfile import base_images, expand, instructions
from shipit.stages.provenance import Expected, Paths, PlatformBuild

SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
DIGEST = "sha256:" + "ab" * 32
BASE_DIGEST = "sha256:" + "cd" * 32
STARTED = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
FINISHED = datetime(2024, 3, 1, 12, 3, 30, tzinfo=UTC)
GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW_REF": "acme/shop/.github/workflows/release.yml@refs/tags/v1.2.3",
    "GITHUB_RUN_ID": "9876",
    "GITHUB_RUN_ATTEMPT": "2",
}
GITLAB = {
    "GITLAB_CI": "true",
    "CI_JOB_URL": "https://gitlab.com/acme/shop/-/jobs/55",
    "CI_JOB_ID": "55",
}


# -- the spec --------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    return tmp_path


def sign_policy(project: Path, sign_text: str) -> SignPolicy | None:
    text = f"version: 1\nregistries: [a.io/b]\nimage: {{name: app}}\nsign: {sign_text}\n"
    return parse(text, project / "shipit.yml", {}).images[0].sign


@pytest.mark.parametrize(
    ("written", "mode"),
    [("{key: k}", "on"), ("{key: k, provenance: true}", "on"), ("{key: k, provenance: false}", "off"),
     ("{key: k, provenance: max}", "max"), ("{key: k, provenance: MAX}", "max")],
)  # fmt: skip
def test_provenance_is_on_whenever_signing_is(project: Path, written: str, mode: str) -> None:
    (project / "k").write_text("key", encoding="utf-8")
    policy = sign_policy(project, written)
    assert policy is not None
    assert policy.provenance == mode


def test_a_bad_provenance_value_is_located(project: Path) -> None:
    (project / "k").write_text("key", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        sign_policy(project, "{key: k, provenance: full}")
    [problem] = info.value.problems
    assert (problem.location.line, problem.location.column) == (4, 28)
    assert "provenance must be one of true, false, max, not 'full'" in problem.message


# -- the Dockerfile's base images ------------------------------------------------------------


DOCKERFILE = """\
# escape=`
ARG BASE=alpine:3.19
ARG GO
FROM ${BASE} AS build
RUN <<EOF
FROM not-an-image
EOF
COPY --from=ghcr.io/astral-sh/uv:0.4 /uv /bin/
FROM --platform=$TARGETPLATFORM golang:${GO:-1.22} `
    AS tools
FROM build AS final
COPY --from=tools /go /go
COPY --from=0 /x /x
FROM scratch AS export
COPY --from=busybox:1.36 /bin/busybox /busybox
"""


def test_instructions_join_continuations_and_skip_heredocs_and_comments() -> None:
    words = [word for word, _ in instructions(DOCKERFILE)]
    assert words == [
        "ARG",
        "ARG",
        "FROM",
        "RUN",
        "COPY",
        "FROM",
        "FROM",
        "COPY",
        "COPY",
        "FROM",
        "COPY",
    ]


def test_variables_expand_as_the_dockerfile_reference_says() -> None:
    values = {"A": "a", "E": ""}
    assert (
        expand("$A-${A}-${B:-dflt}-${A:+set}-${E:+no}-${E:-empty}", values) == "a-a-dflt-set--empty"
    )


def test_buildkit_counts_only_the_stages_the_target_needs() -> None:
    assert base_images(DOCKERFILE, {}, target=None, buildkit=True) == ("busybox:1.36",)
    assert base_images(DOCKERFILE, {"GO": "1.23"}, target="final", buildkit=True) == (
        "alpine:3.19",
        "ghcr.io/astral-sh/uv:0.4",
        "golang:1.23",
    )


def test_the_classic_builder_builds_every_stage_up_to_the_target() -> None:
    assert base_images(DOCKERFILE, {"BASE": "debian:12"}, target="tools", buildkit=False) == (
        "debian:12",
        "ghcr.io/astral-sh/uv:0.4",
        "golang:1.22",
    )


def test_from_scratch_has_no_base_and_undeclared_args_do_not_expand() -> None:
    assert base_images("FROM scratch\nCOPY a /a\n", {}, target=None, buildkit=True) == ()
    text = "FROM ${IMAGE}\n"
    assert base_images(text, {"IMAGE": "alpine"}, target=None, buildkit=True) == ()
    automatic = {"TARGETARCH": "arm64"}
    found = base_images(
        "FROM app:${TARGETARCH}\n", {}, automatic=automatic, target=None, buildkit=True
    )
    assert found == ("app:arm64",)


@pytest.mark.parametrize(
    ("name", "full"),
    [("alpine", "docker.io/library/alpine:latest"), ("alpine:3.19", "docker.io/library/alpine:3.19"),
     ("acme/app", "docker.io/acme/app:latest"), ("127.0.0.1:5000/x/y:1", "127.0.0.1:5000/x/y:1"),
     ("localhost/app", "localhost/app:latest"), (f"ghcr.io/a/b:1@{DIGEST}", f"ghcr.io/a/b@{DIGEST}")],
)  # fmt: skip
def test_image_names_are_normalised(name: str, full: str) -> None:
    assert normalize_ref(name) == full


def test_a_daemon_inspect_gives_the_repository_digest_and_the_id() -> None:
    inspected = {
        "Id": "sha256:" + "11" * 32,
        "RepoDigests": [f"other/thing@{'sha256:' + '22' * 32}", f"alpine@{BASE_DIGEST}"],
    }
    assert base_from_inspect("alpine:3.19", inspected) == BaseImage(
        name="docker.io/library/alpine:3.19", digest=BASE_DIGEST, image_id="sha256:" + "11" * 32
    )
    assert base_from_inspect("alpine:3.19", None) == BaseImage(name="docker.io/library/alpine:3.19")
    assert base_from_inspect(f"alpine@{DIGEST}", None).digest == DIGEST  # pinned in the Dockerfile
    built_here = base_from_inspect("mybase:1", {"Id": "sha256:" + "33" * 32, "RepoDigests": []})
    assert built_here.digest is None and built_here.image_id == "sha256:" + "33" * 32


# -- the predicate ---------------------------------------------------------------------------


SPEC = """\
version: 1
registries: [ghcr.io/acme]
image:
  name: shop
  platforms: [linux/amd64, linux/arm64]
  target: runtime
  build_args: {API_URL: "https://api.example", TOKENISH: "{{ env.TOKENISH }}"}
sign: {key: k, provenance: PROVENANCE}
"""


def image_plan(
    project: Path, mode: str, env: dict[str, str] | None = None
) -> tuple[ImagePlan, Source]:
    (project / "k").write_text("key", encoding="utf-8")
    spec = parse(SPEC.replace("PROVENANCE", mode), project / "shipit.yml", {})
    facts = GitFacts(
        head=SHA,
        branch="main",
        history=History(head=SHA, parents={SHA: ()}),
        origin_url="git@github.com:acme/shop.git",
        root=project,
    )
    ctx = resolve(facts, {"TOKENISH": "value-of-tokenish", **(env or {})}, Overrides())
    plan = make_plan(spec, ctx)
    assert plan.source is not None
    return plan.images[0], plan.source


def build(plan: ImagePlan, source: Source, parts: list[PlatformBuild], env: dict[str, str]) -> Any:
    paths = Paths(spec="shipit.yml", context=".", dockerfile="Dockerfile")
    return provenance.predicate(
        plan, source, paths=paths, parts=parts, env=env, started=STARTED, finished=FINISHED
    )


ALPINE = BaseImage(name="docker.io/library/alpine:3.19", digest=BASE_DIGEST)
LOCAL = BaseImage(name="docker.io/library/mybase:1", image_id="sha256:" + "33" * 32)


def test_the_predicate_of_a_platform_manifest(project: Path) -> None:
    plan, source = image_plan(project, "true")
    document = build(
        plan, source, [PlatformBuild(platform="linux/arm64", bases=(ALPINE, LOCAL))], GITHUB
    )
    assert document == {
        "buildDefinition": {
            "buildType": "https://shipit.dev/buildtypes/image/v1",
            "externalParameters": {
                "spec": "shipit.yml",
                "image": "shop",
                "platforms": ["linux/arm64"],
                "ref": "refs/heads/main",
                "event": "push",
                "engine": "sdk",
                "context": ".",
                "dockerfile": "Dockerfile",
                "buildArgs": ["API_URL", "TOKENISH"],
                "secrets": [],
                "repository": "https://github.com/acme/shop",
                "target": "runtime",
            },
            "internalParameters": {"version": plan.version.text},
            "resolvedDependencies": [
                {
                    "name": "source",
                    "uri": "git+https://github.com/acme/shop@refs/heads/main",
                    "digest": {"gitCommit": SHA},
                },
                {
                    "uri": "pkg:docker/docker.io/library/alpine@3.19?platform=linux%2Farm64",
                    "name": "docker.io/library/alpine:3.19",
                    "digest": {"sha256": "cd" * 32},
                    "annotations": {"platform": "linux/arm64"},
                },
                {
                    "uri": "pkg:docker/docker.io/library/mybase@1?platform=linux%2Farm64",
                    "name": "docker.io/library/mybase:1",
                    "annotations": {
                        "platform": "linux/arm64",
                        "resolved": False,
                        "imageId": "sha256:" + "33" * 32,
                    },
                },
            ],
        },
        "runDetails": {
            "builder": {
                "id": "https://github.com/acme/shop/.github/workflows/release.yml@refs/tags/v1.2.3",
                "version": {"shipit": "0.1.0"},
            },
            "metadata": {
                "startedOn": "2024-03-01T12:00:00Z",
                "finishedOn": "2024-03-01T12:03:30Z",
                "invocationId": "https://github.com/acme/shop/actions/runs/9876/attempts/2",
            },
        },
    }
    assert "value-of-tokenish" not in json.dumps(document)


def test_max_mode_gives_build_arg_values_and_the_index_lists_every_platform(project: Path) -> None:
    plan, source = image_plan(project, "max")
    parts = [
        PlatformBuild(platform="linux/amd64", bases=(ALPINE,)),
        PlatformBuild(platform="linux/arm64", bases=(ALPINE,)),
    ]
    document = build(plan, source, parts, GITLAB)
    parameters = document["buildDefinition"]["externalParameters"]
    assert parameters["buildArgs"] == {
        "API_URL": "https://api.example",
        "TOKENISH": "value-of-tokenish",
    }
    assert parameters["platforms"] == ["linux/amd64", "linux/arm64"]
    bases = document["buildDefinition"]["resolvedDependencies"][1:]
    assert [b["annotations"]["platform"] for b in bases] == ["linux/amd64", "linux/arm64"]
    assert document["runDetails"]["builder"]["id"] == "https://gitlab.com/acme/shop/-/jobs/55"
    assert document["runDetails"]["metadata"]["invocationId"] == "55"


def test_outside_ci_the_builder_is_local_and_a_dirty_tree_is_said(project: Path) -> None:
    plan, _ = image_plan(project, "true")
    dirty = Source(repository=None, commit=SHA, ref=None, event="push", dirty=True)
    document = build(plan, dirty, [PlatformBuild(platform=None)], {})
    assert document["runDetails"]["builder"]["id"] == "local"
    assert "invocationId" not in document["runDetails"]["metadata"]
    assert document["buildDefinition"]["resolvedDependencies"] == [
        {"name": "source", "digest": {"gitCommit": SHA}, "annotations": {"dirty": True}}
    ]
    assert document["buildDefinition"]["externalParameters"]["platforms"] == []


def test_build_secrets_appear_by_id_only(project: Path) -> None:
    (project / "k").write_text("key", encoding="utf-8")
    text = SPEC.replace("PROVENANCE", "max").replace(
        "  target: runtime\n", "  engine: buildx\n  secrets: {npm: {env: NPM_TOKEN}}\n"
    )
    spec = parse(text, project / "shipit.yml", {})
    ctx = resolve(
        GitFacts(head=SHA, branch="main", history=History(head=SHA, parents={SHA: ()})),
        {"TOKENISH": "t"},
        Overrides(),
    )
    plan = make_plan(spec, ctx)
    assert plan.source is not None
    document = build(plan.images[0], plan.source, [PlatformBuild(platform=None)], {})
    parameters = document["buildDefinition"]["externalParameters"]
    assert parameters["secrets"] == ["npm"]
    assert "NPM_TOKEN" not in json.dumps(document)


def test_paths_are_shown_relative_to_the_repository() -> None:
    assert (
        provenance.relative("/repo/services/api/shipit.yml", "/repo") == "services/api/shipit.yml"
    )
    assert provenance.relative("/repo", "/repo") == "."
    assert provenance.relative("/elsewhere/Dockerfile", "/repo") == "/elsewhere/Dockerfile"
    assert provenance.relative("/x/Dockerfile", None) == "/x/Dockerfile"


# -- checking what cosign verified -----------------------------------------------------------


def envelope(
    predicate: dict[str, Any], digest: str = DIGEST, kind: str = provenance.PREDICATE_TYPE
) -> str:
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [
            {"name": "ghcr.io/acme/shop", "digest": {"sha256": digest.removeprefix("sha256:")}}
        ],
        "predicateType": kind,
        "predicate": predicate,
    }
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(
        {"payloadType": "application/vnd.in-toto+json", "payload": payload, "signatures": []}
    )


def predicate_naming(commit: str, builder: str = "local") -> dict[str, Any]:
    return {
        "buildDefinition": {
            "resolvedDependencies": [{"name": "source", "digest": {"gitCommit": commit}}]
        },
        "runDetails": {"builder": {"id": builder}},
    }


def test_a_statement_naming_the_digest_commit_and_builder_passes() -> None:
    checked = provenance.check_verified(
        envelope(predicate_naming(SHA)), DIGEST, Expected(commit=SHA[:7], builder_id="local")
    )
    assert checked.ok
    assert checked.commits == (SHA,)
    assert checked.builders == ("local",)


def test_another_commit_another_builder_or_another_subject_fail() -> None:
    other = "0" * 40
    checked = provenance.check_verified(
        envelope(predicate_naming(other)), DIGEST, Expected(commit=SHA)
    )
    assert checked.problems == (f"the provenance names commit {other}, not {SHA}",)
    checked = provenance.check_verified(
        envelope(predicate_naming(SHA, "https://evil.example")),
        DIGEST,
        Expected(builder_id="local"),
    )
    assert checked.problems == ("the provenance names builder https://evil.example, not local",)
    checked = provenance.check_verified(
        envelope(predicate_naming(SHA), BASE_DIGEST), DIGEST, Expected()
    )
    assert checked.problems == (f"an attestation's subject is not {DIGEST}",)
    assert not provenance.check_verified(
        envelope(predicate_naming(SHA)), DIGEST, Expected(commit="1a2b")
    ).ok


def test_every_provenance_must_agree_and_other_types_do_not_count() -> None:
    both = envelope(predicate_naming(SHA)) + "\n" + envelope(predicate_naming("0" * 40))
    assert not provenance.check_verified(both, DIGEST, Expected(commit=SHA)).ok
    sbom_only = envelope({"bomFormat": "CycloneDX"}, kind="https://cyclonedx.org/bom")
    checked = provenance.check_verified(sbom_only + "\nnot json\n", DIGEST, Expected())
    assert checked.problems == (
        "no SLSA provenance (https://slsa.dev/provenance/v1) among the verified attestations",
    )


# -- the cosign command lines ------------------------------------------------------------------


def test_attest_and_verify_attestation_commands(tmp_path: Path) -> None:
    signer = sign.Signer(mode="key", key="cosign.key", cosign="/bin/cosign", major=3)
    target = sign.SignTarget(ref=f"127.0.0.1:5000/a/b@{DIGEST}")
    policy = SignPolicy(key="cosign.key", tlog=False)
    predicate = tmp_path / "p.json"
    argv = sign.attest_command(
        signer, target, policy, predicate, {}, predicate_type="slsaprovenance1"
    )
    assert argv == [
        "/bin/cosign", "attest", "--type", "slsaprovenance1", "--predicate", str(predicate),
        "--yes", "--timeout=300s", "--key", "cosign.key", "--use-signing-config=false",
        "--tlog-upload=false",
        "--allow-http-registry", "--allow-insecure-registry", target.ref,
    ]  # fmt: skip
    verify = sign.verify_command(
        "/bin/cosign", 3, target, policy, "cosign.pub", attestation="slsaprovenance1"
    )
    assert verify == [
        "/bin/cosign", "verify-attestation", "--type", "slsaprovenance1", "--key", "cosign.pub",
        "--insecure-ignore-tlog", "--allow-http-registry", "--allow-insecure-registry", target.ref,
    ]  # fmt: skip
    keyless = SignPolicy(identity="https://github.com/acme/", oidc_issuer="https://token.example")
    argv = sign.verify_command(
        "/bin/cosign", 3, target, keyless, None, attestation="slsaprovenance1"
    )
    assert argv[:4] == ["/bin/cosign", "verify-attestation", "--type", "slsaprovenance1"]
    assert argv[4:8] == [
        "--certificate-identity-regexp", "https://github.com/acme/",
        "--certificate-oidc-issuer", "https://token.example",
    ]  # fmt: skip


def test_buildkit_progress_names_the_digest_each_pulled_base_resolved_to() -> None:
    import io

    from shipit.log import Console
    from shipit.stages.build.buildx import _StepTracker

    tracker = _StepTracker()
    handle = tracker.line_handler(Console({}, stream=io.StringIO()))
    for line in (
        f"#5 [1/2] FROM 127.0.0.1:5000/x/base:1@{DIGEST}",
        f"#6 [linux/arm64 build 1/3] FROM docker.io/library/alpine:3.19@{BASE_DIGEST}",
        "#7 [2/2] FROM local-only:1",  # from the daemon's store: no digest here
        "#8 resolve docker.io/library/alpine:3.19 0.1s done",
    ):
        handle(line)
    assert tracker.resolved == {
        (None, "127.0.0.1:5000/x/base:1"): DIGEST,
        ("linux/arm64", "docker.io/library/alpine:3.19"): BASE_DIGEST,
    }
