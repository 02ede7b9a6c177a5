"""`shipit verify`: check the cosign signatures of what a run pushed, or of given refs.

The refs come from the run's result document (every pushed `registry/repo@digest`) or the
command line; each is matched to the spec's image and registry it belongs to, so it is
verified with that image's signing policy (key, or keyless identity) and reached with that
registry's settings (plain HTTP, CA file, credentials).

The SLSA provenance too, where the image's policy attests it (or when asked): `cosign
verify-attestation --type slsaprovenance1` with the same key or identity, then every
verified statement's subject must be the digest, and its source commit and builder what the
caller expects (`--source-commit`, `--builder-id`, else the report's commit and builder).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shipit.errors import UsageError
from shipit.log import Console
from shipit.registry import Endpoint, RegistryError
from shipit.registry import Registry as Client
from shipit.spec import Image, Registry, SignPolicy, Spec
from shipit.stages import preflight, provenance, sign
from shipit.stages.provenance import Expected

__all__ = ["Expected", "Verified", "expected_from_report", "refs_from_report", "verify_refs"]


@dataclass(frozen=True, kw_only=True)
class Verified:
    ref: str
    ok: bool
    error: str | None = None
    provenance: provenance.Checked | None = None  # None: not checked


_UNSIGNED = SignPolicy()  # for a ref of no image the spec signs


def expected_from_report(path: Path) -> Expected:
    """The commit and builder a run's report says it built with (none when it does not)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Expected()
    source = document.get("source") if isinstance(document, dict) else None
    commit = source.get("commit") if isinstance(source, dict) else None
    builder = document.get("builder_id") if isinstance(document, dict) else None
    return Expected(
        commit=commit if isinstance(commit, str) else None,
        builder_id=builder if isinstance(builder, str) else None,
    )


def refs_from_report(path: Path) -> list[str]:
    """Every digest a run published, once each: for a multi-platform image the index and
    every platform manifest, in every registry that was tagged (per-platform verifiers, such
    as podman, check the platform's own signature)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"no report at {path}", hint="run `shipit run --report FILE` first, or name the refs"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the report {path}: {exc}") from None
    found: dict[str, None] = {}
    images = document.get("images", []) if isinstance(document, dict) else []
    for image in images if isinstance(images, list) else []:
        if not isinstance(image, dict):
            continue
        for registry in image.get("registries") or []:
            if isinstance(registry, dict) and registry.get("tags"):
                for manifest in registry.get("manifests") or []:
                    found[f"{registry.get('repository')}@{manifest.get('digest')}"] = None
        for ref in image.get("refs", []):
            if ref.get("pushed") and ref.get("digest"):
                repository = str(ref["ref"]).rpartition(":")[0]
                found[f"{repository}@{ref['digest']}"] = None
    if not found:
        raise UsageError(f"the report {path} lists nothing that was pushed")
    return list(found)


def verify_refs(
    spec: Spec,
    refs: Sequence[str],
    env: Mapping[str, str],
    console: Console,
    *,
    public_key: str | None = None,
    check_provenance: bool | None = None,
    expected: Expected | None = None,
) -> list[Verified]:
    """Verify each ref with the policy of the image it belongs to; its provenance too when
    `check_provenance` says so (None: where the policy attests it)."""
    groups: dict[int, tuple[SignPolicy, list[sign.SignTarget]]] = {}
    asked: set[int] = set()  # the policies the spec gives: they say whether to attest
    for ref in refs:
        image, registry = _owner(spec, ref)
        policy = (image.sign if image else None) or _UNSIGNED
        if policy is not _UNSIGNED and policy.provenance != "off":
            asked.add(id(policy))
        digest_ref = _digest_ref(ref, registry, env, console)
        credentials = preflight.credentials_for(registry, env) if registry else None
        if credentials:
            console.secret(credentials.password)
        target = sign.SignTarget(
            ref=digest_ref,
            insecure=registry.insecure if registry else False,
            ca_file=registry.ca_file if registry else None,
            username=credentials.username if credentials else None,
            password=credentials.password if credentials else None,
        )
        groups.setdefault(id(policy), (policy, []))[1].append(target)
    results: list[Verified] = []
    for policy, targets in groups.values():
        signed = sign.verify_all(targets, policy, env=env, console=console, public_key=public_key)
        checked: dict[str, Verified] = {}
        wanted = id(policy) in asked if check_provenance is None else check_provenance
        if wanted:
            good = [t for t, r in zip(targets, signed, strict=True) if r.ok]
            checked = _provenance(
                good, policy, env=env, console=console, public_key=public_key,
                expected=expected or Expected(),
            )  # fmt: skip
        for result in signed:
            plain = Verified(ref=result.ref, ok=result.ok, error=result.error)
            results.append(checked.get(result.ref, plain))
    return results


def _provenance(
    targets: list[sign.SignTarget],
    policy: SignPolicy,
    *,
    env: Mapping[str, str],
    console: Console,
    public_key: str | None,
    expected: Expected,
) -> dict[str, Verified]:
    """`cosign verify-attestation` of each (signed) target, then the statements' checks."""
    found: dict[str, Verified] = {}
    attested = sign.verify_all(
        targets, policy, env=env, console=console, public_key=public_key,
        attestation=provenance.COSIGN_TYPE,
    )  # fmt: skip
    for result in attested:
        if not result.ok:
            found[result.ref] = Verified(ref=result.ref, ok=False, error=result.error)
            continue
        digest = result.ref.rpartition("@")[2]
        checked = provenance.check_verified(result.output, digest, expected)
        error = "; ".join(checked.problems) or None
        found[result.ref] = Verified(ref=result.ref, ok=checked.ok, error=error, provenance=checked)
    return found


def _owner(spec: Spec, ref: str) -> tuple[Image | None, Registry | None]:
    """The spec's image and registry a ref lives in (by its `host/repository`)."""
    repository = ref.split("@", 1)[0]
    if ":" in repository.rpartition("/")[2]:
        repository = repository.rpartition(":")[0]
    for image in spec.images:
        for registry in image.registries:
            if registry.image(image.name) == repository:
                return image, registry
    return None, _registry_for_host(spec.images, repository.split("/", 1)[0])


def _registry_for_host(images: Iterable[Image], host: str) -> Registry | None:
    for image in images:
        for registry in image.registries:
            if registry.host == host:
                return registry
    return None


def _digest_ref(
    ref: str, registry: Registry | None, env: Mapping[str, str], console: Console
) -> str:
    """A ref by digest: a tag is resolved with the registry (signatures belong to digests)."""
    if "@sha256:" in ref:
        return ref
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    host, _, repository = name.partition("/")
    credentials = preflight.credentials_for(registry, env) if registry else None
    endpoint = Endpoint(
        host=host,
        insecure=registry.insecure if registry else False,
        ca_file=registry.ca_file if registry else None,
        credentials=credentials,
    )
    try:
        with Client(endpoint) as client:
            digest = client.manifest(repository, tag).digest
    except RegistryError as exc:
        raise UsageError(f"cannot resolve {ref} to a digest: {exc}") from None
    console.write(f"{ref} is {digest}")
    return f"{name}@{digest}"
