"""The commands that fan a build out over CI jobs and join it again: `matrix` (a job per
image, or per image and platform) and `merge` (the legs of a distributed build, DESIGN
section 9). The group in `shipit.cli` adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from shipit import app
from shipit.cli_common import (
    command_options,
    finish,
    report_path,
    shared_options,
    sigterm_as_interrupt,
)


@click.command()
@shared_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["github", "gitlab"]),
    default="github",
    show_default=True,
    help="github: the JSON matrix; gitlab: a parallel:matrix snippet to paste.",
)
@click.option("--json", "as_json", is_flag=True, help="The JSON matrix (what github prints).")
@click.option(
    "--by",
    type=click.Choice(["image", "platform"]),
    default="image",
    show_default=True,
    help="image: a job per image; platform: a job per image and platform (the legs).",
)
@click.pass_context
def matrix(ctx: click.Context, /, *, output_format: str, as_json: bool, by: str, **_: Any) -> int:
    """The images of the spec as a CI matrix, to run one job per image (or per platform).

    Prints {"include": [{"image": ..., "version": ..., "context": ...}, ...]} on one line (the
    context relative to the spec's folder), for GitHub's `strategy: matrix: ${{
    fromJSON(needs.JOB.outputs.matrix) }}`; in GitHub Actions it also goes to the step output
    `matrix`. Each job then runs `shipit run --image NAME` (the action's `image` input). Images
    this build does not release are left out: a monorepo tag api/v1.2.0 fans out to api only.

    --by platform makes one entry per image and platform, for the legs of a distributed build:
    {"image", "platform", "os", "arch", "version", "context"}, where `arch` (amd64, arm64,
    arm-v7...) is what to map to a runner label; each job runs `shipit run --image NAME
    --platform P --leg`, and one job after them all `shipit merge`.

    --format gitlab prints `parallel: matrix: - IMAGE: [...]` to paste into the job that extends
    `.shipit`, with `SHIPIT_ARGS: --image $IMAGE` (--by platform: entries of SHIPIT_IMAGE,
    SHIPIT_PLATFORM and SHIPIT_ARCH for a job that extends `.shipit-leg`). GitLab cannot
    make a matrix from a value computed in the pipeline, and a generated child pipeline
    would move the jobs, their artifacts and reports out of the main pipeline; a pasted
    matrix keeps them in it. Print it on a branch, where every image is built; on a monorepo
    tag the jobs of the other images build and push nothing.

    \b
    Examples:
      shipit matrix
      shipit matrix --format gitlab
      shipit matrix --by platform
    """
    from shipit import matrix as matrix_mod  # noqa: PLC0415

    if as_json and output_format == "gitlab":
        raise click.UsageError("--json and --format gitlab do not go together")
    options, env, console = command_options(ctx)
    result = app.plan(options, env)
    for warning in result.warnings:
        console.warn(warning)
    document = matrix_mod.document(result, by=by)
    matrix_mod.write_github_output(document, env)
    if output_format == "gitlab":
        click.echo(matrix_mod.gitlab_snippet(document, by=by), nl=False)
    else:
        click.echo(matrix_mod.to_json(document))
    return 0


@click.command()
@shared_options
@click.argument("legs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON.")
@click.option("--skip", multiple=True, metavar="STAGE", help="Leave out a stage (sign).")
@click.option("--image", "only", metavar="NAME", help="Only this image of the spec.")
@click.option(
    "--report", metavar="FILE", help="Write the result document here (default shipit-report.json)."
)
@click.pass_context
def merge(
    ctx: click.Context,
    /,
    *,
    legs: Sequence[Path],
    as_json: bool,
    skip: Sequence[str],
    only: str | None,
    report: str | None,
    **_: Any,
) -> int:
    """Join the legs of a distributed build: one index per image, signed, then tagged.

    LEGS are leg documents (`shipit run --leg` writes them), or folders holding them; with
    none, the legs are read from the registries, where `--leg-record` stored them. Every
    planned platform of every image must have a leg of this commit and version, in every
    registry; a missing, duplicate or foreign leg fails the merge (exit 1) and nothing is
    tagged. Then the index is stored by digest everywhere, the index and each platform are
    signed, and the tags are written; the report and CI outputs are those of `shipit run`.

    \b
    Examples:
      shipit merge shipit-legs/            the leg files of every platform (GitLab artifacts)
      shipit merge                         the legs recorded in the registries for this commit
      shipit merge amd64.json arm64.json --report out/merge.json
    """
    if set(skip) - {"sign"}:
        raise click.UsageError("a merge can leave out the sign stage only (--skip sign)")
    options, env, console = command_options(ctx)
    result_plan = app.plan(options, env, skip=skip, only=only)
    for warning in result_plan.warnings:
        console.warn(warning)
    path = report_path(options, env, report)
    with sigterm_as_interrupt():
        result = app.merge(result_plan, legs, env, console)
    merge_error = result.error
    result, failures = app.leave_behind(result, env, report=path, directory=options.directory)
    document = app.result_document(result) if as_json else None
    return finish(ctx, env, console, result, document, error=merge_error, failures=failures)
