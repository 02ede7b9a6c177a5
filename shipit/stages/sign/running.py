"""Running cosign: `sign_all` signs every digest in parallel, `attest_all` attaches the SBOM,
`verify_all` checks signatures with `cosign verify`; a failure is a result naming the ref with
cosign's own reason and what to change."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Final

from shipit import log, proc
from shipit.errors import StageError
from shipit.spec import SignPolicy
from shipit.stages.sign.child import cosign_env, secrets_of
from shipit.stages.sign.commands import (
    attest_command,
    public_key_command,
    sign_command,
    verify_command,
)
from shipit.stages.sign.cosign import PROBE_TIMEOUT, cosign_reason, find_cosign
from shipit.stages.sign.decide import check_annotations
from shipit.stages.sign.records import KMS_SCHEMES, Signer, SignResult, SignTarget

_log = log.get(__name__)

VERIFY_TIMEOUT: Final = 180.0
GRACE: Final = 10.0  # seconds cosign gets past its own --timeout before it is stopped


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
        return _run_cosign(argv, target, env=env, secrets=secrets, timeout=policy.timeout + GRACE)

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
            commands[target.ref], target, env=env, secrets=secrets, timeout=policy.timeout + GRACE
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
            f"cannot derive the public key from {policy.key}: {cosign_reason(exc, secrets)}",
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
            reason = cosign_reason(exc, secrets)
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
