"""The spec (`shipit.yml`, version 1): parsed once into frozen records.

Every problem is reported with FILE:LINE:COL, all at once. One module per part of the spec:

- `records`: the frozen records (`Spec`, `Image`, `Registry`, ...) and the vocabularies;
- `loading`: `load` and `parse`, the top level (`version`, `image:`/`images:`, `x-` keys);
- `sections`: what an image inherits from the top of the spec, and how sections merge;
- `images`: one image's own keys (name, context, dockerfile, build args, labels,
  release), then its inherited sections;
- `build`: the engine (`sdk` or `buildx`), platforms and the BuildKit keys;
- `registries`, `tags` (with `flavor` and the template checks), `scan`, `sign`, `push`,
  `retention`: one reader per section;
- `nodes`: the located-node `Reader` they all share;
- `composing`: text to nodes, nesting bounded, merge keys applied; `paths`: every path
  checked (NUL, control characters, PATH_MAX, NAME_MAX) and every stat guarded.

Sections that may stand at the top as defaults for every image (`registries`, `tags`,
`flavor`, `scan`, `sign`, `push`, `retention`) are merged per image: a list in an image
replaces the top one; a mapping is merged key by key, the image's keys winning; `scan: false`
/ `sign: false` / `retention: false` in an image turns a top-level section off for that image.
"""

from __future__ import annotations

from shipit.spec.loading import load, parse
from shipit.spec.records import (
    DEFAULT_PRIORITY,
    DEFAULT_RELEASE_PATTERN,
    REF_EVENTS,
    SCANNERS,
    SEMVER_NAMES,
    SEVERITIES,
    SPEC_VERSION,
    STAGES,
    TAG_TYPES,
    TEMPLATE_NAMES,
    BuildOptions,
    BuildSecret,
    Flavor,
    Image,
    KeepRule,
    PushPolicy,
    Registry,
    Reports,
    RetentionPolicy,
    ScanPolicy,
    SignPolicy,
    Spec,
    TagRule,
)
from shipit.spec.tags import default_rules, template_problem

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_RELEASE_PATTERN",
    "REF_EVENTS",
    "SCANNERS",
    "SEMVER_NAMES",
    "SEVERITIES",
    "SPEC_VERSION",
    "STAGES",
    "TAG_TYPES",
    "TEMPLATE_NAMES",
    "BuildOptions",
    "BuildSecret",
    "Flavor",
    "Image",
    "KeepRule",
    "PushPolicy",
    "Registry",
    "Reports",
    "RetentionPolicy",
    "ScanPolicy",
    "SignPolicy",
    "Spec",
    "TagRule",
    "default_rules",
    "load",
    "parse",
    "template_problem",
]
