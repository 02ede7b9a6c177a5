"""The `sign:` section (cosign): the key or keyless identity, the signature format, tlog,
and the SLSA provenance attested next to the signatures (`provenance`: true, false or max).

A mergeable section that `sign: false` turns off; a spec without `sign:` does not sign.
A key is named (a file, env://VAR, a KMS URI), never written in the spec.
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


def read_sign(r: Reader, section: Section) -> SignPolicy | None:
    """The merged `sign:` section; None when the image is not signed."""
    if not section.on:
        return None
    e = section.entries
    no_strings: dict[str, str] = {}
    annotations = r.field(e, "annotations", lambda n: r.string_map(n, "annotations"), no_strings)
    check_templates(r, e.get("annotations"), "annotation", annotations)
    return SignPolicy(
        key=r.field(e, "key", lambda n: _key(r, n), None),
        format=r.field(
            e, "format", lambda n: r.choice(n, "format", ("bundle", "legacy")), "bundle"
        ),
        tlog=r.field(e, "tlog", lambda n: r.boolean(n, "tlog"), True),
        annotations=annotations,
        attest_sbom=r.field(e, "attest_sbom", lambda n: r.boolean(n, "attest_sbom"), False),
        identity=r.field(e, "identity", lambda n: r.string(n, "identity"), None),
        oidc_issuer=r.field(e, "oidc_issuer", lambda n: r.string(n, "oidc_issuer"), None),
        provenance=r.field(e, "provenance", lambda n: _provenance(r, n), "on"),
    )


SIGN: Final = Mergeable(
    key="sign",
    keys=(
        "key",
        "format",
        "tlog",
        "annotations",
        "attest_sbom",
        "identity",
        "oidc_issuer",
        "provenance",
    ),
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


def _provenance(r: Reader, node: Node) -> str | None:
    """`provenance: true` (build args by name), `false` (none), or `max` (with their values)."""
    chosen = r.choice(node, "provenance", ("true", "false", "max"))
    return {"true": "on", "false": "off", "max": "max"}.get(chosen) if chosen else None
