"""Which Sigstore services one `cosign sign` will contact: decided from the policy, the cosign
major version and the environment, without touching the network (probes.py asks them).

What cosign does, and where that was read (cosign v3.1.1, which Debian sid ships as 3.1.1,
with sigstore-go v1.2.0):

- With `--use-signing-config` (cosign 3's default) cosign fetches its signing config, the
  TUF target `signing_config.v0.2.json`, and its trusted root from a TUF repository, and
  fails when the signing config cannot be had; a trusted root that cannot be had is only a
  warning ("Continuing with individual targets"). With `--signing-config FILE` the file is
  read instead, but the trusted root still comes from TUF unless `--trusted-root FILE`.
  With neither (legacy format, no log, `--rekor-url`) the URLs are cosign's flags and their
  defaults, and TUF is asked only for a keyless trusted root (again only a warning).
  (cmd/cosign/cli/signcommon/common.go, LoadTrustedMaterialAndSigningConfig)
- The TUF repository is https://tuf-repo-cdn.sigstore.dev, or `$TUF_MIRROR`, or the mirror
  that `cosign initialize --mirror URL` wrote to `remote.json` in the TUF cache (`$TUF_ROOT`,
  default `~/.sigstore/root`); a mirror other than the default needs its root.json from
  `$TUF_ROOT_JSON` or the cache (`<cache>/<mirror as a file name>/root.json`), else cosign
  fails with "could not find cached root.json". The cache is refreshed on every run (cache
  validity 0 days), so the repository must answer each time. (pkg/cosign/tuf.go
  setTUFOpts; sigstore-go pkg/tuf/options.go, client.go)
- From a signing config cosign signs with the transparency logs and timestamp authorities
  selected as sigstore-go's `SelectServices` does: the highest API version it supports
  (Rekor 1 and 2, TSA 1, Fulcio 1), valid now, the newest per operator, then ANY (one at
  random), ALL or EXACT:n of them. Keyless it also asks one Fulcio (`SelectService`). The
  OIDC URLs are used only for an interactive login, never with a CI token. (sigstore-go
  pkg/root/signing_config.go, pkg/sign/*.go; cosign pkg/cosign/bundle/sign.go,
  internal/auth/auth.go)
- The public signing config (sigstore/root-signing targets/signing_config.v0.2.json) names
  Fulcio https://fulcio.sigstore.dev, Rekor v2 https://log2025-1.rekor.sigstore.dev and v1
  https://rekor.sigstore.dev, and the TSA https://timestamp.sigstore.dev/api/v1/timestamp;
  shipit does not hard-code them but reads what the TUF repository serves.
- cosign 2 uses no signing config unless given one (2.6 and later); keyless it checks
  Fulcio's certificate against the CT log key from TUF (fulcioverifier.go, GetCTLogPubs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shipit.errors import UsageError
from shipit.spec import SignPolicy
from shipit.stages.sign.decide import oidc_provider
from shipit.stages.sign.records import Signer

DEFAULT_TUF_MIRROR: Final = "https://tuf-repo-cdn.sigstore.dev"  # sigstore-go DefaultMirror
DEFAULT_REKOR: Final = "https://rekor.sigstore.dev"  # cosign options.DefaultRekorURL
DEFAULT_FULCIO: Final = "https://fulcio.sigstore.dev"  # cosign options.DefaultFulcioURL
SIGNING_CONFIG_TARGET: Final = "signing_config.v0.2.json"
SIGNING_CONFIG_TYPE: Final = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
TRUSTED_ROOT_TYPE: Final = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
NAMES: Final = {
    "rekor": "the transparency log (Rekor)",
    "tsa": "the timestamp authority",
    "fulcio": "the certificate authority (Fulcio)",
}
_CONFIG_KEYS: Final = {"rekor": "rekorTlogUrls", "tsa": "tsaUrls", "fulcio": "caUrls"}


@dataclass(frozen=True, kw_only=True)
class Service:
    """One service cosign will send a request to while signing."""

    kind: str  # rekor | tsa | fulcio
    url: str
    api_version: int = 1
    source: str  # where the URL came from, as the user would look for it

    @property
    def name(self) -> str:
        return f"{NAMES[self.kind]} at {self.url}"


@dataclass(frozen=True, kw_only=True)
class TufRepo:
    """The TUF repository cosign reads its signing config and trusted root from."""

    mirror: str  # base URL (https://, http:// or file://)
    source: str  # cosign's default | TUF_MIRROR | the remote.json `cosign initialize` wrote
    root_missing: str | None = None  # a custom mirror without its root.json: what is missing


@dataclass(frozen=True, kw_only=True)
class Needs:
    """What signing under one policy needs to answer, before anything is built."""

    tuf: TufRepo | None = None  # asked at all
    tuf_required: bool = False  # cosign fails without it (else it only warns)
    from_tuf: bool = False  # the services are those of the TUF signing config
    services: tuple[Service, ...] = ()
    token: str | None = None  # keyless: the OIDC provider cosign will ask
    keyless: bool = False
    rekor_versions: tuple[int, ...] = (1, 2)


def needs(signer: Signer, policy: SignPolicy, env: Mapping[str, str], *, now: datetime) -> Needs:
    """What `cosign sign` under `policy` will contact (see the module's docstring)."""
    keyless = signer.mode == "keyless"
    token = oidc_provider(env) if keyless else None
    versions = (1, 2) if signer.major >= 3 else (1,)
    if policy.trusted_root is not None:
        read_json(policy.trusted_root, TRUSTED_ROOT_TYPE, "trusted root")
    if policy.signing_config is not None:
        document = read_json(policy.signing_config, SIGNING_CONFIG_TYPE, "signing config")
        services = config_services(
            document,
            source=f"the signing config {policy.signing_config}",
            keyless=keyless,
            rekor_versions=versions,
            now=now,
        )
        if not policy.tlog and any(s.kind == "rekor" for s in services):
            raise UsageError(
                f"sign: `tlog: false`, but the signing config {policy.signing_config} names a"
                " transparency log",
                hint="make one without it (`cosign signing-config create` without --rekor),"
                " or sign with `tlog: true`",
            )
        tuf = None if policy.trusted_root else tuf_repo(env)
        return Needs(tuf=tuf, services=services, token=token, keyless=keyless)
    if signer.major >= 3 and policy.format == "bundle" and policy.tlog and not policy.rekor_url:
        return Needs(
            tuf=tuf_repo(env),
            tuf_required=True,
            from_tuf=True,
            token=token,
            keyless=keyless,
            rekor_versions=versions,
        )
    return _flag_needs(signer, policy, env, token=token)


def _flag_needs(
    signer: Signer, policy: SignPolicy, env: Mapping[str, str], *, token: str | None
) -> Needs:
    """No signing config: the URLs are cosign's flags (`--rekor-url`) and their defaults."""
    keyless = signer.mode == "keyless"
    services: list[Service] = []
    if policy.tlog:
        source = "the spec's sign.rekor_url" if policy.rekor_url else "cosign's default"
        services.append(Service(kind="rekor", url=policy.rekor_url or DEFAULT_REKOR, source=source))
    if keyless:
        services.append(Service(kind="fulcio", url=DEFAULT_FULCIO, source="cosign's default"))
    asks_tuf = keyless and policy.trusted_root is None
    return Needs(
        tuf=tuf_repo(env) if asks_tuf else None,
        tuf_required=asks_tuf and signer.major < 3,
        services=tuple(services),
        token=token,
        keyless=keyless,
    )


def tuf_repo(env: Mapping[str, str]) -> TufRepo:
    """The repository cosign will use: $TUF_MIRROR, else `cosign initialize`'s, else Sigstore's."""
    home = Path(env.get("HOME") or "~").expanduser()
    cache = Path(env.get("TUF_ROOT") or home / ".sigstore" / "root")
    if env.get("TUF_MIRROR"):
        mirror, source = env["TUF_MIRROR"], "TUF_MIRROR"
    else:
        mirror, source = DEFAULT_TUF_MIRROR, "cosign's default"
        remote = cache / "remote.json"
        try:
            found = json.loads(remote.read_text(encoding="utf-8")).get("mirror")
        except (OSError, ValueError, AttributeError):
            found = None
        if isinstance(found, str) and found:
            mirror, source = found, f"{remote} (written by `cosign initialize`)"
    missing = None
    if mirror != DEFAULT_TUF_MIRROR:
        cached = cache / _url_to_path(mirror) / "root.json"
        root_json = env.get("TUF_ROOT_JSON")
        if root_json and not Path(root_json).is_file():
            missing = f"TUF_ROOT_JSON names {root_json}, which does not exist"
        elif not root_json and not cached.is_file():
            missing = f"neither TUF_ROOT_JSON nor {cached} holds the mirror's root.json"
    return TufRepo(mirror=mirror.rstrip("/"), source=source, root_missing=missing)


def _url_to_path(url: str) -> str:
    """sigstore-go's name for a mirror's cache folder (pkg/tuf/client.go, URLToPath)."""
    name = url.removeprefix("https://").removeprefix("http://")
    return name.replace("/", "-").replace(":", "-").lower()


def read_json(path: Path, media_type: str, what: str) -> dict[str, Any]:
    """A Sigstore JSON document of `media_type`, or a UsageError naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"sign: cannot read the {what} {path}: {exc}") from None
    found = document.get("mediaType") if isinstance(document, dict) else None
    if found != media_type:
        raise UsageError(
            f"sign: {path} is not a Sigstore {what} (mediaType {found!r}; cosign reads"
            f" {media_type!r})",
            hint=f"make it with `cosign {what.replace(' ', '-')} create`",
        )
    return document  # type: ignore[no-any-return]


def config_services(
    document: Mapping[str, Any],
    *,
    source: str,
    keyless: bool,
    rekor_versions: Sequence[int],
    now: datetime,
) -> tuple[Service, ...]:
    """The services of a signing config cosign may sign with, as sigstore-go selects them.

    With ANY or EXACT:n, sigstore-go picks at random among the candidates, so every
    candidate must answer for signing to work every time; all of them are returned.
    """
    found: list[Service] = []
    kinds = [("rekor", rekor_versions), ("tsa", (1,))]
    if keyless:
        kinds.append(("fulcio", (1,)))
    for kind, versions in kinds:
        entries = document.get(_CONFIG_KEYS[kind]) or []
        chosen = select(entries, versions, now, newest_only=kind == "fulcio")
        if kind == "fulcio" and not chosen:
            raise UsageError(f"sign: keyless signing needs a Fulcio, and {source} names none")
        found += [
            Service(kind=kind, url=str(e["url"]).rstrip("/"), api_version=v, source=source)
            for e, v in chosen
        ]
    return tuple(found)


def select(
    entries: Sequence[Any], versions: Sequence[int], now: datetime, *, newest_only: bool
) -> list[tuple[Mapping[str, Any], int]]:
    """The entries valid `now` at the highest supported API version, newest first, one per
    operator (or only the newest, as `SelectService` picks a Fulcio)."""
    valid = [e for e in entries if isinstance(e, Mapping) and e.get("url") and _valid(e, now)]
    valid.sort(key=lambda e: _time(e, "start") or _EPOCH)
    valid.reverse()
    for version in sorted(versions, reverse=True):
        at = [e for e in valid if int(e.get("majorApiVersion") or 0) == version]
        if not at:
            continue
        if newest_only:
            return [(at[0], version)]
        operators: dict[str, Mapping[str, Any]] = {}
        for entry in at:
            operators.setdefault(str(entry.get("operator", "")), entry)
        return [(e, version) for e in operators.values()]
    return []


def _valid(entry: Mapping[str, Any], now: datetime) -> bool:
    start, end = _time(entry, "start"), _time(entry, "end")
    return (start is None or start <= now) and (end is None or now <= end)


def _time(entry: Mapping[str, Any], which: str) -> datetime | None:
    valid_for = entry.get("validFor")
    text = valid_for.get(which) if isinstance(valid_for, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
