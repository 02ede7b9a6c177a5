"""The SLSA provenance predicate of one pushed digest (pure: no Docker, no subprocess).

`predicate()` builds the `predicate` of an in-toto statement of type
`https://slsa.dev/provenance/v1` (slsa.dev/spec/v1.0/provenance) for one digest: a platform
manifest, or the index of several. `cosign attest --type slsaprovenance1 --predicate FILE`
takes exactly this object and wraps it in the statement with the subject (the image's
repository and the digest; cosign's pkg/cosign/attestation/attestation.go, checked with
cosign 3.1). cosign reads it into in-toto-golang's typed v1 struct, so a field the v1 schema
does not have is dropped, except inside `externalParameters`, which is free-form.

The fields, as docs/provenance.md documents them for the build type BUILD_TYPE:
- `buildDefinition.externalParameters`: the spec path, image, platforms, ref, event, engine,
  Dockerfile, context and target; build args by NAME (their values only with `provenance:
  max`), build secrets by id (never a value, not even under max);
- `resolvedDependencies`: the git repository and commit (`gitCommit`), and every base image
  the build resolved, by digest, with the platform it was used for;
- `runDetails.builder.id`: the GitHub workflow ref URL, the GitLab job URL, else `local`;
  `builder.version.shipit`; `metadata`: the CI run or job as `invocationId`, and when the
  build started and finished.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from shipit import __version__
from shipit.plan import ImagePlan, Source
from shipit.stages.build.bases import BaseImage

PREDICATE_TYPE: Final = "https://slsa.dev/provenance/v1"
COSIGN_TYPE: Final = "slsaprovenance1"  # what `cosign attest --type` calls it
BUILD_TYPE: Final = "https://shipit.dev/buildtypes/image/v1"  # documented in docs/provenance.md
LOCAL_BUILDER: Final = "local"


@dataclass(frozen=True, kw_only=True)
class PlatformBuild:
    """One platform of an image, as the build made it: its name and the images it used."""

    platform: str | None  # None: one image for the builder's own platform
    bases: tuple[BaseImage, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Paths:
    """Where the build's files are, relative to the repository (see `relative`)."""

    spec: str
    context: str
    dockerfile: str


def predicate(
    image: ImagePlan,
    source: Source,
    *,
    paths: Paths,
    parts: Sequence[PlatformBuild],
    env: Mapping[str, str],
    started: datetime,
    finished: datetime,
) -> dict[str, Any]:
    """The SLSA v1 predicate for the digest made of `parts` (one platform, or all of an
    index). `env` is the run's environment (for the CI's builder and run ids)."""
    policy = image.image.sign
    mode = policy.provenance if policy else "on"
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external_parameters(image, source, paths, parts, mode=mode),
            "internalParameters": {"version": image.version.text},
            "resolvedDependencies": [source_dependency(source), *base_dependencies(parts)],
        },
        "runDetails": {
            "builder": {"id": builder_id(env), "version": {"shipit": __version__}},
            "metadata": _metadata(env, started, finished),
        },
    }


def external_parameters(
    image: ImagePlan,
    source: Source,
    paths: Paths,
    parts: Sequence[PlatformBuild],
    *,
    mode: str,
) -> dict[str, Any]:
    """What the user controls: never a secret's value; build arg values only in max mode."""
    build = image.build
    args: Any = sorted(build.build_args)
    if mode == "max":
        args = dict(sorted(build.build_args.items()))
    parameters: dict[str, Any] = {
        "spec": paths.spec,
        "image": image.name,
        "platforms": [p.platform for p in parts if p.platform],
        "ref": source.ref,
        "event": source.event,
        "engine": build.engine,
        "context": paths.context,
        "dockerfile": paths.dockerfile,
        "buildArgs": args,
        "secrets": sorted(secret.id for secret in build.secrets),
    }
    if source.repository:
        parameters["repository"] = source.repository
    if build.target:
        parameters["target"] = build.target
    return parameters


def source_dependency(source: Source) -> dict[str, Any]:
    """The git checkout: `git+URL@REF` (slsa.dev's own example) and its commit."""
    dependency: dict[str, Any] = {"name": "source", "digest": {"gitCommit": source.commit}}
    if source.repository:
        uri = f"git+{source.repository}"
        dependency["uri"] = f"{uri}@{source.ref}" if source.ref else uri
    if source.dirty:
        dependency["annotations"] = {"dirty": True}  # uncommitted changes were built too
    return dependency


def base_dependencies(parts: Iterable[PlatformBuild]) -> list[dict[str, Any]]:
    """Each base image once per platform: `pkg:docker/NAME@TAG?platform=...` and its registry
    digest; one the build did not resolve to a digest has none (and says so)."""
    found: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for part in parts:
        for base in part.bases:
            key = (base.name, base.digest, part.platform)
            if key in seen:
                continue
            seen.add(key)
            found.append(_base(base, part.platform))
    return found


def _base(base: BaseImage, platform: str | None) -> dict[str, Any]:
    name, at, pinned = base.name.partition("@")
    repository, _, tag = (name, "", "") if at else name.rpartition(":")
    version = pinned if at else tag
    uri = f"pkg:docker/{repository}@{quote(version, safe=':')}"
    if platform:
        uri += f"?platform={quote(platform, safe='')}"
    dependency: dict[str, Any] = {"uri": uri, "name": base.name}
    annotations: dict[str, Any] = {}
    if platform:
        annotations["platform"] = platform
    if base.digest:
        dependency["digest"] = {"sha256": base.digest.removeprefix("sha256:")}
    else:
        annotations["resolved"] = False
    if base.image_id:
        annotations["imageId"] = base.image_id
    if annotations:
        dependency["annotations"] = annotations
    return dependency


def builder_id(env: Mapping[str, str]) -> str:
    """GitHub: `SERVER/OWNER/REPO/.github/workflows/X.yml@REF` (GITHUB_WORKFLOW_REF); GitLab:
    the job's URL (CI_JOB_URL); anywhere else `local`."""
    if env.get("GITHUB_ACTIONS") == "true":
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        workflow = env.get("GITHUB_WORKFLOW_REF")
        if workflow:
            return f"{server.rstrip('/')}/{workflow}"
    if env.get("GITLAB_CI") == "true" and env.get("CI_JOB_URL"):
        return env["CI_JOB_URL"]
    return LOCAL_BUILDER


def invocation_id(env: Mapping[str, str]) -> str | None:
    """GitHub: the run's URL with its attempt (it holds the run id); GitLab: the job id."""
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_RUN_ID"):
        server = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
        run = f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
        attempt = env.get("GITHUB_RUN_ATTEMPT")
        return f"{run}/attempts/{attempt}" if attempt else run
    if env.get("GITLAB_CI") == "true" and env.get("CI_JOB_ID"):
        return env["CI_JOB_ID"]
    return None


def _metadata(env: Mapping[str, str], started: datetime, finished: datetime) -> dict[str, str]:
    metadata = {"startedOn": _time(started), "finishedOn": _time(finished)}
    invocation = invocation_id(env)
    if invocation:
        metadata["invocationId"] = invocation
    return metadata


def relative(path: str, root: str | None) -> str:
    """`path` (absolute) relative to the repository's top folder, with `/`; as it is when it
    lies outside (or there is no repository)."""
    if root is None:
        return path
    shown = os.path.relpath(path, root)
    if shown.startswith(".."):
        return path
    return shown.replace(os.sep, "/")


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- checking what `cosign verify-attestation` verified (pure) ----------------------------


@dataclass(frozen=True, kw_only=True)
class Expected:
    """What a verifier wants the provenance to say; None checks nothing."""

    commit: str | None = None  # the full commit id, or a prefix of at least 7 characters
    builder_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Checked:
    problems: tuple[str, ...]
    commits: tuple[str, ...]  # the source commit each provenance names
    builders: tuple[str, ...]  # the builder.id each names

    @property
    def ok(self) -> bool:
        return not self.problems


def check_verified(output: str, digest: str, expected: Expected) -> Checked:
    """Read the envelopes `cosign verify-attestation` printed (one JSON document a line,
    their signatures already verified) and check every SLSA v1 statement among them: its
    subject is `digest`, and it names the expected commit and builder."""
    problems: list[str] = []
    commits: list[str] = []
    builders: list[str] = []
    statements = [s for s in _statements(output) if s.get("predicateType") == PREDICATE_TYPE]
    if not statements:
        problems.append(f"no SLSA provenance ({PREDICATE_TYPE}) among the verified attestations")
    for statement in statements:
        if not _names_subject(statement, digest):
            problems.append(f"an attestation's subject is not {digest}")
        predicate = _mapping(statement.get("predicate"))
        commit = source_commit(predicate)
        builder = _mapping(_mapping(predicate.get("runDetails")).get("builder")).get("id")
        commits.append(commit or "-")
        builders.append(builder if isinstance(builder, str) else "-")
        if expected.commit and not _same_commit(commit, expected.commit):
            problems.append(
                f"the provenance names commit {commit or 'none'}, not {expected.commit}"
            )
        if expected.builder_id and builder != expected.builder_id:
            problems.append(f"the provenance names builder {builder}, not {expected.builder_id}")
    return Checked(problems=tuple(problems), commits=tuple(commits), builders=tuple(builders))


def source_commit(predicate: Mapping[str, Any]) -> str | None:
    """The `gitCommit` of the dependency named `source` (else the first that has one)."""
    dependencies = _mapping(predicate.get("buildDefinition")).get("resolvedDependencies")
    found = (
        [d for d in dependencies if isinstance(d, dict)] if isinstance(dependencies, list) else []
    )
    found.sort(key=lambda d: d.get("name") != "source")
    for dependency in found:
        commit = _mapping(dependency.get("digest")).get("gitCommit")
        if isinstance(commit, str) and commit:
            return commit
    return None


def _statements(output: str) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for line in output.splitlines():
        try:
            envelope = json.loads(line)
            if envelope.get("payloadType") != "application/vnd.in-toto+json":
                continue
            statement = json.loads(base64.b64decode(envelope["payload"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(statement, dict):
            found.append(statement)
    return found


def _names_subject(statement: Mapping[str, Any], digest: str) -> bool:
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        return False
    wanted = digest.removeprefix("sha256:")
    return any(_mapping(_mapping(s).get("digest")).get("sha256") == wanted for s in subjects)


def _same_commit(found: str | None, wanted: str) -> bool:
    if not found:
        return False
    found, wanted = found.lower(), wanted.lower()
    return found == wanted or (len(wanted) >= 7 and found.startswith(wanted))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
