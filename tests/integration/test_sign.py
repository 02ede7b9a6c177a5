"""The sign stage with the real cosign 3 against real registries on loopback.

Every image is made here with crane (one layer of random bytes), pushed to one registry and
copied to the others, so all of them hold the same digest. Signing runs offline: a key pair
made by `cosign generate-key-pair`, and `tlog: false`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import secrets
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipit.log import LOGGER, Console
from shipit.spec import SignPolicy
from shipit.stages import sign
from shipit.stages.sign import SignResult, SignTarget
from tests.support.keys import cosign_key_pair
from tests.support.services import Registry, RegistryFactory, make_tls_files, tool_path

# -- tools and images ----------------------------------------------------------------------


def run_tool(
    argv: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    done = subprocess.run(
        argv,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def crane(*args: str, env: Mapping[str, str] | None = None) -> str:
    # --insecure: plain HTTP, and TLS without checking (crane is only the test's helper here)
    return run_tool([tool_path("crane"), *args, "--insecure"], env=env).strip()


def auth_env(folder: Path, reg: Registry) -> dict[str, str]:
    """A DOCKER_CONFIG for the test's own tools, holding the registry's credentials."""
    folder.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    return {"DOCKER_CONFIG": str(folder)}


def repo_name() -> str:
    return f"shipit-test/sign-{secrets.token_hex(4)}"


def push_random_image(
    reg: Registry, repo: str, folder: Path, env: Mapping[str, str] | None = None
) -> str:
    """A one-layer image of random bytes at reg/repo:v1; its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = folder / "random.bin"
    payload.write_bytes(os.urandom(4096))
    layer = folder / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(payload, arcname="random.bin")
    crane("append", "-f", str(layer), "-t", f"{reg.host}/{repo}:v1", env=env)
    return crane("digest", f"{reg.host}/{repo}:v1", env=env)


def tags(reg: Registry, repo: str, env: Mapping[str, str] | None = None) -> list[str]:
    return crane("ls", f"{reg.host}/{repo}", env=env).split()


# -- keys and environments -----------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path
    password: str

    def env(self, *, path_first: Path | None = None) -> dict[str, str]:
        """What shipit gets as its environment: cosign on PATH and the key's password."""
        cosign_dir = str(Path(tool_path("cosign")).parent)
        path = [str(path_first)] if path_first else []
        return {
            "PATH": os.pathsep.join([*path, cosign_dir, os.environ.get("PATH", os.defpath)]),
            "HOME": os.environ["HOME"],
            "COSIGN_PASSWORD": self.password,
        }


def generate_keys(folder: Path) -> Keys:
    pair = cosign_key_pair(folder)
    return Keys(private=pair.private, public=pair.public, password=pair.password)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return generate_keys(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="module")
def two_registries(
    plain_registry: Registry, registry_factory: RegistryFactory
) -> tuple[Registry, Registry]:
    return plain_registry, registry_factory()


def console(env: Mapping[str, str]) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(env, verbosity=1, stream=stream), stream  # verbosity 1: commands logged too


def real_verify(keys: Keys, ref: str) -> subprocess.CompletedProcess[str]:
    """`cosign verify` as TOOLCHAIN.md gives it for an offline key and a plain-HTTP registry."""
    argv = [tool_path("cosign"), "verify", "--key", str(keys.public), "--insecure-ignore-tlog"]
    argv += ["--allow-http-registry", "--allow-insecure-registry", ref]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# -- watching what reaches the cosign processes ----------------------------------------------------


class CosignWatch:
    """A `cosign` wrapper first on PATH that records its argv and its DOCKER_CONFIG, then
    execs the real one; and a thread reading /proc/<pid>/cmdline of every cosign running.

    The wrapper waits until the thread has read its command line (the thread marks each pid
    it read in `seen/`), so every cosign is seen however fast it runs or the machine is.
    """

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.records = folder / "records"
        self.seen = folder / "seen"
        self.bin.mkdir(parents=True)
        self.records.mkdir()
        self.seen.mkdir()
        wrapper = self.bin / "cosign"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'out="{self.records}/call.$$"\n'
            'printf \'arg=%s\\n\' "$@" > "$out"\n'
            'printf \'DOCKER_CONFIG=%s\\n\' "${DOCKER_CONFIG:-}" >> "$out"\n'
            'if [ -n "${DOCKER_CONFIG:-}" ]; then\n'
            '  stat -c \'mode=%a\' "$DOCKER_CONFIG/config.json" >> "$out"\n'
            "fi\n"
            f'while [ ! -e "{self.seen}/$$" ] && [ ! -e "{self.seen}/stopped" ]; do sleep 0.01; done\n'
            f'exec "{tool_path("cosign")}" "$@"\n'
        )
        wrapper.chmod(0o755)
        self.cmdlines: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if any(arg.endswith(b"cosign") for arg in cmdline.split(b"\0")[:2]):
                    self.cmdlines[int(entry.name)] = cmdline
                    (self.seen / entry.name).touch()
            time.sleep(0.002)

    def __enter__(self) -> CosignWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        (self.seen / "stopped").touch()  # a wrapper started from now on waits for nothing
        self._stop.set()
        self._thread.join(timeout=10)

    def recorded(self) -> list[str]:
        return [p.read_text() for p in sorted(self.records.iterdir())]


@contextlib.contextmanager
def log_records() -> Iterator[list[str]]:
    """Every message logged under shipit's logger, before any masking."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


# -- the tests -------------------------------------------------------------------------------------


def test_check_signing_finds_the_installed_cosign_3(keys: Keys) -> None:
    signer = sign.check_signing(SignPolicy(key=str(keys.private), tlog=False), keys.env())
    assert signer.major == 3  # Debian's build says `GitVersion: devel`
    assert signer.mode == "key"


@pytest.mark.parametrize("fmt", ["bundle", "legacy"])
def test_one_digest_in_two_registries_is_signed_and_verifies_in_both(
    fmt: str,
    two_registries: tuple[Registry, Registry],
    keys: Keys,
    other_keys: Keys,
    tmp_path: Path,
) -> None:
    plain_registry, second_registry = two_registries
    repo = repo_name()
    digest = push_random_image(plain_registry, repo, tmp_path)
    crane("copy", f"{plain_registry.host}/{repo}:v1", f"{second_registry.host}/{repo}:v1")
    assert crane("digest", f"{second_registry.host}/{repo}:v1") == digest
    targets = [
        SignTarget(ref=f"{r.host}/{repo}@{digest}") for r in (plain_registry, second_registry)
    ]
    policy = SignPolicy(key=str(keys.private), format=fmt, tlog=False)
    env = keys.env()
    out, stream = console(env)

    signer = sign.check_signing(policy, env)
    results = sign.sign_all(
        signer, targets, policy, {"org.example.sha": "1a2b3c4", "note": "a,b"}, env=env, console=out
    )

    assert results == [SignResult(ref=t.ref, ok=True) for t in targets]
    for target in targets:
        assert f"signed {target.ref}" in stream.getvalue()
        done = real_verify(keys, target.ref)
        assert done.returncode == 0, done.stderr
        [claim] = json.loads(done.stdout)
        assert claim["critical"]["image"]["docker-manifest-digest"] == digest
        assert claim["optional"] == {"org.example.sha": "1a2b3c4", "note": "a,b"}
    assert sign.verify_all(targets, policy, env=env, console=out) == results

    wrong = sign.verify_all(
        targets, policy, env=env, console=out, public_key=str(other_keys.public)
    )
    assert [r.ok for r in wrong] == [False, False]
    for target, result in zip(targets, wrong, strict=True):
        assert result.error is not None
        assert f"could not verify {target.ref}" in result.error
        assert "signature" in result.error  # cosign's reason


def test_legacy_leaves_a_sig_tag_and_bundle_does_not(
    plain_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    env = keys.env()
    out, _ = console(env)
    found = {}
    for fmt in ("legacy", "bundle"):
        repo = repo_name()
        digest = push_random_image(plain_registry, repo, tmp_path / fmt)
        policy = SignPolicy(key=str(keys.private), format=fmt, tlog=False)
        target = SignTarget(ref=f"{plain_registry.host}/{repo}@{digest}")
        [result] = sign.sign_all(
            sign.check_signing(policy, env), [target], policy, {}, env=env, console=out
        )
        assert result.ok, result.error
        found[fmt] = (repo, digest, tags(plain_registry, repo))
    repo, digest, legacy_tags = found["legacy"]
    sig_tag = digest.replace(":", "-") + ".sig"
    assert sorted(legacy_tags) == sorted(["v1", sig_tag])
    repo, digest, bundle_tags = found["bundle"]
    assert not any(t.endswith(".sig") for t in bundle_tags)
    # distribution 2.8 has no referrers API: cosign 3 keeps an index under the fallback tag
    fallback = digest.replace(":", "-")
    assert sorted(bundle_tags) == sorted([fallback, "v1"])
    index = json.loads(crane("manifest", f"{plain_registry.host}/{repo}:{fallback}"))
    [entry] = index["manifests"]
    referrer = json.loads(crane("manifest", f"{plain_registry.host}/{repo}@{entry['digest']}"))
    assert referrer["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert referrer["subject"]["digest"] == digest


def test_registry_credentials_never_reach_a_command_line_or_a_log(
    auth_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    assert auth_registry.username is not None
    assert auth_registry.password is not None
    password = auth_registry.password
    repo = repo_name()
    digest = push_random_image(
        auth_registry, repo, tmp_path / "image", auth_env(tmp_path / "dc", auth_registry)
    )
    target = SignTarget(
        ref=f"{auth_registry.host}/{repo}@{digest}",
        username=auth_registry.username,
        password=password,
    )
    policy = SignPolicy(key=str(keys.private), format="legacy", tlog=False)
    with CosignWatch(tmp_path / "watch") as watch:
        env = keys.env(path_first=watch.bin)
        out, stream = console(env)
        with log_records() as messages:
            signer = sign.check_signing(policy, env)
            assert signer.cosign == str(watch.bin / "cosign")
            signed = sign.sign_all(signer, [target], policy, {}, env=env, console=out)
            verified = sign.verify_all([target], policy, env=env, console=out)

    assert signed == [SignResult(ref=target.ref, ok=True)]
    assert verified == [SignResult(ref=target.ref, ok=True)]
    assert digest.replace(":", "-") + ".sig" in tags(
        auth_registry, repo, auth_env(tmp_path / "dc2", auth_registry)
    )
    recorded = watch.recorded()
    runs = [r for r in recorded if target.ref in r]
    assert len(runs) == 2  # sign, verify
    seen = [c for c in watch.cmdlines.values() if target.ref.encode() in c]
    assert seen, "the /proc watcher saw no cosign signing or verifying"
    for secret in (password, keys.password):
        assert secret not in stream.getvalue()
        assert not [m for m in messages if secret in m]
        assert not [r for r in recorded if secret in r]
        assert not [c for c in watch.cmdlines.values() if secret.encode() in c]
    assert any(f"+ {signer.cosign} sign" in m for m in messages)  # the commands were logged
    for run in runs:
        config_line = next(line for line in run.splitlines() if line.startswith("DOCKER_CONFIG="))
        folder = Path(config_line.removeprefix("DOCKER_CONFIG="))
        assert folder.name.startswith("shipit-cosign-")
        assert "mode=600" in run.splitlines()
        assert not folder.exists()  # removed afterwards


def test_a_wrong_registry_password_fails_naming_the_ref_without_showing_it(
    auth_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    assert auth_registry.username is not None
    repo = repo_name()
    digest = push_random_image(
        auth_registry, repo, tmp_path, auth_env(tmp_path / "dc", auth_registry)
    )
    wrong = "wrong-" + secrets.token_urlsafe(12)
    target = SignTarget(
        ref=f"{auth_registry.host}/{repo}@{digest}", username=auth_registry.username, password=wrong
    )
    policy = SignPolicy(key=str(keys.private), tlog=False)
    env = keys.env()
    out, stream = console(env)
    [result] = sign.sign_all(
        sign.check_signing(policy, env), [target], policy, {}, env=env, console=out
    )
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"sign: cosign could not sign {target.ref}: ")
    assert "UNAUTHORIZED" in result.error
    assert wrong not in result.error
    assert wrong not in stream.getvalue()
    assert f"error: sign: cosign could not sign {target.ref}" in stream.getvalue()


def test_the_users_own_docker_config_is_used_when_the_spec_gives_no_credentials(
    auth_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    user_config = auth_env(tmp_path / "user-docker", auth_registry)
    repo = repo_name()
    digest = push_random_image(auth_registry, repo, tmp_path, user_config)
    target = SignTarget(ref=f"{auth_registry.host}/{repo}@{digest}")
    policy = SignPolicy(key=str(keys.private), tlog=False)
    env = {**keys.env(), **user_config}
    out, _ = console(env)
    [result] = sign.sign_all(
        sign.check_signing(policy, env), [target], policy, {}, env=env, console=out
    )
    assert result.ok, result.error


def test_a_tls_registry_is_trusted_through_its_ca_file(
    tls_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    assert tls_registry.ca_file is not None
    repo = repo_name()
    digest = push_random_image(tls_registry, repo, tmp_path)
    target = SignTarget(ref=f"{tls_registry.host}/{repo}@{digest}", ca_file=tls_registry.ca_file)
    assert sign.registry_flags(target) == []  # TLS is checked, with the CA
    policy = SignPolicy(key=str(keys.private), tlog=False)
    env = keys.env()
    out, _ = console(env)
    signer = sign.check_signing(policy, env)
    assert sign.sign_all(signer, [target], policy, {}, env=env, console=out) == [
        SignResult(ref=target.ref, ok=True)
    ]
    assert sign.verify_all([target], policy, env=env, console=out) == [
        SignResult(ref=target.ref, ok=True)
    ]

    other_ca, _, _ = make_tls_files(tmp_path / "other-ca")
    untrusted = SignTarget(ref=target.ref, ca_file=other_ca)
    [result] = sign.sign_all(signer, [untrusted], policy, {}, env=env, console=out)
    assert not result.ok
    assert result.error is not None
    assert "x509" in result.error or "certificate" in result.error


def test_a_key_held_in_an_environment_variable(
    plain_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    repo = repo_name()
    digest = push_random_image(plain_registry, repo, tmp_path)
    target = SignTarget(ref=f"{plain_registry.host}/{repo}@{digest}")
    env = {**keys.env(), "SHIPIT_TEST_COSIGN_KEY": keys.private.read_text()}
    policy = SignPolicy(key="env://SHIPIT_TEST_COSIGN_KEY", tlog=False)
    out, stream = console(env)
    signer = sign.check_signing(policy, env)
    assert sign.sign_all(signer, [target], policy, {}, env=env, console=out)[0].ok
    # verify_all derives the public key with `cosign public-key --key env://...`
    assert sign.verify_all([target], policy, env=env, console=out)[0].ok
    assert real_verify(keys, target.ref).returncode == 0
    assert "PRIVATE KEY" not in stream.getvalue()


def test_a_signing_config_without_a_log_signs_offline_and_asks_no_tuf(
    plain_registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    """A private Sigstore without a transparency log, in files made by cosign itself: the
    preflight and cosign need no service (every proxied request would go to a closed port),
    and with the trusted root cosign does not even try the TUF repository."""
    repo = repo_name()
    digest = push_random_image(plain_registry, repo, tmp_path)
    target = SignTarget(ref=f"{plain_registry.host}/{repo}@{digest}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {**keys.env(), "HOME": str(tmp_path), "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy}
        config, trusted = tmp_path / "signing-config.json", tmp_path / "trusted-root.json"
        run_tool([tool_path("cosign"), "signing-config", "create", "--out", str(config)], env=env)
        run_tool([tool_path("cosign"), "trusted-root", "create", "--out", str(trusted)], env=env)
        policy = SignPolicy(
            key=str(keys.private), tlog=False, signing_config=config, trusted_root=trusted
        )
        out, stream = console(env)
        signer = sign.check_signing(policy, env)
        sign.prove_signing([(signer, policy)], env=env, console=out)
        signed = sign.sign_all(signer, [target], policy, {}, env=env, console=out)
        verified = sign.verify_all([target], policy, env=env, console=out)
    assert signed == [SignResult(ref=target.ref, ok=True)]
    assert verified == [SignResult(ref=target.ref, ok=True)]
    assert f"the signing key {keys.private} opens" in stream.getvalue()
    assert "TUF" not in stream.getvalue()  # shipit warned of no TUF repository either
    assert not (tmp_path / ".sigstore").exists()  # cosign never even opened its TUF cache
    assert real_verify(keys, target.ref).returncode == 0
