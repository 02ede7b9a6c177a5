"""`shipit promote`: copy a published image, byte for byte, with its signatures, elsewhere.

The image (by tag or digest, one platform or an index of several) must be one of the spec's:
its signature is checked at the source with the image's signing policy (the key, or the
keyless identity) before anything is copied; an image without a signature that verifies is
refused unless `--allow-unsigned`. Then, in every target at once (`push.parallel`):

1. the image by digest (`copy_image`: blobs skipped where present, mounted within one host),
2. everything attached to it and to each platform manifest: cosign's `sha256-<hex>.sig`,
   `.att` and `.sbom`, the referrers index `sha256-<hex>`, and the referrers the source's
   OCI referrers API lists (on a target without that API they get a referrers index),
3. the tags of those attachments, then the image's own tags (`--tag`, else the source tag).

So the target serves the same digests, and no tag points at anything before all of it is
there. A target is a spec registry url (its credentials and CA are used) or a host/namespace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shipit.errors import EXIT_FAILED, StageError, UsageError
from shipit.lifecycle.copying import Attachment, Copier, Source, TargetResult, attachments
from shipit.lifecycle.prune import Clients
from shipit.log import Console
from shipit.registry import (
    DIGEST_RE,
    TAG_RE,
    Registry,
    RegistryError,
)
from shipit.spec import Registry as SpecRegistry
from shipit.spec import Spec
from shipit.stages import preflight, sign

_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d+)?")


@dataclass(frozen=True, kw_only=True)
class PromoteResult:
    source: str  # host/repository@digest
    verified: bool
    started: datetime
    finished: datetime
    targets: tuple[TargetResult, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None  # refused before copying anything
    attachments: tuple[Attachment, ...] = field(default=(), repr=False)

    @property
    def exit_code(self) -> int:
        failed = self.error is not None or any(t.error for t in self.targets)
        return EXIT_FAILED if failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "command": "promote",
            "status": "failed" if self.exit_code else "success",
            "source": self.source,
            "verified": self.verified,
            "started": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finished": self.finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "warnings": list(self.warnings),
            "error": self.error,
            "targets": [t.to_json() for t in self.targets],
        }


def promote(
    spec: Spec,
    ref: str,
    *,
    to: Sequence[str],
    tags: Sequence[str],
    env: Mapping[str, str],
    console: Console,
    allow_unsigned: bool = False,
) -> PromoteResult:
    """Copy `ref` to every target of `to` (see the module docstring)."""
    started = datetime.now(UTC)
    source = _source(spec, ref)
    targets = list({t.url: t for t in (_target(spec, text, source) for text in to)}.values())
    if not targets:
        raise UsageError("promote needs at least one --to REGISTRY")
    for tag in tags:
        if not TAG_RE.fullmatch(tag):
            raise UsageError(f"--tag {tag!r} is not a valid tag")
    clients = Clients(env, console)
    try:
        client = clients.get(source.registry, source.image)
        digest = _resolve(client, source, ref)
        shown = f"{source.registry.host}/{source.repository}@{digest}"
        verified, said = _verify(source, shown, env, console)
        if not verified and not allow_unsigned:
            return PromoteResult(
                source=shown, verified=False, started=started, finished=datetime.now(UTC),
                error=f"{ref} is refused: {said}",
            )  # fmt: skip
        warnings = () if verified else (f"promoting {shown} without a verified signature ({said})",)
        for warning in warnings:
            console.warn(warning)
        results, attached = _copy(
            clients, source, digest=digest, targets=targets, tags=tags, console=console
        )
    except RegistryError as error:
        raise StageError("promote", f"cannot read {ref}: {error}") from None
    finally:
        clients.close()
    return PromoteResult(
        source=shown, verified=verified, started=started, finished=datetime.now(UTC),
        targets=results, warnings=warnings, attachments=attached,
    )  # fmt: skip


def _copy(
    clients: Clients,
    source: Source,
    *,
    digest: str,
    targets: Sequence[SpecRegistry],
    tags: Sequence[str],
    console: Console,
) -> tuple[tuple[TargetResult, ...], tuple[Attachment, ...]]:
    """The image and its attachments into every target at once (`push.parallel`)."""
    client = clients.get(source.registry, source.image)
    manifest = client.manifest(source.repository, digest)
    attached = tuple(attachments(client, source.repository, manifest))
    copier = Copier(
        clients,
        source=source,
        manifest=manifest,
        attachments=attached,
        tags=tuple(tags) or ((source.tag,) if source.tag else ()),
        console=console,
    )
    workers = max(1, min(source.image.push.parallel, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promote") as pool:
        return tuple(pool.map(copier.copy, targets)), attached


def _source(spec: Spec, ref: str) -> Source:
    """The spec's image and registry that `ref` (host/repository:tag or @digest) belongs to."""
    name, _, digest = ref.partition("@")
    tag = None
    last = name.rpartition("/")[2]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    if digest and not DIGEST_RE.fullmatch(digest):
        raise UsageError(f"{ref}: {digest!r} is not a digest")
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise UsageError(f"{ref}: {tag!r} is not a valid tag")
    if not digest and tag is None:
        raise UsageError(
            f"{ref} names no tag and no digest", hint="write HOST/REPO:TAG or @sha256:..."
        )
    for image in spec.images:
        for registry in image.registries:
            if registry.image(image.name) == name.lower():
                repository = registry.repository(image.name)
                return Source(
                    image=image,
                    registry=registry,
                    repository=repository,
                    tag=tag,
                    digest=digest or None,
                )
    known = ", ".join(r.image(i.name) for i in spec.images for r in i.registries)
    raise UsageError(f"{name} is not an image of {spec.path}", hint=f"promote one of: {known}")


def _target(spec: Spec, text: str, source: Source) -> SpecRegistry:
    """A spec registry by url (with its credentials and CA), else HOST[/NAMESPACE] as given."""
    wanted = text.strip().strip("/").lower()
    known = [r for i in spec.images for r in i.registries if r.url == wanted]
    host, _, namespace = wanted.partition("/")
    if known:
        target = known[0]
    elif "://" in text or not _HOST.fullmatch(host) or not _looks_like_host(host):
        raise UsageError(
            f"--to {text}: write a registry as HOST[:PORT][/NAMESPACE], like ghcr.io/acme"
        )
    else:
        target = SpecRegistry(url=wanted, host=host, namespace=namespace)
    if target.image(source.image.name) == source.registry.image(source.image.name):
        raise UsageError(f"--to {text} is where {source.image.name} comes from")
    return target


def _looks_like_host(name: str) -> bool:
    """As docker reads a reference: a first part with a dot or a port, or localhost."""
    return "." in name or ":" in name or name == "localhost"


def _resolve(client: Registry, source: Source, ref: str) -> str:
    if source.digest:
        return source.digest
    assert source.tag is not None  # noqa: S101 - _source requires a tag or a digest
    digest = client.manifest_digest(source.repository, source.tag)
    if digest is None:
        raise UsageError(f"{ref}: {source.registry.host} has no such tag")
    return digest


def _verify(
    source: Source, shown: str, env: Mapping[str, str], console: Console
) -> tuple[bool, str]:
    """Whether the source's signature verifies with the image's policy, and what was said."""
    policy = source.image.sign
    if policy is None:
        return (
            False,
            f"the spec does not sign {source.image.name} (no `sign:`), so it cannot be verified",
        )
    credentials = preflight.credentials_for(source.registry, env)
    target = sign.SignTarget(
        ref=shown, insecure=source.registry.insecure, ca_file=source.registry.ca_file,
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
    )  # fmt: skip
    result = sign.verify_all([target], policy, env=env, console=console)[0]
    if result.ok:
        console.write(f"verified {shown}")
        return True, "verified"
    return False, f"its signature does not verify: {result.error}"
