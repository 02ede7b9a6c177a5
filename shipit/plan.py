"""The plan: a pure function of spec and context, and a frozen, JSON-serialisable value.

`shipit plan` prints it; `shipit run` executes it. Nothing here touches Docker, the
network or a subprocess.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shipit import templates
from shipit.context import Context
from shipit.errors import Problem, SpecError, UsageError
from shipit.spec import STAGES, Image, Spec
from shipit.tags import derive_tags, template_values
from shipit.version import Version, derive, parse_release

PLAN_SCHEMA: Final = 1
OCI: Final = "org.opencontainers.image"


@dataclass(frozen=True, kw_only=True)
class Target:
    """One registry an image goes to, with the full refs it gets there."""

    registry: str  # as in the spec: host[/namespace]
    host: str
    repository: str
    refs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "host": self.host,
            "repository": self.repository,
            "refs": list(self.refs),
        }


@dataclass(frozen=True, kw_only=True)
class BuildSecret:
    """A build secret by name only: where BuildKit reads it (an env variable or a file)."""

    id: str
    env: str | None = None
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "env": self.env, "file": self.file}


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    context: str
    dockerfile: str
    target: str | None
    platforms: tuple[str, ...]  # empty: one image, for the builder's own platform
    build_args: Mapping[str, str]
    labels: Mapping[str, str]
    pull: bool
    cache_from: tuple[str, ...]
    engine: str = "sdk"  # sdk | buildx | buildah
    builder: str | None = None  # buildx: a builder or docker context
    # the spec names no engine: sdk, but buildx on a daemon with the containerd image store
    # (Engines.choose_defaults)
    engine_default: bool = False
    secrets: tuple[BuildSecret, ...] = ()
    ssh: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    network: str | None = None
    no_cache: bool = False
    isolation: str | None = None  # buildah: the spec's; None: BUILDAH_ISOLATION, else chroot

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "builder": self.builder,
            "context": self.context,
            "dockerfile": self.dockerfile,
            "target": self.target,
            "platforms": list(self.platforms),
            "build_args": dict(self.build_args),
            "labels": dict(self.labels),
            "pull": self.pull,
            "cache_from": list(self.cache_from),
            "cache_to": list(self.cache_to),
            "secrets": [s.to_json() for s in self.secrets],
            "ssh": list(self.ssh),
            "network": self.network,
            "no_cache": self.no_cache,
            "isolation": self.isolation,
        }


@dataclass(frozen=True, kw_only=True)
class LegPlan:
    """This run builds one platform of a multi-platform image, as one leg of a distributed
    build (DESIGN section 9): an OCI manifest pushed by digest, no index, signature or tag."""

    platform: str
    platforms: tuple[str, ...]  # every platform the image plans: what the merge joins
    record: bool = False  # also store the leg document in each registry, for `shipit merge`

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform, "platforms": list(self.platforms), "record": self.record}


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    name: str
    version: Version
    tags: tuple[str, ...]
    targets: tuple[Target, ...]
    build: BuildSettings
    stages: tuple[str, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)  # for signatures
    skipped: str | None = None  # why this image is not built in this run
    image: Image = field(repr=False, compare=False)
    leg: LegPlan | None = None  # set when this run is one leg of a distributed build

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(ref for target in self.targets for ref in target.refs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version.text,
            "is_release": self.version.is_release,
            "tags": list(self.tags),
            "refs": list(self.refs),
            "targets": [t.to_json() for t in self.targets],
            "build": self.build.to_json(),
            "stages": list(self.stages),
            "annotations": dict(self.annotations),
            "skipped": self.skipped,
            **({"leg": self.leg.to_json()} if self.leg is not None else {}),
        }


@dataclass(frozen=True, kw_only=True)
class Source:
    """What was built from, for the provenance: the repository, the commit checked out (the
    one the build context holds), and the ref and event of the run."""

    repository: str | None  # a browsable https URL, when the CI or the git remote names one
    commit: str
    ref: str | None
    event: str
    dirty: bool = False
    root: str | None = None  # the work tree's top folder, where relative paths start

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "commit": self.commit,
            "ref": self.ref,
            "event": self.event,
            "dirty": self.dirty,
        }


@dataclass(frozen=True, kw_only=True)
class Plan:
    spec: str
    context: Mapping[str, Any]
    images: tuple[ImagePlan, ...]
    warnings: tuple[str, ...] = ()
    source: Source | None = None

    @property
    def version(self) -> str | None:
        """The version of the first image built: the one a single-image spec has."""
        active = [i for i in self.images if not i.skipped] or list(self.images)
        return active[0].version.text if active else None

    def active(self) -> tuple[ImagePlan, ...]:
        return tuple(i for i in self.images if not i.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "spec": self.spec,
            "version": self.version,
            "context": dict(self.context),
            "images": [i.to_json() for i in self.images],
            "warnings": list(self.warnings),
        }


def make_plan(
    spec: Spec,
    ctx: Context,
    *,
    skip: Collection[str] = (),
    push: bool = True,
    only: str | None = None,
) -> Plan:
    """What a run of `spec` in `ctx` would do."""
    unknown = sorted(set(skip) - set(STAGES))
    if unknown:
        raise UsageError(f"--skip takes {', '.join(STAGES)}; not {', '.join(unknown)}")
    if "build" in skip:
        raise UsageError("the build stage cannot be skipped: every later stage needs its image")
    chosen = [spec.image(only)] if only else list(spec.images)
    released_by = _release_owner(spec, ctx)
    images = tuple(
        _image_plan(image, ctx, skip=skip, push=push, released_by=released_by) for image in chosen
    )
    return Plan(
        spec=str(spec.path),
        context=ctx.summary(),
        images=images,
        warnings=tuple(_warnings(ctx, images)),
        source=Source(
            repository=ctx.source_url,
            commit=ctx.head_sha,
            ref=ctx.ref,
            event=ctx.event,
            dirty=ctx.dirty,
            root=str(ctx.repo_root) if ctx.repo_root else None,
        ),
    )


def _release_owner(spec: Spec, ctx: Context) -> set[str]:
    """On a tag build, the images whose release pattern the tag matches."""
    if ctx.event != "tag" or not ctx.tag:
        return set()
    return {i.name for i in spec.images if parse_release(ctx.tag, i.release_regex()) is not None}


def _image_plan(
    image: Image,
    ctx: Context,
    *,
    skip: Collection[str],
    push: bool,
    released_by: set[str],
) -> ImagePlan:
    version = derive(ctx, image.release_regex())
    tags = derive_tags(image, ctx, version)
    values = template_values(ctx, version, image.name)
    build = _build_settings(image, ctx, version, values)
    targets = tuple(
        Target(
            registry=registry.url,
            host=registry.host,
            repository=registry.repository(image.name),
            refs=tuple(f"{registry.image(image.name)}:{tag}" for tag in tags),
        )
        for registry in image.registries
    )
    annotations: dict[str, str] = {}
    if image.sign is not None:
        annotations = {
            "org.opencontainers.image.revision": ctx.sha,
            "org.opencontainers.image.version": version.text,
            **_render_all(image, "annotation", image.sign.annotations, values),
        }
    skipped = None
    if released_by and image.name not in released_by:
        owners = ", ".join(sorted(released_by))
        skipped = f"tag {ctx.tag} releases {owners}, not {image.name}"
    elif not tags:
        skipped = "no tag rule produced a tag for this build"
    return ImagePlan(
        name=image.name,
        version=version,
        tags=tags,
        targets=targets,
        build=build,
        stages=_stages(image, skip=skip, push=push),
        annotations=annotations,
        skipped=skipped,
        image=image,
    )


def _build_settings(
    image: Image, ctx: Context, version: Version, values: Mapping[str, Any]
) -> BuildSettings:
    """How the image is built: the spec's build keys, with labels and build args rendered."""
    options = image.build
    return BuildSettings(
        context=str(image.context),
        dockerfile=image.dockerfile,
        target=image.target,
        platforms=options.platforms,
        build_args=_render_all(image, "build arg", image.build_args, values),
        labels={
            **oci_labels(image, ctx, version),
            **_render_all(image, "label", image.labels, values),
        },
        pull=image.pull,
        cache_from=options.cache_from,
        engine=options.engine,
        engine_default=options.engine_default,
        builder=options.builder,
        secrets=tuple(
            BuildSecret(id=s.id, env=s.env, file=str(s.file) if s.file else None)
            for s in options.secrets
        ),
        ssh=options.ssh,
        cache_to=options.cache_to,
        network=options.network,
        no_cache=options.no_cache,
        isolation=options.isolation,
    )


def _stages(image: Image, *, skip: Collection[str], push: bool) -> tuple[str, ...]:
    wanted = {
        "build": True,
        "scan": image.scan is not None,
        "push": push,
        "sign": image.sign is not None and push,
    }
    return tuple(stage for stage in STAGES if wanted[stage] and stage not in skip)


def oci_labels(image: Image, ctx: Context, version: Version) -> dict[str, str]:
    """The `org.opencontainers.image.*` labels every image gets."""
    labels = {
        f"{OCI}.created": ctx.commit_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{OCI}.revision": ctx.sha,
        f"{OCI}.version": version.text,
        f"{OCI}.title": image.name,
    }
    if ctx.source_url:
        labels[f"{OCI}.source"] = ctx.source_url
        labels[f"{OCI}.url"] = ctx.source_url
    return labels


def _render_all(
    image: Image, what: str, sources: Mapping[str, str], values: Mapping[str, Any]
) -> dict[str, str]:
    rendered = {}
    for key, source in sources.items():
        try:
            rendered[key] = templates.render(source, values)
        except templates.TemplateError as exc:
            problem = Problem(location=image.location, message=f"{what} '{key}': {exc}")
            raise SpecError([problem]) from None
    return rendered


def _warnings(ctx: Context, images: tuple[ImagePlan, ...]) -> list[str]:
    warnings = []
    if ctx.shallow and any(not i.version.is_release and i.version.base is None for i in images):
        warnings.append(
            "shallow clone without release tags: versions count from 0.0.0; fetch the whole"
            " history and tags (actions/checkout `fetch-depth: 0`, GitLab `GIT_DEPTH: 0`)"
        )
    if ctx.dirty:
        warnings.append(
            "the working tree has uncommitted changes; the image will not match its commit"
        )
    for image in images:
        if image.skipped:
            warnings.append(f"image {image.name} is skipped: {image.skipped}")
    return warnings
