"""The spec's images as a CI matrix, so a pipeline can run one job per image.

`document(plan)` is pure: the images this build releases (a monorepo tag's other images
are left out), each with its version and build context, in the `{"include": [...]}` shape
GitHub's `strategy.matrix` takes from `fromJSON`. `gitlab_snippet` is the same list as a
`parallel:matrix` to paste into a GitLab job. Each job then runs `shipit run --image NAME`.
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


def document(plan: Plan) -> dict[str, Any]:
    """`{"include": [{"image", "version", "context"}, ...]}` for the images this build makes."""
    root = Path(plan.spec).parent
    return {"include": [_entry(image, root) for image in plan.active()]}


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


def gitlab_snippet(matrix: Mapping[str, Any]) -> str:
    """A `parallel:matrix` over IMAGE, to paste into the job that extends `.shipit`."""
    names = [entry["image"] for entry in matrix["include"]]
    if not names:
        raise UsageError(
            "no image to build for this ref, so there is no matrix to print",
            hint="every image is skipped; `shipit plan` says why",
        )
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
