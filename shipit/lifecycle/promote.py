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

import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shipit.errors import EXIT_FAILED, UsageError
from shipit.lifecycle.prune import Clients
from shipit.lifecycle.records import artifact_tags, short
from shipit.log import Console
from shipit.registry import (
    DIGEST_RE,
    OCI_INDEX,
    TAG_RE,
    Manifest,
    Registry,
    RegistryError,
    copy_image,
    parse_referrers,
)
from shipit.spec import Image, Spec
from shipit.spec import Registry as SpecRegistry
from shipit.stages import preflight, sign

_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d+)?")


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """Something that belongs to the image: under an artifact tag, or a referrer."""

    digest: str
    subject: str
    tag: str | None = None  # None: found through the referrers API


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    registry: str
    repository: str  # host/repository
    digest: str | None = None
    tags: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()
    blobs_copied: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    warnings: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry, "repository": self.repository, "digest": self.digest,
            "tags": list(self.tags), "attachments": list(self.attachments),
            "blobs_copied": self.blobs_copied, "blobs_mounted": self.blobs_mounted,
            "bytes_copied": self.bytes_copied, "warnings": list(self.warnings),
            "error": self.error,
        }  # fmt: skip


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


@dataclass(frozen=True, kw_only=True)
class _Source:
    image: Image
    registry: SpecRegistry
    repository: str
    tag: str | None
    digest: str | None


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
        manifest = client.manifest(source.repository, digest)
        attachments = _attachments(client, source.repository, manifest)
        wanted = tuple(tags) or ((source.tag,) if source.tag else ())
        copier = _Copier(
            clients,
            source=source,
            manifest=manifest,
            attachments=attachments,
            tags=wanted,
            console=console,
        )
        with ThreadPoolExecutor(
            max_workers=max(1, min(source.image.push.parallel, len(targets)))
        ) as pool:
            results = tuple(pool.map(copier.copy, targets))
    except RegistryError as error:
        raise UsageError(f"cannot read {ref}: {error}") from None
    finally:
        clients.close()
    return PromoteResult(
        source=shown, verified=verified, started=started, finished=datetime.now(UTC),
        targets=results, warnings=warnings, attachments=tuple(attachments),
    )  # fmt: skip


def _source(spec: Spec, ref: str) -> _Source:
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
                return _Source(
                    image=image,
                    registry=registry,
                    repository=repository,
                    tag=tag,
                    digest=digest or None,
                )
    known = ", ".join(r.image(i.name) for i in spec.images for r in i.registries)
    raise UsageError(f"{name} is not an image of {spec.path}", hint=f"promote one of: {known}")


def _target(spec: Spec, text: str, source: _Source) -> SpecRegistry:
    """A spec registry by url (with its credentials and CA), else HOST[/NAMESPACE] as given."""
    wanted = text.strip().strip("/").lower()
    for image in spec.images:
        for registry in image.registries:
            if registry.url == wanted:
                return registry
    host, _, namespace = wanted.partition("/")
    if (
        "://" in text
        or not _HOST.fullmatch(host)
        or not ("." in host or ":" in host or host == "localhost")
    ):
        raise UsageError(
            f"--to {text}: write a registry as HOST[:PORT][/NAMESPACE], like ghcr.io/acme"
        )
    target = SpecRegistry(url=wanted, host=host, namespace=namespace)
    if target.image(source.image.name) == source.registry.image(source.image.name):
        raise UsageError(f"--to {text} is where {source.image.name} comes from")
    return target


def _resolve(client: Registry, source: _Source, ref: str) -> str:
    if source.digest:
        return source.digest
    assert source.tag is not None  # noqa: S101 - _source requires a tag or a digest
    digest = client.manifest_digest(source.repository, source.tag)
    if digest is None:
        raise UsageError(f"{ref}: {source.registry.host} has no such tag")
    return digest


def _verify(
    source: _Source, shown: str, env: Mapping[str, str], console: Console
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


def _attachments(client: Registry, repository: str, manifest: Manifest) -> list[Attachment]:
    """What belongs to the image and its platform manifests: artifact tags and referrers."""
    subjects = [manifest.digest, *(c.digest for c in manifest.children())]
    found: list[Attachment] = []
    for subject in subjects:
        for tag in artifact_tags(subject):
            digest = client.manifest_digest(repository, tag)
            if digest is not None:
                found.append(Attachment(digest=digest, subject=subject, tag=tag))
        listed = {a.digest for a in found}
        for referrer in client.referrers(repository, subject) or ():
            if referrer.digest not in listed:
                found.append(Attachment(digest=referrer.digest, subject=subject))
    return found


class _Copier:
    """Copies the image and its attachments into one target; shared by the threads."""

    def __init__(
        self,
        clients: Clients,
        *,
        source: _Source,
        manifest: Manifest,
        attachments: Sequence[Attachment],
        tags: Sequence[str],
        console: Console,
    ) -> None:
        self.clients, self.source, self.manifest = clients, source, manifest
        self.attachments, self.tags, self.console = attachments, tags, console

    def copy(self, target: SpecRegistry) -> TargetResult:
        repository = target.repository(self.source.image.name)
        where = f"{target.host}/{repository}"
        src = self.clients.get(self.source.registry, self.source.image)
        try:
            dst = self.clients.get(target, self.source.image)
            copied = copy_image(
                src, self.source.repository, self.manifest.digest, dst, repository, []
            )
            results = [copied]
            for item in self.attachments:
                results.append(
                    copy_image(src, self.source.repository, item.digest, dst, repository, [])
                )
            counts = [
                sum(len(r.blobs_copied) for r in results),
                sum(len(r.blobs_mounted) for r in results),
                sum(r.bytes_copied for r in results),
            ]
            warnings = self._tag_attachments(src, dst, repository)
            for tag in self.tags:
                dst.put_manifest(repository, tag, self.manifest)
        except RegistryError as error:
            return TargetResult(registry=target.url, repository=where, error=str(error))
        self.console.write(
            f"{target.url}: {where}@{self.manifest.digest} with {len(self.attachments)} attachments"
        )
        return TargetResult(
            registry=target.url, repository=where, digest=copied.digest, tags=tuple(self.tags),
            attachments=tuple(a.digest for a in self.attachments), blobs_copied=counts[0],
            blobs_mounted=counts[1], bytes_copied=counts[2], warnings=tuple(warnings),
        )  # fmt: skip

    def _tag_attachments(self, src: Registry, dst: Registry, repository: str) -> list[str]:
        """The artifact tags at the target, and a referrers index where it lacks the API."""
        warnings: list[str] = []
        for item in self.attachments:
            if item.tag is None:
                continue
            manifest = src.manifest(self.source.repository, item.digest)
            there = dst.manifest_digest(repository, item.tag)
            if there not in (None, item.digest):
                if item.tag.endswith((".sig", ".att", ".sbom")):
                    warnings.append(f"{item.tag} at the target held other signatures; replaced")
                else:
                    manifest = _merged(dst.manifest(repository, item.tag), manifest)
            dst.put_manifest(repository, item.tag, manifest)
        untagged = [a for a in self.attachments if a.tag is None]
        if untagged and dst.referrers(repository, self.manifest.digest) is None:
            for subject in dict.fromkeys(a.subject for a in untagged):
                self._referrers_index(
                    src, dst, repository, subject, [a for a in untagged if a.subject == subject]
                )
        return warnings

    def _referrers_index(
        self,
        src: Registry,
        dst: Registry,
        repository: str,
        subject: str,
        items: Sequence[Attachment],
    ) -> None:
        """The OCI referrers tag (`sha256-<hex>`) for referrers a target cannot list itself."""
        entries = []
        for item in items:
            manifest = src.manifest(self.source.repository, item.digest)
            document = json.loads(manifest.data)
            entry = {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.data),
            }
            if isinstance(document.get("artifactType"), str):
                entry["artifactType"] = document["artifactType"]
            entries.append(entry)
        tag = artifact_tags(subject)[0]
        index = Manifest.from_bytes(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(),
            OCI_INDEX,
        )
        if dst.manifest_digest(repository, tag) is not None:
            index = _merged(dst.manifest(repository, tag), index)
        dst.put_manifest(repository, tag, index)
        self.console.write(f"{repository}: referrers index {tag} for {short(subject)}")


def _merged(existing: Manifest, extra: Manifest) -> Manifest:
    """A referrers index listing what `existing` and `extra` list, each once."""
    old = json.loads(existing.data).get("manifests") or []
    new = json.loads(extra.data).get("manifests") or []
    seen = {m.get("digest") for m in old if isinstance(m, dict)}
    merged = old + [m for m in new if isinstance(m, dict) and m.get("digest") not in seen]
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": merged}
    parse_referrers(json.dumps(document).encode())  # both were referrers indexes: check it
    return Manifest.from_bytes(json.dumps(document).encode(), OCI_INDEX)
