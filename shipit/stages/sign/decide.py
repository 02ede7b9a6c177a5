"""Deciding how to sign, before anything is built: a key, or keyless with the CI provider's
OIDC token; which cosign, and whether it can write the asked-for format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from shipit.errors import UsageError
from shipit.spec import SignPolicy
from shipit.stages.sign.cosign import find_cosign
from shipit.stages.sign.records import KMS_SCHEMES, Signer

KEYLESS_HINT: Final = (
    "give a key (`sign.key`: a file, env://VAR or a KMS URI), or sign keyless in CI:"
    " GitHub Actions needs `permissions: id-token: write`; GitLab needs"
    " `id_tokens: {SIGSTORE_ID_TOKEN: {aud: sigstore}}`. Or turn signing off with `sign: false`"
)


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
    if (policy.signing_config or policy.trusted_root) and not cosign.new_bundle_flag:
        raise UsageError(
            f"sign: `signing_config` and `trusted_root` need cosign 2.6 or later;"
            f" {cosign.path} is an older cosign 2",
            hint="install cosign 3, or name a Rekor of your own with `sign.rekor_url`",
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
