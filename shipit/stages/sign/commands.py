"""The cosign command lines, one pure function each, for the detected major version.

cosign 3 changed its defaults: signatures are Sigstore bundles stored as OCI referrers (on a
registry without the referrers API, an index under the tag `sha256-<hex>`), service URLs come
from a TUF-provided signing config, and `--tlog-upload=false` is refused unless
`--use-signing-config=false` is given too. cosign 2 and Kyverno read only the older format
(the `sha256-<hex>.sig` tag), which `format: legacy` asks for. No secret is ever part of a
command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shipit.errors import UsageError
from shipit.spec import SignPolicy
from shipit.stages.sign.decide import KEYLESS_HINT, check_annotations, oidc_provider
from shipit.stages.sign.records import Signer, SignTarget


def sign_command(
    signer: Signer,
    target: SignTarget,
    policy: SignPolicy,
    annotations: Mapping[str, str],
    env: Mapping[str, str],
) -> list[str]:
    """`cosign sign` for one digest; no secret is ever part of it. cosign stops itself after
    `sign.timeout` (its `--timeout`, 3 minutes unless given)."""
    argv = [signer.cosign, "sign", "--yes", f"--timeout={policy.timeout}s"]
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
    """The signature format, transparency-log and Sigstore service flags of `cosign sign`.

    cosign 3 writes bundles by default and takes its service URLs from the TUF signing
    config, which it will not combine with `--tlog-upload=false`, with `--rekor-url` nor with
    the old format (so each of those needs `--use-signing-config=false`); a signing config
    file replaces the TUF one, and names (or leaves out) the log itself. cosign 2 writes the
    old format by default and uses no signing config unless given one (2.6 and later).
    Source: cosign v3.1.1 cmd/cosign/cli/signcommon/common.go,
    LoadTrustedMaterialAndSigningConfig.
    """
    legacy = policy.format == "legacy"
    config = policy.signing_config
    flags: list[str] = []
    if major >= 3:
        if legacy:
            flags.append("--new-bundle-format=false")
        if config is None and (legacy or not policy.tlog or policy.rekor_url):
            flags.append("--use-signing-config=false")
    elif not legacy:
        flags.append("--new-bundle-format=true")
    if config is not None:
        flags += ["--signing-config", str(config)]
    elif not policy.tlog:
        flags.append("--tlog-upload=false")
    elif policy.rekor_url:
        flags += ["--rekor-url", policy.rekor_url]
    if policy.trusted_root is not None:
        flags += ["--trusted-root", str(policy.trusted_root)]
    return flags


def verify_format_flags(major: int, policy: SignPolicy) -> list[str]:
    """Where `cosign verify` looks for signatures, whether it checks the log, and the trusted
    root it checks against (the TUF repository's unless `sign.trusted_root` names one)."""
    flags: list[str] = []
    if major >= 3 and policy.format == "legacy":
        flags.append("--new-bundle-format=false")
    elif major < 3 and policy.format == "bundle":
        flags.append("--new-bundle-format=true")
    if not policy.tlog:
        flags.append("--insecure-ignore-tlog")
    if policy.trusted_root is not None:
        flags += ["--trusted-root", str(policy.trusted_root)]
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
