"""The sign stage: a cosign signature for every pushed `registry/repo@sha256:...`.

`check_signing` decides how to sign before anything is built (a key, or keyless with the CI
provider's OIDC token; which cosign, which major version), and `prove_signing` shows that it
can work: the key opens, the token is there, the Sigstore services cosign needs answer.
`sign_all` signs every digest in parallel; `verify_all` checks them with `cosign verify`.

- records.py: `SignTarget`, `SignResult`, `Signer`, `CosignTool`;
- cosign.py: which cosign and its major version;
- decide.py: `check_signing`, the OIDC provider, annotations cosign can carry;
- commands.py: the command lines (pure), per cosign major version;
- child.py: the child's environment (credentials, CA bundle) and the secrets to mask;
- running.py: signing, attesting and verifying many refs in parallel;
- preflight.py: `prove_signing`, before the build;
- services.py: which Sigstore services cosign will contact (what cosign 3.1 does, with sources);
- probes.py: asking them, with requests, through the proxy cosign would use.
"""

from __future__ import annotations

from shipit.stages.sign.child import cosign_env, docker_config, secrets_of, system_ca_file
from shipit.stages.sign.commands import (
    annotation_args,
    attest_command,
    public_key_command,
    registry_flags,
    sign_command,
    sign_format_flags,
    verify_command,
    verify_format_flags,
)
from shipit.stages.sign.cosign import (
    COSIGN_HINT,
    PROBE_TIMEOUT,
    find_cosign,
    major_from_help,
    major_from_version,
)
from shipit.stages.sign.decide import KEYLESS_HINT, check_annotations, check_signing, oidc_provider
from shipit.stages.sign.preflight import prove_signing
from shipit.stages.sign.records import KMS_SCHEMES, CosignTool, Signer, SignResult, SignTarget
from shipit.stages.sign.running import (
    VERIFY_TIMEOUT,
    attest_all,
    sign_all,
    verify_all,
)

__all__ = [
    "COSIGN_HINT",
    "KEYLESS_HINT",
    "KMS_SCHEMES",
    "PROBE_TIMEOUT",
    "VERIFY_TIMEOUT",
    "CosignTool",
    "SignResult",
    "SignTarget",
    "Signer",
    "annotation_args",
    "attest_all",
    "attest_command",
    "check_annotations",
    "check_signing",
    "cosign_env",
    "docker_config",
    "find_cosign",
    "major_from_help",
    "major_from_version",
    "oidc_provider",
    "prove_signing",
    "public_key_command",
    "registry_flags",
    "secrets_of",
    "sign_all",
    "sign_command",
    "sign_format_flags",
    "system_ca_file",
    "verify_all",
    "verify_command",
    "verify_format_flags",
]
