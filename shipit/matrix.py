"""The spec's images as a CI matrix, so a pipeline can run one job per image (or platform).

`document(plan)` is pure: the images this build releases (a monorepo tag's other images
are left out), each with its version and build context, in the `{"include": [...]}` shape
GitHub's `strategy.matrix` takes from `fromJSON`. `gitlab_snippet` is the same list as a
`parallel:matrix` to paste into a GitLab job. Each job then runs `shipit run --image NAME`.

`by="platform"` makes one entry per image and platform instead, for the legs of a
distributed build (DESIGN section 9): each also has the platform, its `os` and its `arch`
(`amd64`, `arm64`, `arm-v7`: the label to map to a runner of that CPU), and each job runs
`shipit run --image NAME --platform P --leg`; a job after them all runs `shipit merge`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final

from shipit.errors import UsageError
from shipit.plan import ImagePlan, Plan

OUTPUT: Final = "matrix"  # the GitHub step output `shipit matrix` writes
VARIABLE: Final = "IMAGE"  # the GitLab matrix variable


LEG_VARIABLES: Final = ("SHIPIT_IMAGE", "SHIPIT_PLATFORM", "SHIPIT_ARCH")  # GitLab, by platform


def document(plan: Plan, *, by: str = "image") -> dict[str, Any]:
    """`{"include": [{"image", "version", "context"}, ...]}` for the images this build makes;
    `by="platform"`: an entry per image and platform, with `platform`, `os` and `arch`."""
    root = Path(plan.spec).parent
    if by != "platform":
        return {"include": [_entry(image, root) for image in plan.active()]}
    entries = []
    for image in plan.active():
        if not image.build.platforms:
            raise UsageError(
                f"image {image.name} lists no platforms, so it has no legs: give it"
                " `platforms: [...]`, or build it with `shipit matrix` (a job per image)"
            )
        for platform in image.build.platforms:
            entry = _entry(image, root)
            entries.append({"image": entry["image"], **_platform_fields(platform), **entry})
    return {"include": entries}


def _platform_fields(platform: str) -> dict[str, str]:
    """`linux/arm/v7` -> platform, os `linux`, arch `arm-v7` (arm64's v8 is left out)."""
    os_name, arch, *variant = platform.split("/")
    if variant and variant != ["v8"]:
        arch = f"{arch}-{variant[0]}"
    return {"platform": platform, "os": os_name, "arch": arch}


def _entry(image: ImagePlan, root: Path) -> dict[str, str]:
    return {
        "image": image.name,
        "version": image.version.text,
        "context": _relative(Path(image.build.context), root),
    }


def _relative(context: Path, root: Path) -> str:
    """The build context relative to the spec's folder, with forward slashes."""
    relative = os.path.relpath(context, root.resolve())
    return str(PurePosixPath(*Path(relative).parts)) if relative != "." else "."


def to_json(matrix: Mapping[str, Any]) -> str:
    """One line, so `echo "matrix=$(shipit matrix)" >> "$GITHUB_OUTPUT"` works too."""
    return json.dumps(matrix)


def gitlab_snippet(matrix: Mapping[str, Any], *, by: str = "image") -> str:
    """A `parallel:matrix` over IMAGE, to paste into the job that extends `.shipit`; with
    `by="platform"`, over image, platform and arch for the job that extends `.shipit-leg`."""
    names = [entry["image"] for entry in matrix["include"]]
    if not names:
        raise UsageError(
            "no image to build for this ref, so there is no matrix to print",
            hint="every image is skipped; `shipit plan` says why",
        )
    if by == "platform":
        image, platform, arch = LEG_VARIABLES
        lines = [
            "# the job that extends .shipit-leg: one leg per image and platform; map",
            f"# ${arch} to a runner of that CPU, e.g. tags: [saas-linux-small-${arch}]",
            "parallel:",
            "  matrix:",
        ]
        for entry in matrix["include"]:
            lines += [
                f"    - {image}: {entry['image']}",
                f"      {platform}: {entry['platform']}",
                f"      {arch}: {entry['arch']}",
            ]
        return "\n".join(lines) + "\n"
    return (
        "# the job that extends .shipit: one job per image, each with\n"
        f"#   variables: {{SHIPIT_ARGS: --image ${VARIABLE}}}\n"
        "parallel:\n"
        "  matrix:\n"
        f"    - {VARIABLE}: [{', '.join(names)}]\n"
    )


def write_github_output(matrix: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """In GitHub Actions, append the matrix to GITHUB_OUTPUT as `matrix`; True if written."""
    path = env.get("GITHUB_OUTPUT")
    if env.get("GITHUB_ACTIONS") != "true" or not path:
        return False
    from shipit.ci_outputs import github_output  # noqa: PLC0415 (only in GitHub Actions)

    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(github_output(OUTPUT, to_json(matrix)))
    return True
