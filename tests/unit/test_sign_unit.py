"""The sign stage without a registry: command lines, child environments, decisions.

cosign itself is replaced here by a small fake (a Python script named `cosign` on PATH) that
records its argv and environment and answers `version --json` and `sign --help` as each
cosign release does; tests/integration/test_sign.py runs the real one.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from shipit import proc
from shipit.errors import EXIT_USAGE, UsageError
from shipit.log import Console
from shipit.spec import SignPolicy
from shipit.stages import sign
from shipit.stages.sign import Signer, SignTarget

DIGEST = "sha256:" + "ab" * 32
REF = f"registry.example.com/team/app@{DIGEST}"
LOOPBACK_REF = f"127.0.0.1:5000/team/app@{DIGEST}"
COSIGN = "/opt/cosign/bin/cosign"
KEY_PASSWORD = "key-password-7f3a"
REGISTRY_PASSWORD = "registry-password-91c2"
GITLAB_TOKEN = "eyJhbGciOi.gitlab-token.sig"
GITHUB_REQUEST_TOKEN = "github-request-token-5e6d"
PEM_KEY = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nc2VjcmV0\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"  # fmt: skip

TIMEOUT = "--timeout=300s"  # sign.timeout's default, for cosign itself

GITHUB_ENV = {
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://pipelines.actions.example/token",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": GITHUB_REQUEST_TOKEN,
}
GITLAB_ENV = {"SIGSTORE_ID_TOKEN": GITLAB_TOKEN}

# what `cosign sign --help` shows about the flags that tell the versions apart
HELP_V3 = """\
    --upload=true:
\twhether to upload the signature

    --use-signing-config=true:
\twhether to use a TUF-provided signing config for the service URLs

    -y, --yes=false:
\tskip confirmation prompts for non-destructive operations
"""
HELP_V2_6 = """\
    --new-bundle-format=false:
\texpect the signature/attestation to be packaged in a Sigstore bundle

    --tlog-upload=true:
\twhether or not to upload to the tlog

    --use-signing-config=false:
\twhether to use a TUF-provided signing config for the service URLs
"""
HELP_V2_4 = """\
    --tlog-upload=true:
\twhether or not to upload to the tlog

    -y, --yes=false:
\tskip confirmation prompts for non-destructive operations
"""
DEVEL_JSON = json.dumps({"gitVersion": "devel", "gitCommit": "unknown"})


def key_signer(major: int = 3, key: str = "/keys/cosign.key") -> Signer:
    return Signer(mode="key", key=key, cosign=COSIGN, major=major)


def keyless_signer(major: int = 3) -> Signer:
    return Signer(mode="keyless", key=None, cosign=COSIGN, major=major)


def sign_argv(
    signer: Signer,
    target: SignTarget | None = None,
    policy: SignPolicy | None = None,
    annotations: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    return sign.sign_command(
        signer,
        target or SignTarget(ref=REF),
        policy or SignPolicy(key=signer.key),
        annotations or {},
        env or {},
    )


# -- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "registry.example.com/team/app:1.2.3",
        "registry.example.com/team/app",
        f"registry.example.com/team/app:1.2.3@{DIGEST}",
        "registry.example.com/team/app@sha256:abc",
        f"registry.example.com/team/app@{DIGEST.upper()}",
        f" {REF}",
    ],
)
def test_a_tag_or_anything_but_a_digest_is_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        SignTarget(ref=ref)


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        (REF, "registry.example.com"),
        (LOOPBACK_REF, "127.0.0.1:5000"),
        (f"localhost/app@{DIGEST}", "localhost"),
        (f"myorg/app@{DIGEST}", "docker.io"),
        (f"busybox@{DIGEST}", "docker.io"),
    ],
)
def test_the_registry_host_is_read_as_docker_reads_it(ref: str, host: str) -> None:
    assert SignTarget(ref=ref).host == host


def test_credentials_come_in_pairs_and_the_password_stays_out_of_repr() -> None:
    with pytest.raises(ValueError, match="username and a password"):
        SignTarget(ref=REF, username="ci")
    target = SignTarget(ref=REF, username="ci", password=REGISTRY_PASSWORD)
    assert REGISTRY_PASSWORD not in repr(target)


# -- `cosign sign` command lines -------------------------------------------------------------


def test_key_file_bundle_with_the_log_is_cosign_3_defaults() -> None:
    assert sign_argv(key_signer()) == [
        COSIGN, "sign", "--yes", TIMEOUT, "--key", "/keys/cosign.key", REF
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("major", "fmt", "tlog", "flags"),
    [
        (3, "bundle", True, []),
        (3, "bundle", False, ["--use-signing-config=false", "--tlog-upload=false"]),
        (3, "legacy", True, ["--new-bundle-format=false", "--use-signing-config=false"]),
        (
            3,
            "legacy",
            False,
            ["--new-bundle-format=false", "--use-signing-config=false", "--tlog-upload=false"],
        ),
        (4, "bundle", False, ["--use-signing-config=false", "--tlog-upload=false"]),
        (2, "bundle", True, ["--new-bundle-format=true"]),
        (2, "bundle", False, ["--new-bundle-format=true", "--tlog-upload=false"]),
        (2, "legacy", True, []),
        (2, "legacy", False, ["--tlog-upload=false"]),
    ],
)
def test_format_and_log_flags_follow_the_cosign_major_version(
    major: int, fmt: str, tlog: bool, flags: list[str]
) -> None:
    policy = SignPolicy(key="/keys/cosign.key", format=fmt, tlog=tlog)
    assert sign.sign_format_flags(major, policy) == flags
    argv = sign_argv(key_signer(major), policy=policy)
    assert argv == [COSIGN, "sign", "--yes", TIMEOUT, "--key", "/keys/cosign.key", *flags, REF]


SC = Path("/sigstore/signing-config.json")
TR = Path("/sigstore/trusted-root.json")


@pytest.mark.parametrize(
    ("major", "policy", "flags"),
    [
        # a signing config file replaces the TUF one and names (or leaves out) the log itself
        (3, SignPolicy(signing_config=SC), ["--signing-config", str(SC)]),
        (3, SignPolicy(signing_config=SC, tlog=False), ["--signing-config", str(SC)]),
        (
            3,
            SignPolicy(signing_config=SC, trusted_root=TR),
            ["--signing-config", str(SC), "--trusted-root", str(TR)],
        ),
        (
            2,
            SignPolicy(signing_config=SC),
            ["--new-bundle-format=true", "--signing-config", str(SC)],
        ),
        # a Rekor of one's own: cosign 3 takes a URL only without the TUF signing config
        (
            3,
            SignPolicy(rekor_url="https://rekor.internal"),
            ["--use-signing-config=false", "--rekor-url", "https://rekor.internal"],
        ),
        (
            3,
            SignPolicy(rekor_url="https://rekor.internal", format="legacy"),
            [
                "--new-bundle-format=false",
                "--use-signing-config=false",
                "--rekor-url",
                "https://rekor.internal",
            ],
        ),
        (
            2,
            SignPolicy(rekor_url="https://rekor.internal", format="legacy"),
            ["--rekor-url", "https://rekor.internal"],
        ),
        # without the log there is no Rekor to name
        (
            3,
            SignPolicy(rekor_url="https://rekor.internal", tlog=False),
            ["--use-signing-config=false", "--tlog-upload=false"],
        ),
        (3, SignPolicy(trusted_root=TR), ["--trusted-root", str(TR)]),
    ],
)
def test_the_sigstore_services_of_the_spec_reach_cosign(
    major: int, policy: SignPolicy, flags: list[str]
) -> None:
    assert sign.sign_format_flags(major, policy) == flags


def test_the_spec_timeout_is_cosigns_own_and_attest_gets_the_same_flags() -> None:
    policy = SignPolicy(key="/keys/cosign.key", timeout=42, signing_config=SC)
    argv = sign_argv(key_signer(), policy=policy)
    assert argv[:4] == [COSIGN, "sign", "--yes", "--timeout=42s"]
    attest = sign.attest_command(key_signer(), SignTarget(ref=REF), policy, Path("/sbom.json"), {})
    assert attest == [
        COSIGN, "attest", "--type", "cyclonedx", "--predicate", "/sbom.json",
        "--yes", "--timeout=42s", "--key", "/keys/cosign.key", "--signing-config", str(SC), REF,
    ]  # fmt: skip


def test_verify_checks_against_the_specs_trusted_root() -> None:
    policy = SignPolicy(key="/keys/cosign.key", trusted_root=TR)
    argv = sign.verify_command(COSIGN, 3, SignTarget(ref=REF), policy, "/tmp/cosign.pub")
    assert argv == [COSIGN, "verify", "--key", "/tmp/cosign.pub", "--trusted-root", str(TR), REF]


def test_an_env_key_is_named_on_the_command_line_never_its_content() -> None:
    signer = key_signer(key="env://COSIGN_PRIVATE_KEY")
    env = {"COSIGN_PRIVATE_KEY": PEM_KEY, "COSIGN_PASSWORD": KEY_PASSWORD}
    argv = sign_argv(signer, env=env)
    assert argv[4:6] == ["--key", "env://COSIGN_PRIVATE_KEY"]
    assert not any(PEM_KEY.strip() in a or KEY_PASSWORD in a for a in argv)


@pytest.mark.parametrize(
    "uri",
    [
        "awskms://kms.eu-west-1.amazonaws.com/alias/release",
        "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/versions/1",
        "azurekms://vault.vault.azure.net/release",
        "hashivault://release",
        "k8s://ci/cosign",
    ],
)
def test_a_kms_uri_is_passed_through(uri: str) -> None:
    assert sign_argv(key_signer(key=uri))[4:6] == ["--key", uri]


def test_keyless_on_github_lets_cosign_ask_the_runner_for_its_token() -> None:
    argv = sign_argv(keyless_signer(), policy=SignPolicy(), env=GITHUB_ENV)
    assert argv == [COSIGN, "sign", "--yes", TIMEOUT, "--oidc-provider", "github-actions", REF]
    assert not any(GITHUB_REQUEST_TOKEN in a for a in argv)


def test_keyless_on_gitlab_reads_the_token_from_the_environment_not_argv() -> None:
    env = {**GITHUB_ENV, **GITLAB_ENV}  # an explicit token wins over the runner's
    argv = sign_argv(keyless_signer(), policy=SignPolicy(), env=env)
    assert argv == [COSIGN, "sign", "--yes", TIMEOUT, "--oidc-provider", "envvar", REF]
    assert not any(GITLAB_TOKEN in a for a in argv)
    with sign.cosign_env(SignTarget(ref=REF), env) as child:
        assert child["SIGSTORE_ID_TOKEN"] == GITLAB_TOKEN


def test_keyless_legacy_on_cosign_3_leaves_the_signing_config() -> None:
    argv = sign_argv(keyless_signer(), policy=SignPolicy(format="legacy"), env=GITLAB_ENV)
    assert argv[4:] == [
        "--oidc-provider",
        "envvar",
        "--new-bundle-format=false",
        "--use-signing-config=false",
        REF,
    ]


def test_keyless_without_a_token_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="OIDC"):
        sign_argv(keyless_signer(), policy=SignPolicy(), env={})


@pytest.mark.parametrize(
    ("target", "insecure_flags"),
    [
        (SignTarget(ref=REF), False),
        (SignTarget(ref=REF, insecure=True), True),
        (SignTarget(ref=LOOPBACK_REF), True),  # Docker trusts 127.0.0.0/8 the same way
        (SignTarget(ref=f"localhost:5000/app@{DIGEST}"), True),
        (SignTarget(ref=LOOPBACK_REF, ca_file=Path("/ca.crt")), False),  # TLS checked with it
        (SignTarget(ref=LOOPBACK_REF, ca_file=Path("/ca.crt"), insecure=True), True),
        (SignTarget(ref=REF, ca_file=Path("/ca.crt")), False),
    ],
)
def test_insecure_registry_flags_only_where_allowed(
    target: SignTarget, insecure_flags: bool
) -> None:
    flags = ["--allow-http-registry", "--allow-insecure-registry"]
    argv = sign_argv(key_signer(), target=target)
    assert argv == [COSIGN, "sign", "--yes", TIMEOUT, "--key", "/keys/cosign.key"] + (
        flags if insecure_flags else []
    ) + [target.ref]
    policy = SignPolicy(key="/keys/cosign.key")
    verify = sign.verify_command(COSIGN, 3, target, policy, "/keys/cosign.pub")
    assert all(flag in verify for flag in flags) == insecure_flags


def test_annotations_become_one_entry_each_even_with_commas_and_quotes() -> None:
    annotations = {"org.opencontainers.image.revision": "1a2b3c4", "note": 'a,b "c"'}
    argv = sign_argv(key_signer(), annotations=annotations)
    assert argv[6:-1] == [
        "-a",
        "org.opencontainers.image.revision=1a2b3c4",
        "-a",
        '"note=a,b ""c"""',  # cosign reads -a as CSV
    ]


@pytest.mark.parametrize("annotations", [{"a=b": "c"}, {"": "c"}, {"url": "https://x/?a=b"}])
def test_annotations_cosign_cannot_carry_are_refused(annotations: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="annotation"):
        sign_argv(key_signer(), annotations=annotations)


def test_no_secret_ever_reaches_a_command_line() -> None:
    env = {
        "COSIGN_PASSWORD": KEY_PASSWORD,
        "COSIGN_PRIVATE_KEY": PEM_KEY,
        **GITHUB_ENV,
        **GITLAB_ENV,
    }
    target = SignTarget(ref=REF, username="ci", password=REGISTRY_PASSWORD)
    secrets = [KEY_PASSWORD, PEM_KEY.strip(), GITHUB_REQUEST_TOKEN, GITLAB_TOKEN, REGISTRY_PASSWORD]
    argvs = [
        sign_argv(signer, target=target, policy=SignPolicy(format=fmt, tlog=tlog), env=env)
        for signer in (
            key_signer(),
            key_signer(2),
            key_signer(key="env://COSIGN_PRIVATE_KEY"),
            keyless_signer(),
            keyless_signer(2),
        )
        for fmt in ("bundle", "legacy")
        for tlog in (True, False)
    ]
    argvs.append(sign.verify_command(COSIGN, 3, target, SignPolicy(), "/keys/cosign.pub"))
    argvs.append(sign.public_key_command(COSIGN, "env://COSIGN_PRIVATE_KEY"))
    assert not [a for argv in argvs for a in argv for s in secrets if s in a]
    assert set(sign.secrets_of(env, [target], "env://COSIGN_PRIVATE_KEY")) == {
        KEY_PASSWORD,
        PEM_KEY,
        GITHUB_REQUEST_TOKEN,
        GITLAB_TOKEN,
        REGISTRY_PASSWORD,
    }


# -- `cosign verify` command lines --------------------------------------------------------------


@pytest.mark.parametrize(
    ("major", "fmt", "tlog", "flags"),
    [
        (3, "bundle", True, []),
        (3, "bundle", False, ["--insecure-ignore-tlog"]),
        (3, "legacy", True, ["--new-bundle-format=false"]),
        (3, "legacy", False, ["--new-bundle-format=false", "--insecure-ignore-tlog"]),
        (2, "bundle", True, ["--new-bundle-format=true"]),
        (2, "legacy", False, ["--insecure-ignore-tlog"]),
    ],
)
def test_verify_looks_where_the_format_put_the_signature(
    major: int, fmt: str, tlog: bool, flags: list[str]
) -> None:
    policy = SignPolicy(key="/keys/cosign.key", format=fmt, tlog=tlog)
    argv = sign.verify_command(COSIGN, major, SignTarget(ref=REF), policy, "/tmp/cosign.pub")
    assert argv == [COSIGN, "verify", "--key", "/tmp/cosign.pub", *flags, REF]


def test_keyless_verify_checks_the_identity_and_issuer() -> None:
    policy = SignPolicy(
        identity=r"^https://github\.com/org/repo/",
        oidc_issuer="https://token.actions.githubusercontent.com",
    )
    argv = sign.verify_command(COSIGN, 3, SignTarget(ref=REF), policy, None)
    assert argv == [
        COSIGN,
        "verify",
        "--certificate-identity-regexp",
        r"^https://github\.com/org/repo/",
        "--certificate-oidc-issuer",
        "https://token.actions.githubusercontent.com",
        REF,
    ]


@pytest.mark.parametrize(
    "policy", [SignPolicy(), SignPolicy(identity=".*"), SignPolicy(oidc_issuer="https://x")]
)
def test_keyless_verify_without_identity_or_issuer_is_a_usage_error(policy: SignPolicy) -> None:
    with pytest.raises(UsageError, match=r"identity.*oidc_issuer"):
        sign.verify_command(COSIGN, 3, SignTarget(ref=REF), policy, None)


# -- the child's environment -------------------------------------------------------------------


def test_credentials_go_to_a_private_docker_config_that_is_removed_after() -> None:
    target = SignTarget(ref=REF, username="ci", password=REGISTRY_PASSWORD)
    with sign.cosign_env(target, {"DOCKER_CONFIG": "/home/me/.docker", "PATH": "/bin"}) as env:
        folder = Path(env["DOCKER_CONFIG"])
        config = folder / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        auth = json.loads(config.read_text())["auths"]["registry.example.com"]["auth"]
        assert base64.b64decode(auth).decode() == f"ci:{REGISTRY_PASSWORD}"
        assert env["PATH"] == "/bin"
        assert "SSL_CERT_FILE" not in env
    assert not folder.exists()


def test_without_credentials_the_users_own_docker_config_stays_visible() -> None:
    user_env = {"DOCKER_CONFIG": "/home/me/.docker", "HOME": "/home/me"}
    with sign.cosign_env(SignTarget(ref=REF), user_env) as env:
        assert env == user_env


def test_docker_hub_credentials_are_under_the_key_cosign_looks_up() -> None:
    target = SignTarget(ref=f"docker.io/org/app@{DIGEST}", username="u", password="p-1234")
    assert set(sign.docker_config(target)["auths"]) == {
        "docker.io",
        "https://index.docker.io/v1/",
    }


def test_a_ca_file_joins_the_system_cas_in_a_temporary_bundle(tmp_path: Path) -> None:
    system = tmp_path / "system.pem"
    system.write_text("-----BEGIN CERTIFICATE-----\nsystem\n-----END CERTIFICATE-----\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nprivate\n-----END CERTIFICATE-----\n")
    target = SignTarget(ref=REF, ca_file=ca)
    with sign.cosign_env(target, {"SSL_CERT_FILE": str(system)}) as env:
        bundle = Path(env["SSL_CERT_FILE"])
        assert bundle != system
        text = bundle.read_text()
        assert "system" in text
        assert "private" in text
        assert "DOCKER_CONFIG" not in env
    assert not bundle.exists()


def test_the_system_ca_bundle_is_found() -> None:
    found = sign.system_ca_file({})
    assert found is None or found.is_file()


# -- deciding how to sign ----------------------------------------------------------------------


def fake_cosign(
    folder: Path,
    *,
    version_json: str = DEVEL_JSON,
    sign_help: str = HELP_V3,
    has_new_bundle_flag: bool = True,
    fail: str | None = None,
) -> dict[str, str]:
    """A `cosign` on PATH that answers like a real one and records every call; its env."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "version_json": version_json,
        "sign_help": sign_help,
        "has_new_bundle_flag": has_new_bundle_flag,
        "fail": fail,
    }
    (folder / "fake.json").write_text(json.dumps(config))
    script = folder / "cosign"
    script.write_text(
        f"#!{sys.executable}\n"
        + """\
import json, os, sys
from pathlib import Path
here = Path(__file__).parent
conf = json.loads((here / "fake.json").read_text())
args = sys.argv[1:]
call = {"argv": sys.argv, "env": dict(os.environ)}
config = Path(os.environ.get("DOCKER_CONFIG", "/nonexistent"), "config.json")
if "DOCKER_CONFIG" in os.environ and config.exists():
    call["docker_config"] = config.read_text()
    call["docker_config_mode"] = config.stat().st_mode & 0o777
with open(here / "calls.jsonl", "a") as out:
    out.write(json.dumps(call) + "\\n")
if args[:2] == ["version", "--json"]:
    print(conf["version_json"])
elif args[:1] == ["sign"] and "--help" in args:
    if "--new-bundle-format=true" in args and not conf["has_new_bundle_flag"]:
        sys.exit("Error: unknown flag: --new-bundle-format")
    print(conf["sign_help"])
elif args[:1] == ["public-key"]:
    print("-----BEGIN PUBLIC KEY-----\\nZmFrZQ==\\n-----END PUBLIC KEY-----")
elif conf["fail"]:
    print("Flag --tlog-upload has been deprecated", file=sys.stderr)
    print("Error: " + conf["fail"], file=sys.stderr)
    print("error during command execution: " + conf["fail"], file=sys.stderr)
    sys.exit(1)
"""
    )
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.defpath}"}


def calls(folder: Path) -> list[dict[str, Any]]:
    path = folder / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("version_json", "sign_help", "has_flag", "major"),
    [
        (DEVEL_JSON, HELP_V3, True, 3),  # Debian's cosign 3.1
        (json.dumps({"gitVersion": "v3.0.2"}), "", True, 3),
        (json.dumps({"gitVersion": "v2.6.1"}), HELP_V2_6, True, 2),
        (DEVEL_JSON, HELP_V2_6, True, 2),
        (DEVEL_JSON, HELP_V2_4, False, 2),
        (DEVEL_JSON, HELP_V2_4, True, 3),  # a later cosign 3 that hides the flags
        ("not json", HELP_V3, True, 3),
    ],
)
def test_the_cosign_major_version_is_detected(
    tmp_path: Path, version_json: str, sign_help: str, has_flag: bool, major: int
) -> None:
    env = fake_cosign(
        tmp_path, version_json=version_json, sign_help=sign_help, has_new_bundle_flag=has_flag
    )
    signer = sign.check_signing(SignPolicy(key="env://K", format="legacy"), {**env, "K": "x"})
    assert signer == Signer(mode="key", key="env://K", cosign=str(tmp_path / "cosign"), major=major)


def test_help_defaults_are_read_in_cosign_and_cobra_styles() -> None:
    assert sign.major_from_help(HELP_V3, accepts_new_bundle_format=True) == 3
    assert sign.major_from_help(HELP_V2_6, accepts_new_bundle_format=True) == 2
    cobra = "      --use-signing-config   whether to use a signing config (default true)\n"
    assert sign.major_from_help(cobra, accepts_new_bundle_format=True) == 3
    cobra_false = "      --use-signing-config   whether to use a signing config\n"
    assert sign.major_from_help(cobra_false, accepts_new_bundle_format=True) == 2
    assert sign.major_from_version('{"gitVersion": "v2.4.1"}') == 2
    assert sign.major_from_version('{"gitVersion": "devel"}') is None


def test_bundle_format_needs_cosign_2_6_or_later(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path, sign_help=HELP_V2_4, has_new_bundle_flag=False)
    with pytest.raises(UsageError, match=r"cosign 2\.6") as info:
        sign.check_signing(SignPolicy(key="env://K"), {**env, "K": "x"})
    assert info.value.exit_code == EXIT_USAGE
    assert "legacy" in (info.value.hint or "")


@pytest.mark.parametrize(
    "policy",
    [SignPolicy(key="env://K", signing_config=SC), SignPolicy(key="env://K", trusted_root=TR)],
)
def test_a_signing_config_or_trusted_root_needs_cosign_2_6_or_later(
    tmp_path: Path, policy: SignPolicy
) -> None:
    env = fake_cosign(tmp_path, sign_help=HELP_V2_4, has_new_bundle_flag=False)
    with pytest.raises(UsageError, match=r"cosign 2\.6") as info:
        sign.check_signing(dataclasses.replace(policy, format="legacy"), {**env, "K": "x"})
    assert "rekor_url" in (info.value.hint or "")
    env = fake_cosign(tmp_path / "2.6", sign_help=HELP_V2_6)
    assert sign.check_signing(policy, {**env, "K": "x"}).major == 2


def test_no_key_and_no_token_is_a_usage_error_with_a_hint(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    with pytest.raises(UsageError, match="no signing key and no OIDC token") as info:
        sign.check_signing(SignPolicy(), env)
    assert info.value.exit_code == EXIT_USAGE
    assert "id-token: write" in (info.value.hint or "")
    assert "SIGSTORE_ID_TOKEN" in (info.value.hint or "")
    assert calls(tmp_path) == []  # decided before any cosign ran


def test_a_github_url_without_its_request_token_is_no_token(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    url_only = {**env, "ACTIONS_ID_TOKEN_REQUEST_URL": "https://x"}
    with pytest.raises(UsageError):
        sign.check_signing(SignPolicy(), url_only)


@pytest.mark.parametrize("token_env", [GITHUB_ENV, GITLAB_ENV])
def test_keyless_is_chosen_when_a_token_is_there(tmp_path: Path, token_env: dict[str, str]) -> None:
    env = {**fake_cosign(tmp_path), **token_env}
    signer = sign.check_signing(SignPolicy(), env)
    assert (signer.mode, signer.key, signer.major) == ("keyless", None, 3)


def test_keyless_without_the_log_is_refused(tmp_path: Path) -> None:
    env = {**fake_cosign(tmp_path), **GITLAB_ENV}
    with pytest.raises(UsageError, match="tlog"):
        sign.check_signing(SignPolicy(tlog=False), env)


def test_an_env_key_whose_variable_is_unset_is_a_usage_error(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    with pytest.raises(UsageError, match=r"\$COSIGN_PRIVATE_KEY") as info:
        sign.check_signing(SignPolicy(key="env://COSIGN_PRIVATE_KEY"), env)
    assert "COSIGN_PASSWORD" in (info.value.hint or "")


def test_a_missing_key_file_is_a_usage_error(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        sign.check_signing(SignPolicy(key=str(tmp_path / "nope.key")), env)


def test_a_kms_key_is_taken_as_is(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    signer = sign.check_signing(SignPolicy(key="awskms://kms/alias/release"), env)
    assert signer.key == "awskms://kms/alias/release"


def test_a_missing_cosign_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(PEM_KEY)
    with pytest.raises(proc.ToolMissing, match="cosign") as info:
        sign.check_signing(SignPolicy(key=str(tmp_path / "key")), {"PATH": str(tmp_path)})
    assert "install cosign" in (info.value.hint or "")


def test_an_annotation_key_cosign_cannot_carry_is_refused_before_building(tmp_path: Path) -> None:
    env = fake_cosign(tmp_path)
    with pytest.raises(UsageError, match="annotation"):
        sign.check_signing(SignPolicy(key="env://K", annotations={"a=b": "c"}), {**env, "K": "x"})


# -- running (with the fake cosign) -------------------------------------------------------------


def test_sign_all_passes_secrets_only_through_the_environment(tmp_path: Path) -> None:
    env = {
        **fake_cosign(tmp_path / "bin"),
        "COSIGN_PASSWORD": KEY_PASSWORD,
        "COSIGN_PRIVATE_KEY": PEM_KEY,
    }
    policy = SignPolicy(key="env://COSIGN_PRIVATE_KEY", tlog=False)
    signer = sign.check_signing(policy, env)
    targets = [
        SignTarget(ref=REF, username="ci", password=REGISTRY_PASSWORD),
        SignTarget(ref=LOOPBACK_REF),
    ]
    stream = io.StringIO()
    results = sign.sign_all(
        signer, targets, policy, {"version": "1.2.3"}, env=env, console=Console(env, stream=stream)
    )
    assert results == [sign.SignResult(ref=t.ref, ok=True) for t in targets]
    runs = [
        c for c in calls(tmp_path / "bin") if c["argv"][1] == "sign" and "--help" not in c["argv"]
    ]
    assert len(runs) == 2
    for run in runs:
        assert run["env"]["COSIGN_PASSWORD"] == KEY_PASSWORD
        assert not any(s in a for a in run["argv"] for s in (KEY_PASSWORD, REGISTRY_PASSWORD))
    with_credentials = next(r for r in runs if r["argv"][-1] == REF)
    assert with_credentials["docker_config_mode"] == 0o600
    assert REGISTRY_PASSWORD not in with_credentials["docker_config"]  # base64, in a 0600 file
    assert not Path(with_credentials["env"]["DOCKER_CONFIG"]).exists()
    without = next(r for r in runs if r["argv"][-1] == LOOPBACK_REF)
    assert "DOCKER_CONFIG" not in without["env"]
    output = stream.getvalue()
    assert f"signed {REF}" in output
    assert f"signed {LOOPBACK_REF}" in output
    assert "sign 2 refs" in output


def test_a_cosign_failure_is_a_result_naming_the_ref_with_cosigns_reason(tmp_path: Path) -> None:
    reason = f"UNAUTHORIZED: authentication required for {REGISTRY_PASSWORD}"
    env = {**fake_cosign(tmp_path, fail=reason), "COSIGN_PASSWORD": KEY_PASSWORD}
    (tmp_path / "cosign.key").write_text(PEM_KEY)
    policy = SignPolicy(key=str(tmp_path / "cosign.key"), tlog=False)
    signer = sign.check_signing(policy, env)
    target = SignTarget(ref=REF, username="ci", password=REGISTRY_PASSWORD)
    stream = io.StringIO()
    [result] = sign.sign_all(
        signer, [target], policy, {}, env=env, console=Console(env, stream=stream)
    )
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"sign: cosign could not sign {REF}: UNAUTHORIZED")
    assert "password_env" in result.error  # the hint
    assert REGISTRY_PASSWORD not in result.error
    assert REGISTRY_PASSWORD not in stream.getvalue()
    assert f"error: sign: cosign could not sign {REF}" in stream.getvalue()


def test_verify_all_derives_the_public_key_and_reports_failures(tmp_path: Path) -> None:
    env = {**fake_cosign(tmp_path, fail="no matching signatures"), "COSIGN_PASSWORD": KEY_PASSWORD}
    (tmp_path / "cosign.key").write_text(PEM_KEY)
    policy = SignPolicy(key=str(tmp_path / "cosign.key"), tlog=False, format="legacy")
    stream = io.StringIO()
    [result] = sign.verify_all(
        [SignTarget(ref=REF)], policy, env=env, console=Console(env, stream=stream)
    )
    assert result == sign.SignResult(
        ref=REF, ok=False, error=f"verify: cosign could not verify {REF}: no matching signatures"
    )
    verify = next(c for c in calls(tmp_path) if c["argv"][1] == "verify")
    key = verify["argv"][verify["argv"].index("--key") + 1]
    assert key.endswith("cosign.pub")
    assert not Path(key).exists()  # a temporary file, gone afterwards
    assert verify["argv"][-3:] == ["--new-bundle-format=false", "--insecure-ignore-tlog", REF]
