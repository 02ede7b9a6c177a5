"""`shipit verify`: check the cosign signatures of what a run pushed, or of given refs.

The refs come from the run's result document (every pushed `registry/repo@digest`) or the
command line; each is matched to the spec's image and registry it belongs to, so it is
verified with that image's signing policy (key, or keyless identity) and reached with that
registry's settings (plain HTTP, CA file, credentials).
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
from shipit.stages import preflight, sign


@dataclass(frozen=True, kw_only=True)
class Verified:
    ref: str
    ok: bool
    error: str | None = None


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
) -> list[Verified]:
    """Verify each ref with the policy of the image it belongs to."""
    groups: dict[int, tuple[SignPolicy, list[sign.SignTarget]]] = {}
    for ref in refs:
        image, registry = _owner(spec, ref)
        policy = (image.sign if image else None) or SignPolicy()
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
        for result in sign.verify_all(
            targets, policy, env=env, console=console, public_key=public_key
        ):
            results.append(Verified(ref=result.ref, ok=result.ok, error=result.error))
    return results


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
