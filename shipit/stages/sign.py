"""The sign stage: a cosign signature for every pushed `registry/repo@sha256:...`.

`check_signing` decides how to sign before anything is built (a key, or keyless with the CI
provider's OIDC token; which cosign, which major version). `sign_all` signs every digest in
parallel; `attest_all` attaches a predicate (the SBOM, or the SLSA provenance) to digests as
a signed in-toto attestation; `verify_all` checks signatures with `cosign verify`.

cosign 3 changed its defaults: signatures are Sigstore bundles stored as OCI referrers (on a
registry without the referrers API, an index under the tag `sha256-<hex>`), service URLs come
from a TUF-provided signing config, and `--tlog-upload=false` is refused unless
`--use-signing-config=false` is given too. cosign 2 and Kyverno read only the older format
(the `sha256-<hex>.sig` tag), which `format: legacy` asks for. Each command line is built by one
pure function below, for the detected major version.

Secrets never reach a command line: the key's password goes through COSIGN_PASSWORD, registry
credentials through a temporary DOCKER_CONFIG folder, and a GitLab OIDC token through
SIGSTORE_ID_TOKEN, all in the child's environment only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shipit import log, proc
from shipit.errors import StageError, UsageError
from shipit.registry import DOCKER_HUB_HOSTS, is_loopback_host
from shipit.spec import SignPolicy

_log = log.get(__name__)

SIGN_TIMEOUT: Final = 300.0  # seconds for one `cosign sign` (cosign's own default is 3 min)
VERIFY_TIMEOUT: Final = 180.0
PROBE_TIMEOUT: Final = 30.0  # `cosign version`, `cosign sign --help`, `cosign public-key`

KMS_SCHEMES: Final = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://")
COSIGN_HINT: Final = (
    "install cosign 3 (https://github.com/sigstore/cosign/releases; in GitHub Actions"
    " sigstore/cosign-installer; on Debian the `cosign` package from sid) and put it on PATH,"
    " or turn signing off with `sign: false`"
)
KEYLESS_HINT: Final = (
    "give a key (`sign.key`: a file, env://VAR or a KMS URI), or sign keyless in CI:"
    " GitHub Actions needs `permissions: id-token: write`; GitLab needs"
    " `id_tokens: {SIGSTORE_ID_TOKEN: {aud: sigstore}}`. Or turn signing off with `sign: false`"
)
_DOCKER_HUB_AUTH_KEY: Final = "https://index.docker.io/v1/"
_SYSTEM_CA_FILES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs
)
_DIGEST_REF = re.compile(r"(?P<name>[^\s@]+)@(?P<digest>sha256:[0-9a-f]{64})")
_SEMVER_MAJOR = re.compile(r"v?(\d+)\.\d+")


# -- the records -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SignTarget:
    """One pushed image to sign or verify, with how to reach its registry."""

    ref: str  # "host/repo@sha256:..."; never a tag
    insecure: bool = False  # plain HTTP or unverified TLS allowed for this registry
    ca_file: Path | None = None  # private CA for this registry
    username: str | None = None  # None = the docker config in the environment, or anonymous
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        match = _DIGEST_REF.fullmatch(self.ref)
        if match is None:
            raise ValueError(
                f"{self.ref!r} is not a digest reference (host/repo@sha256:<64 hex>):"
                " shipit signs digests, never tags"
            )
        if ":" in match["name"].rsplit("/", 1)[-1]:
            raise ValueError(f"{self.ref!r} names a tag as well as a digest: sign the digest only")
        if (self.username is None) != (self.password is None):
            raise ValueError(f"credentials for {self.host} need both a username and a password")

    @property
    def host(self) -> str:
        """The registry host, as Docker reads it (no host part means Docker Hub)."""
        name = self.ref.split("@", 1)[0]
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"

    @property
    def allows_insecure(self) -> bool:
        """Plain HTTP and unverified TLS are allowed: asked for, or a loopback registry
        without a CA of its own (Docker trusts 127.0.0.0/8 the same way)."""
        return self.insecure or (self.ca_file is None and is_loopback_host(self.host))


@dataclass(frozen=True, kw_only=True)
class SignResult:
    ref: str
    ok: bool
    error: str | None = None
    output: str = field(default="", repr=False, compare=False)  # cosign's stdout, on success


@dataclass(frozen=True, kw_only=True)
class Signer:
    """How to sign, decided by `check_signing` before anything is built."""

    mode: str  # "key" | "keyless"
    key: str | None  # a file path, env://VAR or a KMS URI (mode "key")
    cosign: str  # path of the binary
    major: int  # cosign's major version, 2 or 3 (later majors are handled as 3)


@dataclass(frozen=True, kw_only=True)
class CosignTool:
    path: str
    major: int
    new_bundle_flag: bool  # `cosign sign --new-bundle-format` exists (cosign >= 2.6)


# -- deciding how to sign (before anything is built) -------------------------------------


def check_signing(policy: SignPolicy, env: Mapping[str, str]) -> Signer:
    """How to sign under `policy`, or a UsageError (exit 2) / ToolMissing saying what to fix."""
    check_annotations(policy.annotations, keys_only=True)
    if policy.key:
        _check_key(policy.key, env)
        mode = "key"
    else:
        if oidc_provider(env) is None:
            raise UsageError(
                "sign: no signing key and no OIDC token to sign keyless", hint=KEYLESS_HINT
            )
        if not policy.tlog:
            raise UsageError(
                "sign: keyless signing needs the transparency log (`tlog: true`)",
                hint="a keyless certificate lives 10 minutes; only the log's timestamp proves"
                " the signature was made while it was valid. Use a key to sign offline",
            )
        mode = "keyless"
    cosign = find_cosign(env)
    if policy.format == "bundle" and cosign.major < 3 and not cosign.new_bundle_flag:
        raise UsageError(
            f"sign: `format: bundle` needs cosign 2.6 or later; {cosign.path} is an older cosign 2",
            hint="install cosign 3, or set `sign.format: legacy`",
        )
    return Signer(mode=mode, key=policy.key, cosign=cosign.path, major=cosign.major)


def _check_key(key: str, env: Mapping[str, str]) -> None:
    if key.startswith("env://"):
        name = key.removeprefix("env://")
        if not env.get(name):
            raise UsageError(
                f"sign: the signing key is read from ${name}, which is not set",
                hint=f"set {name} to the private key (PEM), and COSIGN_PASSWORD to its password",
            )
    elif not key.startswith(KMS_SCHEMES) and not Path(key).is_file():
        raise UsageError(f"sign: the signing key {key} does not exist")


def oidc_provider(env: Mapping[str, str]) -> str | None:
    """cosign's name for the OIDC token source of this environment, None when there is none.

    An explicit SIGSTORE_ID_TOKEN (GitLab's `id_tokens`) is read by cosign's `envvar`
    provider; in GitHub Actions cosign asks the runner for a token itself.
    """
    if env.get("SIGSTORE_ID_TOKEN"):
        return "envvar"
    if env.get("ACTIONS_ID_TOKEN_REQUEST_URL") and env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        return "github-actions"
    return None


def check_annotations(annotations: Mapping[str, str], *, keys_only: bool = False) -> None:
    """cosign splits `-a key=value` on every `=`: neither side may hold one."""
    for key, value in annotations.items():
        if not key or "=" in key:
            raise UsageError(f"sign: annotation key {key!r} must be non-empty and without '='")
        if not keys_only and "=" in value:
            raise UsageError(
                f"sign: the value of annotation {key!r} contains '=' ({value!r}),"
                " which cosign cannot take in `-a key=value`"
            )


# -- which cosign ------------------------------------------------------------------------


def find_cosign(env: Mapping[str, str]) -> CosignTool:
    """The cosign on the environment's PATH and its major version.

    `cosign version --json` names the version in release builds; distribution builds (Debian)
    say `devel`, so then `cosign sign --help` tells: cosign 3 shows `--use-signing-config=true`
    and hides the deprecated `--new-bundle-format`; cosign 2.6 shows both as false; older
    cosign 2 has neither.
    """
    path = proc.find_tool("cosign", env, hint=COSIGN_HINT)
    version = proc.run([path, "version", "--json"], env=env, timeout=PROBE_TIMEOUT, check=False)
    major = major_from_version(version.stdout) if version.returncode == 0 else None
    if major is not None and major >= 3:
        return CosignTool(path=path, major=major, new_bundle_flag=True)
    probe = [path, "sign", "--new-bundle-format=true", "--help"]  # an unknown flag fails
    has_flag = proc.run(probe, env=env, timeout=PROBE_TIMEOUT, check=False).returncode == 0
    if major is None:
        usage = proc.run([path, "sign", "--help"], env=env, timeout=PROBE_TIMEOUT, check=False)
        if version.returncode != 0 and usage.returncode != 0:  # every cosign answers these
            said = (version.stderr or version.stdout).strip().splitlines()[-3:]
            raise StageError(
                "preflight",
                f"cosign at {path} does not work: `cosign version` exited with"
                f" {version.returncode}" + (": " + " / ".join(said) if said else ""),
                hint=COSIGN_HINT,
            )
        major = major_from_help(usage.stdout + usage.stderr, accepts_new_bundle_format=has_flag)
    _log.debug("cosign at %s is version %d", path, major)
    return CosignTool(path=path, major=major, new_bundle_flag=has_flag)


def major_from_version(text: str) -> int | None:
    """The major version in `cosign version --json` output, None for `devel` builds."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    version = data.get("gitVersion") if isinstance(data, dict) else None
    match = _SEMVER_MAJOR.match(version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


def major_from_help(usage: str, *, accepts_new_bundle_format: bool) -> int:
    """The major version told by the defaults `cosign sign --help` shows (see find_cosign)."""
    for flag in ("new-bundle-format", "use-signing-config"):
        default = _help_default(usage, flag)
        if default is not None:
            return 3 if default == "true" else 2
    return 3 if accepts_new_bundle_format else 2


def _help_default(usage: str, flag: str) -> str | None:
    """A boolean flag's default in help text: cosign's `--flag=true:`, cobra's `(default true)`."""
    cosign_style = re.search(rf"--{re.escape(flag)}=(true|false)\b", usage)
    if cosign_style:
        return cosign_style.group(1)
    line = re.search(rf"--{re.escape(flag)}\b[^\n]*", usage)
    if line is None:
        return None
    return "true" if "(default true)" in line.group(0) else "false"


# -- the command lines (pure) --------------------------------------------------------------


def sign_command(
    signer: Signer,
    target: SignTarget,
    policy: SignPolicy,
    annotations: Mapping[str, str],
    env: Mapping[str, str],
) -> list[str]:
    """`cosign sign` for one digest; no secret is ever part of it."""
    argv = [signer.cosign, "sign", "--yes"]
    if signer.mode == "key":
        if not signer.key:
            raise UsageError("sign: key mode without a key")
        argv += ["--key", signer.key]
    else:
        provider = oidc_provider(env)
        if provider is None:
            raise UsageError("sign: no OIDC token to sign keyless", hint=KEYLESS_HINT)
        argv += ["--oidc-provider", provider]
    argv += sign_format_flags(signer.major, policy)
    argv += registry_flags(target)
    argv += annotation_args(annotations)
    argv.append(target.ref)
    return argv


def attest_command(
    signer: Signer,
    target: SignTarget,
    policy: SignPolicy,
    predicate: Path,
    env: Mapping[str, str],
    *,
    predicate_type: str = "cyclonedx",
) -> list[str]:
    """`cosign attest` of a predicate (by default a CycloneDX SBOM; `slsaprovenance1` for
    SLSA v1 provenance) to one digest, signed like the signature."""
    signing = sign_command(signer, target, policy, {}, env)
    # the same key or OIDC, format and registry flags as `cosign sign`, on another verb
    return [
        signer.cosign,
        "attest",
        "--type",
        predicate_type,
        "--predicate",
        str(predicate),
        *signing[2:],
    ]


def sign_format_flags(major: int, policy: SignPolicy) -> list[str]:
    """The signature format and transparency-log flags of `cosign sign`.

    cosign 3 writes bundles by default and takes its service URLs from the TUF signing
    config, which it will not combine with `--tlog-upload=false` nor with the old format;
    cosign 2 writes the old format by default.
    """
    legacy = policy.format == "legacy"
    flags: list[str] = []
    if major >= 3:
        if legacy:
            flags.append("--new-bundle-format=false")
        if legacy or not policy.tlog:
            flags.append("--use-signing-config=false")
    elif not legacy:
        flags.append("--new-bundle-format=true")
    if not policy.tlog:
        flags.append("--tlog-upload=false")
    return flags


def verify_format_flags(major: int, policy: SignPolicy) -> list[str]:
    """Where `cosign verify` looks for signatures, and whether it checks the log."""
    flags: list[str] = []
    if major >= 3 and policy.format == "legacy":
        flags.append("--new-bundle-format=false")
    elif major < 3 and policy.format == "bundle":
        flags.append("--new-bundle-format=true")
    if not policy.tlog:
        flags.append("--insecure-ignore-tlog")
    return flags


def registry_flags(target: SignTarget) -> list[str]:
    if target.allows_insecure:
        return ["--allow-http-registry", "--allow-insecure-registry"]
    return []


def annotation_args(annotations: Mapping[str, str]) -> list[str]:
    """`-a key=value` for each annotation. cosign reads `-a` as a CSV list, so an entry
    holding a comma or a quote is quoted the CSV way to stay one entry."""
    check_annotations(annotations)
    args: list[str] = []
    for key, value in annotations.items():
        entry = f"{key}={value}"
        if any(c in entry for c in ',"\n\r'):
            entry = '"' + entry.replace('"', '""') + '"'
        args += ["-a", entry]
    return args


def verify_command(
    cosign: str,
    major: int,
    target: SignTarget,
    policy: SignPolicy,
    key: str | None,
    *,
    attestation: str | None = None,
) -> list[str]:
    """`cosign verify` of one digest: with a public key, else the keyless identity; with
    `attestation` (a `--type`), `cosign verify-attestation` of that type instead."""
    argv = [cosign, "verify"]
    if attestation:
        argv = [cosign, "verify-attestation", "--type", attestation]
    if key:
        argv += ["--key", key]
    else:
        if not policy.identity or not policy.oidc_issuer:
            raise UsageError(
                "verify: keyless verification needs `sign.identity` and `sign.oidc_issuer`",
                hint="or give the public key with --key",
            )
        argv += ["--certificate-identity-regexp", policy.identity]
        argv += ["--certificate-oidc-issuer", policy.oidc_issuer]
    argv += verify_format_flags(major, policy)
    argv += registry_flags(target)
    argv.append(target.ref)
    return argv


def public_key_command(cosign: str, key: str) -> list[str]:
    return [cosign, "public-key", "--key", key]


# -- the child's environment -------------------------------------------------------------


def docker_config(target: SignTarget) -> dict[str, dict[str, dict[str, str]]]:
    """A docker config.json holding only this target's credentials."""
    if target.username is None or target.password is None:
        return {"auths": {}}
    token = base64.b64encode(f"{target.username}:{target.password}".encode()).decode()
    keys = [target.host]
    if target.host in DOCKER_HUB_HOSTS:
        keys.append(_DOCKER_HUB_AUTH_KEY)  # the key cosign's keychain looks up for Docker Hub
    return {"auths": {key: {"auth": token} for key in keys}}


@contextlib.contextmanager
def cosign_env(target: SignTarget, env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment of a cosign child for `target`, with its temporary files.

    Credentials go to a temporary DOCKER_CONFIG (mode 0600); without them the user's own
    docker config stays visible. A `ca_file` is added to the system CAs in a temporary
    bundle named by SSL_CERT_FILE. Everything temporary is removed afterwards. An OSError
    (an unreadable ca_file, a full disk) passes through.
    """
    child = dict(env)
    if target.username is None and target.ca_file is None:
        yield child
        return
    folder = Path(tempfile.mkdtemp(prefix="shipit-cosign-"))
    try:
        if target.username is not None:
            _write_private(folder / "config.json", json.dumps(docker_config(target)))
            child["DOCKER_CONFIG"] = str(folder)
        if target.ca_file is not None:
            child["SSL_CERT_FILE"] = str(_ca_bundle(folder, target.ca_file, env))
        yield child
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _ca_bundle(folder: Path, ca_file: Path, env: Mapping[str, str]) -> Path:
    extra = ca_file.read_text(encoding="utf-8", errors="replace")
    system = system_ca_file(env)
    base = system.read_text(encoding="utf-8", errors="replace") if system else ""
    bundle = folder / "ca-bundle.pem"
    bundle.write_text(f"{base.rstrip()}\n{extra.strip()}\n".lstrip(), encoding="utf-8")
    return bundle


def system_ca_file(env: Mapping[str, str]) -> Path | None:
    """The system's CA bundle (or the one SSL_CERT_FILE already names), if there is one."""
    paths = ssl.get_default_verify_paths()
    candidates = [env.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile, *_SYSTEM_CA_FILES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def secrets_of(env: Mapping[str, str], targets: Sequence[SignTarget], key: str | None) -> list[str]:
    """Every value that must never be shown: passwords, tokens, a key held in a variable."""
    names = ["COSIGN_PASSWORD", "SIGSTORE_ID_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    if key and key.startswith("env://"):
        names.append(key.removeprefix("env://"))
    values = [env.get(name) for name in names]
    values += [t.password for t in targets]
    return [v for v in dict.fromkeys(values) if v]


# -- running -------------------------------------------------------------------------------


def sign_all(
    signer: Signer,
    targets: Sequence[SignTarget],
    policy: SignPolicy,
    annotations: Mapping[str, str],
    *,
    env: Mapping[str, str],
    console: log.Console,
    parallel: int = 4,
) -> list[SignResult]:
    """Sign every target (at most `parallel` at once), non-interactively.

    Returns one result per target, in order; a ref is ok only when cosign exited 0 for it.
    A failure is a result with ok False whose error names the ref and says why; every
    target is tried. Bad annotations raise UsageError before cosign runs at all.
    """
    if not targets:
        return []
    check_annotations(annotations)
    secrets = secrets_of(env, targets, signer.key)
    for secret in secrets:
        console.secret(secret)

    commands = {t.ref: sign_command(signer, t, policy, annotations, env) for t in targets}

    def sign_one(target: SignTarget) -> SignResult:
        argv = commands[target.ref]
        return _run_cosign(argv, target, env=env, secrets=secrets, timeout=SIGN_TIMEOUT)

    what = f"key {signer.key}" if signer.mode == "key" else "keyless (OIDC)"
    with console.group(f"sign {_refs(targets)} with cosign {signer.major} ({what})"):
        return _each(targets, sign_one, parallel, console, done="signed")


def attest_all(
    signer: Signer,
    targets: Sequence[SignTarget],
    policy: SignPolicy,
    predicate: Path,
    *,
    env: Mapping[str, str],
    console: log.Console,
    parallel: int = 4,
    predicate_type: str = "cyclonedx",
) -> list[SignResult]:
    """Attach the predicate at `predicate` to every target as a signed attestation of
    `predicate_type` (the SBOM as CycloneDX unless told otherwise)."""
    if not targets:
        return []
    secrets = secrets_of(env, targets, signer.key)
    commands = {
        t.ref: attest_command(signer, t, policy, predicate, env, predicate_type=predicate_type)
        for t in targets
    }

    def attest_one(target: SignTarget) -> SignResult:
        return _run_cosign(
            commands[target.ref], target, env=env, secrets=secrets, timeout=SIGN_TIMEOUT
        )

    what = {"cyclonedx": "the SBOM", "slsaprovenance1": "SLSA provenance"}.get(
        predicate_type, predicate_type
    )
    with console.group(f"attest {what} to {_refs(targets)}"):
        return _each(targets, attest_one, parallel, console, done="attested")


def verify_all(
    targets: Sequence[SignTarget],
    policy: SignPolicy,
    *,
    env: Mapping[str, str],
    console: log.Console,
    public_key: str | None = None,
    attestation: str | None = None,
) -> list[SignResult]:
    """`cosign verify` of every target: with `public_key`, else the public half of the
    policy's key, else keyless with `policy.identity` and `policy.oidc_issuer`. With
    `attestation`, `cosign verify-attestation --type ATTESTATION`, whose output (the verified
    envelopes, one JSON document a line) each ok result holds.

    A signature that does not verify is a result with ok False and cosign's reason, not an
    exception; a missing cosign, a key that cannot be read or a keyless policy without an
    identity raise before any ref is checked.
    """
    if not targets:
        return []
    cosign = find_cosign(env)
    secrets = secrets_of(env, targets, policy.key)
    for secret in secrets:
        console.secret(secret)
    with tempfile.TemporaryDirectory(prefix="shipit-verify-") as tmp:
        key = public_key or _derived_public_key(
            cosign.path, policy, env=env, folder=Path(tmp), secrets=secrets
        )
        commands = {
            t.ref: verify_command(
                cosign.path, cosign.major, t, policy, key, attestation=attestation
            )
            for t in targets
        }

        def verify_one(target: SignTarget) -> SignResult:
            argv = commands[target.ref]
            return _run_cosign(argv, target, env=env, secrets=secrets, timeout=VERIFY_TIMEOUT)

        what = f"key {public_key or policy.key}" if key else f"identity {policy.identity}"
        verb = f"verify the {attestation} attestations of" if attestation else "verify"
        with console.group(f"{verb} {_refs(targets)} with cosign {cosign.major} ({what})"):
            # no line per ref here: `shipit verify` prints each result once, itself
            return _each(targets, verify_one, 4, console, done=None)


def _derived_public_key(
    cosign: str,
    policy: SignPolicy,
    *,
    env: Mapping[str, str],
    folder: Path,
    secrets: Sequence[str],
) -> str | None:
    """The public half of the policy's key, for `--key`; None when the policy is keyless."""
    if not policy.key:
        return None
    if policy.key.startswith(KMS_SCHEMES):
        return policy.key  # cosign reads the public key from the KMS itself
    try:
        result = proc.run(
            public_key_command(cosign, policy.key), env=env, secrets=secrets, timeout=PROBE_TIMEOUT
        )
    except proc.CommandError as exc:
        raise StageError(
            "verify",
            f"cannot derive the public key from {policy.key}: {_reason(exc, secrets)}",
            hint="COSIGN_PASSWORD must hold the key's password; or pass the public key",
        ) from None
    if "PUBLIC KEY" not in result.stdout:
        raise StageError("verify", f"`cosign public-key` printed no public key for {policy.key}")
    path = folder / "cosign.pub"
    path.write_text(result.stdout, encoding="utf-8")
    return str(path)


def _run_cosign(
    argv: Sequence[str],
    target: SignTarget,
    *,
    env: Mapping[str, str],
    secrets: Sequence[str],
    timeout: float,
) -> SignResult:
    """One cosign command for `target`; ok only on exit 0, else cosign's reason."""
    verb = argv[1]
    with contextlib.ExitStack() as stack:
        try:
            child = stack.enter_context(cosign_env(target, env))
        except OSError as exc:
            return _failed(
                target, StageError(verb, f"cannot prepare cosign for {target.ref}: {exc}")
            )
        try:
            done = proc.run(argv, env=child, secrets=secrets, timeout=timeout)
        except proc.CommandError as exc:
            reason = _reason(exc, secrets)
            message = f"cosign could not {verb} {target.ref}: {reason}"
            return _failed(target, StageError(verb, message, hint=_hint(reason)))
    return SignResult(ref=target.ref, ok=True, output=done.stdout)


def _failed(target: SignTarget, error: StageError) -> SignResult:
    text = f"{error} ({error.hint})" if error.hint else str(error)
    return SignResult(ref=target.ref, ok=False, error=text)


def _each(
    targets: Sequence[SignTarget],
    work: Callable[[SignTarget], SignResult],
    parallel: int,
    console: log.Console,
    *,
    done: str | None,
) -> list[SignResult]:
    """`work` on every target, at most `parallel` at once; with `done`, one line per ref as
    each ends (written from this thread only); the results in the targets' order."""
    workers = max(1, min(parallel, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cosign") as pool:
        futures = [pool.submit(work, target) for target in targets]
        for future in as_completed(futures):
            result = future.result()
            if done is None:
                continue
            if result.ok:
                console.write(f"{console.style.status(done)} {result.ref}")
            else:
                _log.error("%s", result.error)
        return [future.result() for future in futures]


def _refs(targets: Sequence[SignTarget]) -> str:
    return log.counted(len(targets), "ref")


def _reason(exc: proc.CommandError, secrets: Sequence[str]) -> str:
    """cosign's own explanation of a failure, on one line and without secrets."""
    if exc.timed_out:
        return f"timed out after {exc.result.seconds:.0f} s"
    lines = [line.strip() for line in exc.result.stderr.splitlines() if line.strip()]
    prefixes = ("Error: ", "error during command execution: ")
    errors = [line.removeprefix(p) for p in prefixes for line in lines if line.startswith(p)]
    reason = errors[0] if errors else (lines[-1] if lines else f"exit {exc.result.returncode}")
    return proc.redact(reason, secrets)


_HINTS: Final = (
    (("decrypt", "reading key", "inappropriate ioctl"),
     "COSIGN_PASSWORD must hold the password of the signing key"),
    (("unauthorized", "denied", "authentication required"),
     "check the username and password_env of the registry"),
    (("x509:", "unknown authority"),
     "give the registry's CA as `ca_file`, or `insecure: true` for a test registry"),
    (("tuf", "no such host", "rekor", "fulcio"),
     "cosign could not reach the Sigstore services; offline, sign with a key and `tlog: false`"),
)  # fmt: skip


def _hint(reason: str) -> str | None:
    text = reason.lower()
    return "; ".join(hint for needles, hint in _HINTS if any(n in text for n in needles)) or None
