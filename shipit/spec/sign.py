"""The `sign:` section (cosign): the key or keyless identity, the signature format, tlog,
the Sigstore services to use instead of the public ones, cosign's time per signature, and
the SLSA provenance attested next to the signatures (`provenance`: true, false or max).

A mergeable section that `sign: false` turns off; a spec without `sign:` does not sign.
A key is named (a file, env://VAR, a KMS URI), never written in the spec. A signing config
names every service itself, so it takes neither `rekor_url` nor `format: legacy` (cosign 3.1
refuses service URLs next to a signing config, and writes a signing config's services only
into bundles: cmd/cosign/cli/signcommon/common.go, LoadTrustedMaterialAndSigningConfig).
"""

from __future__ import annotations

import re
from typing import Final

from yaml.nodes import Node

from shipit.spec.nodes import Reader
from shipit.spec.records import SignPolicy
from shipit.spec.sections import Mergeable, Section
from shipit.spec.tags import check_templates

_KMS_SCHEMES: Final = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://")
_ENV_KEY = re.compile(r"env://[A-Za-z_][A-Za-z0-9_]*")
_URL = re.compile(r"https?://[^\s/?#]+(?:/[^\s?#]*)?")
_KEYS: Final = (
    "key", "format", "tlog", "annotations", "attest_sbom", "identity", "oidc_issuer",
    "signing_config", "trusted_root", "rekor_url", "timeout", "provenance",
)  # fmt: skip


def read_sign(r: Reader, section: Section) -> SignPolicy | None:
    """The merged `sign:` section; None when the image is not signed."""
    if not section.on:
        return None
    e = section.entries
    no_strings: dict[str, str] = {}
    annotations = r.field(e, "annotations", lambda n: r.string_map(n, "annotations"), no_strings)
    check_templates(r, e.get("annotations"), "annotation", annotations)
    policy = SignPolicy(
        key=r.field(e, "key", lambda n: _key(r, n), None),
        format=r.field(
            e, "format", lambda n: r.choice(n, "format", ("bundle", "legacy")), "bundle"
        ),
        tlog=r.field(e, "tlog", lambda n: r.boolean(n, "tlog"), True),
        annotations=annotations,
        attest_sbom=r.field(e, "attest_sbom", lambda n: r.boolean(n, "attest_sbom"), False),
        identity=r.field(e, "identity", lambda n: r.string(n, "identity"), None),
        oidc_issuer=r.field(e, "oidc_issuer", lambda n: r.string(n, "oidc_issuer"), None),
        signing_config=r.field(
            e, "signing_config", lambda n: r.existing_file(n, "signing_config"), None
        ),
        trusted_root=r.field(e, "trusted_root", lambda n: r.existing_file(n, "trusted_root"), None),
        rekor_url=r.field(e, "rekor_url", lambda n: _url(r, n, "rekor_url"), None),
        timeout=r.field(e, "timeout", lambda n: r.duration(n, "timeout", minimum=1), 300),
        provenance=r.field(e, "provenance", lambda n: _provenance(r, n), "on"),
    )
    _check_services(r, section, policy)
    return policy


SIGN: Final = Mergeable(
    key="sign",
    keys=_KEYS,
    read=read_sign,
    switchable=True,
)


def _key(r: Reader, node: Node) -> str | None:
    text = r.string(node, "key", allow_empty=True)
    if not text:  # `key: ${COSIGN_KEY:-}` left empty means keyless
        return None
    if text.startswith("env://"):
        if not _ENV_KEY.fullmatch(text):
            r.error(node, f"key '{text}' must name a variable, like env://COSIGN_PRIVATE_KEY")
            return None
        return text
    if text.startswith(_KMS_SCHEMES):
        return text
    if "://" in text:
        r.error(
            node,
            f"key '{text}' has an unknown scheme; use a file, env://VAR, or one of"
            f" {', '.join(s.rstrip('/') for s in _KMS_SCHEMES)}",
        )
        return None
    if "BEGIN" in text and "PRIVATE KEY" in text:
        r.error(node, "never write a private key in the spec: use env://VAR or a file")
        return None
    path = r.existing_file(node, "key")
    return str(path) if path else None


def _url(r: Reader, node: Node, what: str) -> str | None:
    text = r.string(node, what)
    if text is None:
        return None
    if not _URL.fullmatch(text):
        r.error(node, f"{what} '{text}' must be an http:// or https:// URL")
        return None
    return text.rstrip("/")


def _check_services(r: Reader, section: Section, policy: SignPolicy) -> None:
    """A signing config names every service: no `rekor_url` and no legacy format beside it."""
    node = section.entries.get("signing_config")
    if node is None or policy.signing_config is None:
        return
    if policy.rekor_url is not None:
        r.error(
            section.entries["rekor_url"],
            "rekor_url and signing_config do not go together: cosign takes every service URL"
            " from the signing config, so list the Rekor there (`cosign signing-config create`)",
        )
    if policy.format == "legacy":
        r.error(
            node,
            "signing_config needs `format: bundle`: cosign writes the services of a signing"
            " config only into Sigstore bundles",
        )


def _provenance(r: Reader, node: Node) -> str | None:
    """`provenance: true` (build args by name), `false` (none), or `max` (with their values)."""
    chosen = r.choice(node, "provenance", ("true", "false", "max"))
    return {"true": "on", "false": "off", "max": "max"}.get(chosen) if chosen else None
