"""Proving that signing can work, before a minute is spent building.

`prove_signing` runs after `check_signing` decided how to sign, once per distinct policy:

1. a key opens: `cosign public-key --key KEY` derives its public half, which needs the right
   COSIGN_PASSWORD (given in the child's environment only, never on its command line); for a
   KMS URI the same command proves the KMS answers and the job may use the key;
2. keyless, the OIDC token is there and not expired (GitHub Actions: the runner hands one
   out for the audience `sigstore`);
3. the Sigstore services cosign will contact answer (services.py says which, probes.py asks):
   the TUF repository, the transparency log, the timestamp authority, Fulcio.

Every failure is a UsageError (exit 2) naming what did not work and what to change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from shipit import proc
from shipit.errors import UsageError
from shipit.log import Console
from shipit.spec import SignPolicy
from shipit.stages.sign.child import secrets_of
from shipit.stages.sign.commands import public_key_command
from shipit.stages.sign.cosign import PROBE_TIMEOUT, cosign_reason
from shipit.stages.sign.probes import (
    Http,
    ProbeError,
    github_token,
    probe_service,
    proxy_for,
    shown_proxy,
    token_audience,
    token_problem,
    tuf_signing_config,
)
from shipit.stages.sign.records import KMS_SCHEMES, Signer
from shipit.stages.sign.services import (
    SIGNING_CONFIG_TYPE,
    Needs,
    Service,
    TufRepo,
    config_services,
    needs,
)

KEY_HINT: Final = (
    "set COSIGN_PASSWORD to the password the key was made with (`cosign generate-key-pair`),"
    " as a masked CI variable or secret"
)
PROXY_HINT: Final = "behind a proxy, set HTTPS_PROXY (and NO_PROXY) in the job's environment"
TUF_HINT: Final = (
    "offline, sign with a key and `tlog: false`; with a Sigstore of your own, give"
    " `sign.signing_config` and `sign.trusted_root` (made by `cosign signing-config create` and"
    " `cosign trusted-root create`); with a mirror of the TUF repository, set TUF_MIRROR and"
    f" TUF_ROOT_JSON, or run `cosign initialize --mirror URL --root root.json` first; {PROXY_HINT}"
)
SERVICE_HINTS: Final = {
    "rekor": "offline, sign with a key and `tlog: false`; for a Rekor of your own set"
    " `sign.rekor_url`, or list it in `sign.signing_config`",
    "tsa": "give `sign.signing_config` with a timestamp authority that answers, or none"
    " (`cosign signing-config create`)",
    "fulcio": "keyless signing needs Fulcio: list one that answers in `sign.signing_config`,"
    " or sign with a key",
}


def prove_signing(
    pairs: Iterable[tuple[Signer, SignPolicy]], *, env: Mapping[str, str], console: Console
) -> None:
    """Each distinct way of signing can work (see the module's docstring), or UsageError."""
    todo: dict[tuple[object, ...], tuple[Signer, SignPolicy]] = {}
    for signer, policy in pairs:
        services = (policy.signing_config, policy.trusted_root, policy.rekor_url)
        todo.setdefault((signer, policy.format, policy.tlog, *services), (signer, policy))
    if not todo:
        return
    opened: set[str] = set()
    with console.group("signing preflight"):
        for signer, policy in todo.values():
            secrets = secrets_of(env, [], signer.key)
            for secret in secrets:
                console.secret(secret)
            if signer.mode == "key" and signer.key and signer.key not in opened:
                check_key_opens(signer.cosign, signer.key, env=env, secrets=secrets)
                console.write(f"the signing key {signer.key} opens")
                opened.add(signer.key)
            need = needs(signer, policy, env, now=datetime.now(UTC))
            answered = check_services(need, env=env, console=console)
            if answered:
                console.write("answered: " + ", ".join(answered))


# -- the key ---------------------------------------------------------------------------------------


def check_key_opens(
    cosign: str, key: str, *, env: Mapping[str, str], secrets: Sequence[str]
) -> None:
    """`cosign public-key` derives the key's public half, or a UsageError saying why not."""
    try:
        result = proc.run(
            public_key_command(cosign, key), env=env, secrets=secrets, timeout=PROBE_TIMEOUT
        )
    except proc.CommandError as exc:
        raise key_error(key, exc, env=env, secrets=secrets) from None
    if "PUBLIC KEY" not in result.stdout:
        raise UsageError(f"sign: `cosign public-key` printed no public key for {key}")


def key_error(
    key: str, exc: proc.CommandError, *, env: Mapping[str, str], secrets: Sequence[str]
) -> UsageError:
    """What is wrong with the key, from what `cosign public-key` said (cosign 3.1.1 says
    "decrypt: encrypted: decryption failed" for a wrong or empty password, "inappropriate
    ioctl for device" when it wanted to ask for one, "invalid pem block" or "unsupported pem
    type" for a file that is no cosign private key)."""
    reason = cosign_reason(exc, secrets)
    text = reason.lower()
    if exc.timed_out:
        return UsageError(
            f"sign: `cosign public-key` did not finish within {PROBE_TIMEOUT:.0f} s for {key}",
            hint="a KMS that does not answer: check its address and the job's network",
        )
    if key.startswith(KMS_SCHEMES):
        return UsageError(
            f"sign: cosign could not read the KMS key {key}: {reason}",
            hint="check the KMS credentials in the job's environment (cosign asks the KMS"
            " itself) and that this cosign supports the scheme",
        )
    if "COSIGN_PASSWORD" not in env and ("ioctl" in text or "password" in text):
        return UsageError(
            f"sign: the signing key {key} is encrypted and COSIGN_PASSWORD is not set"
            f" (cosign wanted to ask for the password: {reason})",
            hint=KEY_HINT,
        )
    if "decrypt" in text:
        return UsageError(
            f"sign: the signing key {key} does not open with COSIGN_PASSWORD ({reason}):"
            " the password is wrong" + (" (it is empty)" if not env.get("COSIGN_PASSWORD") else ""),
            hint=KEY_HINT,
        )
    if "pem" in text:
        return UsageError(
            f"sign: {key} is not a cosign private key ({reason})",
            hint="give the private half made by `cosign generate-key-pair` (cosign.key, not"
            " cosign.pub), or bring a PEM key in with `cosign import-key-pair`",
        )
    return UsageError(f"sign: the signing key {key} cannot be used: {reason}")


# -- the services ----------------------------------------------------------------------------------


def check_services(need: Needs, *, env: Mapping[str, str], console: Console) -> list[str]:
    """Ask every service `need` names (the TUF repository first, then what it lists); the
    names of those that answered, or a UsageError for the first that did not."""
    http = Http(env)
    try:
        answered: list[str] = []
        services = list(need.services)
        if need.tuf is not None:
            found = _check_tuf(http, need, need.tuf, console)
            if found is not None:
                answered.append(f"the TUF repository at {need.tuf.mirror}")
                services += found
        for service in services:
            try:
                probe_service(http, service)
            except ProbeError as exc:
                raise _service_error(service, str(exc), env) from None
            answered.append(service.name)
        if need.token is not None:
            _check_token(http, need.token, env, console)
        return answered
    finally:
        http.close()


def _check_tuf(http: Http, need: Needs, repo: TufRepo, console: Console) -> list[Service] | None:
    """The services the TUF signing config lists (none if they are not needed from it);
    None when the repository did not answer and cosign only warns about that."""
    what = "its signing config and trusted root" if need.tuf_required else "its trusted root"
    where = f"the TUF repository at {repo.mirror} ({repo.source})"
    try:
        if repo.root_missing:
            raise ProbeError(repo.root_missing)
        document = tuf_signing_config(http, repo)
    except ProbeError as exc:
        if need.tuf_required:
            raise UsageError(
                f"sign: cosign reads {what} from {where}, which did not answer: {exc}",
                hint=TUF_HINT,
            ) from None
        console.warn(
            f"cosign reads {what} from {where}, which did not answer ({exc}); cosign will"
            " carry on without it. Give `sign.trusted_root` to leave TUF out"
        )
        return None
    if not need.from_tuf:
        return []
    if document is None or document.get("mediaType") != SIGNING_CONFIG_TYPE:
        console.warn(f"the signing config of {where} could not be read: only TUF was asked")
        return []
    return list(
        config_services(
            document,
            source=f"the signing config of {where}",
            keyless=need.keyless,
            rekor_versions=need.rekor_versions,
            now=datetime.now(UTC),
        )
    )


def _service_error(service: Service, reason: str, env: Mapping[str, str]) -> UsageError:
    proxy = proxy_for(service.url, env)
    via = f" through the proxy {shown_proxy(proxy)}" if proxy and "proxy" not in reason else ""
    return UsageError(
        f"sign: {service.name} ({service.source}) did not answer{via}: {reason}",
        hint=f"{SERVICE_HINTS[service.kind]}; {PROXY_HINT}",
    )


# -- the OIDC token ---------------------------------------------------------------------------


def _check_token(http: Http, provider: str, env: Mapping[str, str], console: Console) -> None:
    """The token cosign will present to Fulcio is there and not expired."""
    if provider == "github-actions":
        try:
            token = github_token(http, env)
        except ProbeError as exc:
            raise UsageError(
                f"sign: keyless signing could not get an OIDC token from the GitHub Actions"
                f" runner: {exc}",
                hint="give the job `permissions: id-token: write`, or sign with a key",
            ) from None
        where = "the GitHub Actions runner's OIDC token"
    else:
        token = env.get("SIGSTORE_ID_TOKEN", "")
        where = "SIGSTORE_ID_TOKEN"
    console.secret(token)
    problem = token_problem(token, now=time.time())
    if problem:
        raise UsageError(
            f"sign: {where} cannot be used for keyless signing: {problem}",
            hint="GitLab: `id_tokens: {SIGSTORE_ID_TOKEN: {aud: sigstore}}` in the job gives a"
            " fresh one; or sign with a key",
        )
    audience = token_audience(token)
    if audience and "sigstore" not in audience:
        console.warn(
            f"{where} is for {', '.join(audience)}, not `sigstore`: the public Fulcio refuses"
            " it (GitLab: `id_tokens: {SIGSTORE_ID_TOKEN: {aud: sigstore}}`)"
        )
