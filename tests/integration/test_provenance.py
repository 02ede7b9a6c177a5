"""SLSA provenance through whole runs: real dockerd (both engines), real registries on
loopback, real cosign 3 signing offline with a throwaway key (`tlog: false`).

Every pushed digest (each platform manifest and the index) carries a signed
`https://slsa.dev/provenance/v1` attestation next to it, which plain `cosign
verify-attestation` accepts in every registry; it names HEAD and the base images by digest;
build arg values only under `provenance: max`, and a build secret's value never, in the
attestations or anywhere in the registries' storage; the image index lists images only.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.buildkit import Emulation, busybox, busybox_context
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory, tool_path
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(900)

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
TOOLS_PATH = str(Path(tool_path("cosign")).parent)
# the Dockerfile shape both platforms build with the classic builder (see COMMON.md)
TWO_PLATFORM_DOCKERFILE = """\
FROM scratch
COPY busybox-amd64 busybox-arm64 /bin/
ARG TARGETARCH
RUN ["/bin/busybox-amd64","sh","-c","/bin/busybox-amd64 cp /bin/busybox-$TARGETARCH /bin/busybox && /bin/busybox rm /bin/busybox-amd64 /bin/busybox-arm64 && /bin/busybox --install -s /bin"]
ARG GREETING
"""


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="module")
def registries(
    plain_registry: RunningRegistry, registry_factory: RegistryFactory
) -> tuple[RunningRegistry, RunningRegistry]:
    return plain_registry, registry_factory()


def env_for(dockerd: Dockerd, home: Path, **extra: str) -> dict[str, str]:
    env = run_env(dockerd.host, home, **extra)
    env["PATH"] = TOOLS_PATH + os.pathsep + env["PATH"]
    return env


def tool(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(
        list(argv),
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def crane(*args: str) -> str:
    return tool(tool_path("crane"), *args, "--insecure").strip()


def cosign_flags() -> list[str]:
    return ["--insecure-ignore-tlog", "--allow-http-registry", "--allow-insecure-registry"]


def verify_attestation(public: Path, ref: str) -> subprocess.CompletedProcess[str]:
    """Plain `cosign verify-attestation`, as a consumer runs it (the command docs/signing.md gives)."""
    argv = [tool_path("cosign"), "verify-attestation", "--type", "slsaprovenance1"]
    argv += ["--key", str(public), *cosign_flags(), ref]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def statements(stdout: str) -> list[dict[str, Any]]:
    """The in-toto statements of the envelopes cosign printed, one JSON document a line."""
    found = []
    for line in stdout.splitlines():
        envelope = json.loads(line)
        assert envelope["payloadType"] == "application/vnd.in-toto+json"
        found.append(json.loads(base64.b64decode(envelope["payload"])))
    return found


def provenance_of(public: Path, ref: str) -> tuple[dict[str, Any], str]:
    """The one SLSA v1 statement attested to ref (verified with `public`), and the raw
    envelopes cosign printed."""
    done = verify_attestation(public, ref)
    assert done.returncode == 0, done.stderr
    [statement] = [s for s in statements(done.stdout) if s["predicateType"] == PREDICATE_TYPE]
    return statement, done.stdout


def stored_digests(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(repository, digest, manifest entry) of every manifest every registry holds."""
    return [
        (registry["repository"], manifest["digest"], manifest)
        for image in document["images"]
        for registry in image["registries"]
        for manifest in registry["manifests"]
    ]


def registry_bytes(registry: RunningRegistry) -> Iterator[bytes]:
    """Every blob in the registry's storage, gzip layers uncompressed."""
    for path in registry.root.rglob("data"):
        data = path.read_bytes()
        yield gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def report(project: Path) -> dict[str, Any]:
    return json.loads((project / "shipit-report.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def make_executable(project: Path, names: list[str]) -> None:
    """chmod +x the busybox binaries and commit that, so the tree stays clean."""
    for name in names:
        (project / name).chmod(0o755)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "executable busybox")


def push_base_image(dockerd: Dockerd, registry: RunningRegistry, folder: Path) -> tuple[str, str]:
    """A FROM scratch image pushed to registry; its name and its registry digest."""
    folder.mkdir(parents=True)
    (folder / "base.txt").write_text(secrets.token_hex(8), encoding="utf-8")
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY base.txt /base.txt\n", encoding="utf-8")
    name = f"{registry.host}/bases/base-{secrets.token_hex(3)}:1"
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_BUILDKIT": "0"}
    tool("docker", "build", "-q", "-t", name, str(folder), env=env)
    tool("docker", "push", "-q", name, env=env)
    return name, crane("digest", name)


# -- one platform, a base image, two registries -------------------------------------------


@pytest.mark.parametrize("mode", ["true", "max"])
def test_every_digest_in_every_registry_carries_verifiable_provenance(
    mode: str,
    tmp_path: Path,
    dockerd: Dockerd,
    registries: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registries
    base, base_digest = push_base_image(dockerd, first, tmp_path / "base")
    greeting = "greeting-" + secrets.token_hex(12)
    namespace = f"prov-{mode}-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{first.host}/{namespace}, {second.host}/{namespace}]
image: {{name: hello, build_args: {{GREETING: {greeting}}}}}
sign: {{key: {keys.private}, tlog: false, provenance: {mode}}}
"""
    dockerfile = f"FROM {base}\nARG GREETING\nCOPY hello.txt /hello.txt\n"
    project = make_project(tmp_path / "project", spec, dockerfile=dockerfile)
    head = git(project, "rev-parse", "HEAD")
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, out, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    document = report(project)
    assert document["source"]["commit"] == head
    assert document["builder_id"] == "local"
    digests = stored_digests(document)
    assert len(digests) == 2  # one manifest in each registry
    for repository, digest, entry in digests:
        assert entry == {"digest": digest, "signed": True, "attested": True}
        statement, envelopes = provenance_of(keys.public, f"{repository}@{digest}")
        assert statement["subject"] == [
            {"name": repository, "digest": {"sha256": digest.removeprefix("sha256:")}}
        ]
        predicate = statement["predicate"]
        definition = predicate["buildDefinition"]
        assert definition["buildType"] == "https://shipit.dev/buildtypes/image/v1"
        source, *bases = definition["resolvedDependencies"]
        assert source == {"name": "source", "digest": {"gitCommit": head}}
        assert [b["digest"] for b in bases] == [{"sha256": base_digest.removeprefix("sha256:")}]
        assert bases[0]["name"] == base
        parameters = definition["externalParameters"]
        assert parameters["image"] == "hello"
        assert parameters["spec"] == "shipit.yml"
        assert parameters["dockerfile"] == "Dockerfile"
        assert parameters["event"] == "push"
        assert parameters["ref"] == "refs/heads/main"
        assert predicate["runDetails"]["builder"] == {"id": "local", "version": {"shipit": "0.1.0"}}
        metadata = predicate["runDetails"]["metadata"]
        assert metadata["startedOn"] <= metadata["finishedOn"]
        if mode == "max":
            assert parameters["buildArgs"] == {"GREETING": greeting}
            assert greeting in base64.b64decode(json.loads(envelopes)["payload"]).decode()
        else:
            assert parameters["buildArgs"] == ["GREETING"]
            decoded = [
                base64.b64decode(json.loads(line)["payload"]) for line in envelopes.splitlines()
            ]
            assert not [d for d in decoded if greeting.encode() in d]
    if mode == "true":  # the value is in no blob of either registry (image config included)
        for registry in registries:
            assert not [b for b in registry_bytes(registry) if greeting.encode() in b]

    code, out, err = run_shipit(["verify", "-C", str(project)], capsys, env)
    assert code == 0, err
    verified = [line.split()[-1] for line in out.splitlines() if line.startswith("verified")]
    assert sorted(verified) == sorted(f"{r}@{d}" for r, d, _ in digests)  # the ref comes last
    assert out.count(f"provenance: commit {head[:12]}, builder local") == 2


# -- two platforms (sdk engine), an index -------------------------------------------------


def test_two_platforms_each_manifest_and_the_index_are_attested_and_the_index_lists_images_only(
    tmp_path: Path,
    dockerd: Dockerd,
    registries: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    qemu_arm64: Emulation,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registries
    namespace = f"prov-multi-{secrets.token_hex(3)}"
    greeting = "greeting-" + secrets.token_hex(12)
    spec = f"""\
version: 1
registries: [{first.host}/{namespace}, {second.host}/{namespace}]
image:
  name: multi
  platforms: [linux/amd64, linux/arm64]
  build_args: {{GREETING: {greeting}}}
sign: {{key: {keys.private}, tlog: false}}
"""
    files = {f"busybox-{arch}": busybox(arch).read_bytes() for arch in ("amd64", "arm64")}
    project = make_project(
        tmp_path / "project", spec, dockerfile=TWO_PLATFORM_DOCKERFILE, files=files
    )
    make_executable(project, list(files))
    head = git(project, "rev-parse", "HEAD")
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    document = report(project)
    [image] = document["images"]
    platform_of = {p["digest"]: p["platform"] for p in image["platforms"]}
    assert sorted(platform_of.values()) == ["linux/amd64", "linux/arm64"]
    digests = stored_digests(document)
    assert len(digests) == 6  # two platform manifests and the index, in each registry
    for repository, digest, entry in digests:
        assert entry["signed"] and entry["attested"], entry
        statement, envelopes = provenance_of(keys.public, f"{repository}@{digest}")
        assert statement["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}
        definition = statement["predicate"]["buildDefinition"]
        assert definition["resolvedDependencies"] == [
            {"name": "source", "digest": {"gitCommit": head}}
        ]  # FROM scratch: no base image
        parameters = definition["externalParameters"]
        if digest == image["digest"]:
            assert parameters["platforms"] == ["linux/amd64", "linux/arm64"]
        else:
            assert parameters["platforms"] == [platform_of[digest]]
        assert parameters["buildArgs"] == ["GREETING"]
        assert greeting not in base64.b64decode(json.loads(envelopes)["payload"]).decode()

    for registry in registries:
        ref = f"{registry.host}/{namespace}/multi@{image['digest']}"
        index = json.loads(crane("manifest", ref))
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        listed = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
        assert sorted(listed) == [("linux", "amd64"), ("linux", "arm64")]  # no unknown/unknown
        assert not [
            m for m in index["manifests"] if "vnd.docker.reference.type" in m.get("annotations", {})
        ]
        assert sorted(m["digest"] for m in index["manifests"]) == sorted(platform_of)
        assert not [b for b in registry_bytes(registry) if greeting.encode() in b]


# -- buildx with a build secret: its value is nowhere ---------------------------------------


def test_a_build_secret_is_never_in_the_provenance_nor_in_any_blob_even_under_max(
    tmp_path: Path,
    dockerd: Dockerd,
    registries: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registries
    namespace = f"prov-secret-{secrets.token_hex(3)}"
    token = "tok-" + secrets.token_hex(16)
    greeting = "greeting-" + secrets.token_hex(12)
    spec = f"""\
version: 1
registries: [{first.host}/{namespace}, {second.host}/{namespace}]
image:
  name: secretive
  engine: buildx
  build_args: {{GREETING: {greeting}}}
  secrets: {{tok: {{env: TOK}}}}
sign: {{key: {keys.private}, tlog: false, provenance: max}}
"""
    context = busybox_context(
        tmp_path / "context",
        arches=("amd64",),
        steps=[
            "ARG GREETING",
            "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && wc -c < /run/secrets/tok > /secret-size",
        ],
    )
    files = {p.name: p.read_bytes() for p in context.iterdir() if p.name != "Dockerfile"}
    dockerfile = (context / "Dockerfile").read_text(encoding="utf-8")
    project = make_project(tmp_path / "project", spec, dockerfile=dockerfile, files=files)
    make_executable(project, list(files))
    head = git(project, "rev-parse", "HEAD")
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password, TOK=token)

    code, out, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    assert token not in out + err
    document = report(project)
    assert token not in json.dumps(document)
    digests = stored_digests(document)
    assert len(digests) == 2
    for repository, digest, entry in digests:
        assert entry["attested"], entry
        statement, envelopes = provenance_of(keys.public, f"{repository}@{digest}")
        parameters = statement["predicate"]["buildDefinition"]["externalParameters"]
        assert parameters["engine"] == "buildx"
        assert parameters["secrets"] == ["tok"]  # by id only
        assert parameters["buildArgs"] == {"GREETING": greeting}  # max: values of build args
        assert source_commit(statement) == head
        raw = envelopes + "".join(
            base64.b64decode(json.loads(line)["payload"]).decode()
            for line in envelopes.splitlines()
        )
        assert token not in raw
    for registry in registries:
        blobs = list(registry_bytes(registry))
        assert blobs
        assert not [b for b in blobs if token.encode() in b]


def source_commit(statement: dict[str, Any]) -> str:
    [source] = [
        d
        for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        if d.get("name") == "source"
    ]
    return str(source["digest"]["gitCommit"])


# -- shipit verify refuses what it must -----------------------------------------------------


def test_shipit_verify_fails_for_another_key_or_another_commit_and_passes_the_real_one(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    keys: KeyPair,
    other_keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"prov-verify-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{plain_registry.host}/{namespace}]
image: {{name: hello}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = make_project(tmp_path / "project", spec)
    head = git(project, "rev-parse", "HEAD")
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)
    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)
    assert code == 0, err
    [(repository, digest, _)] = stored_digests(report(project))
    good_ref = f"{repository}@{digest}"
    statement, _ = provenance_of(keys.public, good_ref)

    def forged(tag: str, *, attest_with: KeyPair, commit: str) -> str:
        """A new image in the same repository, signed with the right key, whose provenance
        is attested by hand with `attest_with` and names `commit`."""
        folder = tmp_path / tag
        folder.mkdir()
        (folder / "random.bin").write_bytes(os.urandom(2048))
        tool("tar", "-C", str(folder), "-cf", str(folder / "layer.tar"), "random.bin")
        crane("append", "-f", str(folder / "layer.tar"), "-t", f"{repository}:{tag}")
        ref = f"{repository}@{crane('digest', f'{repository}:{tag}')}"
        predicate = json.loads(json.dumps(statement["predicate"]))
        predicate["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"] = commit
        path = folder / "predicate.json"
        path.write_text(json.dumps(predicate), encoding="utf-8")
        offline = ["--use-signing-config=false", "--tlog-upload=false", "--yes"]
        cosign = tool_path("cosign")
        registry_flags = ["--allow-http-registry", "--allow-insecure-registry"]
        tool(cosign, "sign", "--key", str(keys.private), *offline, *registry_flags, ref,
             env={"COSIGN_PASSWORD": keys.password})  # fmt: skip
        tool(cosign, "attest", "--type", "slsaprovenance1", "--predicate", str(path),
             "--key", str(attest_with.private), *offline, *registry_flags, ref,
             env={"COSIGN_PASSWORD": attest_with.password})  # fmt: skip
        return ref

    wrong_key = forged("wrong-key", attest_with=other_keys, commit=head)
    wrong_commit = forged("wrong-commit", attest_with=keys, commit="0" * 40)
    verify = ["verify", "-C", str(project), "--key", str(keys.public)]

    code, out, err = run_shipit([*verify, "--source-commit", head, good_ref], capsys, env)
    assert code == 0, err
    assert "verified" in out

    code, out, err = run_shipit([*verify, "--source-commit", head, wrong_key], capsys, env)
    assert code == 1
    assert f"FAILED    {wrong_key}" in out
    assert "verify-attestation" not in err or "could not" in err
    code, out, err = run_shipit([*verify, "--no-provenance", wrong_key], capsys, env)
    assert code == 0, err  # its signature itself is good: only the attestation is foreign

    code, out, err = run_shipit([*verify, "--source-commit", head, wrong_commit], capsys, env)
    assert code == 1
    assert f"names commit {'0' * 40}, not {head}" in err
    code, out, err = run_shipit([*verify, "--source-commit", "0" * 40, wrong_commit], capsys, env)
    assert code == 0, err

    code, out, err = run_shipit(["verify", "-C", str(project)], capsys, env)  # from the report
    assert code == 0, err
    code, out, err = run_shipit(
        ["verify", "-C", str(project), "--builder-id", "https://ci.example/other"], capsys, env
    )
    assert code == 1
    assert "names builder local, not https://ci.example/other" in err


# -- a failed attestation: nothing is tagged ------------------------------------------------


def image_tags(registry: RunningRegistry, repository: str) -> list[str]:
    """The tags of a repository, leaving out cosign's referrers fallback (`sha256-<hex>`)."""
    listed = crane("ls", f"{registry.host}/{repository}").split()
    return [t for t in listed if not t.startswith("sha256-")]


def test_a_failed_attestation_leaves_every_registry_untagged(
    tmp_path: Path,
    dockerd: Dockerd,
    registries: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registries
    namespace = f"prov-fail-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{first.host}/{namespace}, {second.host}/{namespace}]
image: {{name: hello}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = make_project(tmp_path / "project", spec)
    wrapper = tmp_path / "bin" / "cosign"
    wrapper.parent.mkdir()
    wrapper.write_text(  # the real cosign, except that `cosign attest` fails
        "#!/bin/sh\n"
        'if [ "$1" = attest ]; then echo "Error: the attestation store is down" >&2; exit 1; fi\n'
        f'exec "{tool_path("cosign")}" "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)
    env["PATH"] = f"{wrapper.parent}{os.pathsep}{env['PATH']}"

    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 1
    assert "the attestation store is down" in err
    assert "nothing was tagged in any registry" in err
    document = report(project)
    assert document["images"][0]["error"] == "the provenance attestation failed"
    digests = stored_digests(document)
    assert len(digests) == 2
    assert all(entry["signed"] and not entry["attested"] for _, _, entry in digests)
    for registry in registries:
        assert image_tags(registry, f"{namespace}/hello") == []


def test_a_build_arg_holding_a_secret_is_never_attested_under_max(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"prov-leak-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{plain_registry.host}/{namespace}]
image: {{name: hello, build_args: {{PASSWORD: "{{{{ env.COSIGN_PASSWORD }}}}"}}}}
sign: {{key: {keys.private}, tlog: false, provenance: max}}
"""
    project = make_project(tmp_path / "project", spec)
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, out, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 1
    assert "would hold a secret's value" in err
    assert keys.password not in out + err
    assert image_tags(plain_registry, f"{namespace}/hello") == []
    assert not [b for b in registry_bytes(plain_registry) if keys.password.encode() in b]


# -- buildx: the base image's digest, pulled by BuildKit or taken from the daemon ----------


@pytest.mark.parametrize("where", ["pulled", "in-the-daemon"])
def test_buildx_records_the_base_image_digest_it_resolved(
    where: str,
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, base_digest = push_base_image(dockerd, plain_registry, tmp_path / "base")
    if where == "pulled":  # BuildKit fetches it and prints `FROM NAME@DIGEST`
        tool("docker", "rmi", base, env={"DOCKER_HOST": dockerd.host})
    namespace = f"prov-bx-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{plain_registry.host}/{namespace}]
image: {{name: hello, engine: buildx}}
sign: {{key: {keys.private}, tlog: false}}
"""
    dockerfile = f"FROM {base}\nCOPY hello.txt /hello.txt\n"
    project = make_project(tmp_path / "project", spec, dockerfile=dockerfile)
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    if where == "pulled":
        assert f"FROM {base}@{base_digest}" in err
    [(repository, digest, _)] = stored_digests(report(project))
    statement, _ = provenance_of(keys.public, f"{repository}@{digest}")
    _, base_dependency = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert base_dependency["name"] == base
    assert base_dependency["digest"] == {"sha256": base_digest.removeprefix("sha256:")}


def test_the_legacy_format_keeps_the_provenance_under_the_att_tag(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"prov-legacy-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{plain_registry.host}/{namespace}]
image: {{name: hello}}
sign: {{key: {keys.private}, tlog: false, format: legacy}}
"""
    project = make_project(tmp_path / "project", spec)
    head = git(project, "rev-parse", "HEAD")
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    [(repository, digest, entry)] = stored_digests(report(project))
    assert entry["attested"]
    hexdigest = digest.removeprefix("sha256:")
    listed = crane("ls", f"{repository}").split()
    assert f"sha256-{hexdigest}.att" in listed and f"sha256-{hexdigest}.sig" in listed
    statement, _ = provenance_of(keys.public, f"{repository}@{digest}")
    assert source_commit(statement) == head
    code, out, err = run_shipit(["verify", "-C", str(project)], capsys, env)
    assert code == 0, err
    assert f"provenance: commit {head[:12]}" in out


def stored_manifests(registry: RunningRegistry, repository: str) -> set[str]:
    """Every manifest the registry's storage holds for `repository`, tagged or not
    (distribution 2.8 keeps a revision link per manifest; a deleted one loses it)."""
    revisions = registry.root / "docker/registry/v2/repositories" / repository / "_manifests"
    return {f"sha256:{p.parent.name}" for p in revisions.glob("revisions/sha256/*/link")}


def test_the_referrers_index_the_attestation_replaced_is_deleted_where_the_registry_deletes(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Signing writes the referrers index `sha256-<hex>` (signature), attesting replaces it
    (signature + attestation); the first index must not stay behind untagged where the
    registry deletes, and where it does not (405) the run is no less a success."""
    deleting, keeping = registry_factory(), registry_factory(delete=False)
    namespace = f"prov-replaced-{secrets.token_hex(3)}"
    spec = f"""\
version: 1
registries: [{deleting.host}/{namespace}, {keeping.host}/{namespace}]
image: {{name: hello}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = make_project(tmp_path / "project", spec)
    env = env_for(dockerd, tmp_path, COSIGN_PASSWORD=keys.password)

    code, _, err = run_shipit(["run", "-C", str(project)], capsys, env)

    assert code == 0, err
    assert "warning" not in err and "error" not in err, err
    [(_, digest, _), _] = stored_digests(report(project))
    index_tag = digest.replace(":", "-")
    held = {}
    for registry in (deleting, keeping):
        repository = f"{registry.host}/{namespace}/hello"
        index = crane("digest", f"{repository}:{index_tag}")
        listed = json.loads(crane("manifest", f"{repository}:{index_tag}"))["manifests"]
        assert len(listed) == 2  # the signature and the provenance attestation
        held[registry.host] = stored_manifests(registry, f"{namespace}/hello") - {
            digest,
            index,
            *(m["digest"] for m in listed),
        }
        assert provenance_of(keys.public, f"{repository}@{digest}")
    assert held[deleting.host] == set()
    assert len(held[keeping.host]) == 1  # the index cosign sign wrote, left untagged
    assert f"deleted 1 attachment manifest that cosign replaced in {deleting.host}/" in err
    said = [line for line in err.splitlines() if "attachment manifest" in line]
    assert not [line for line in said if keeping.host in line]  # 405: nothing to tell
