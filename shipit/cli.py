"""The command line: a thin adapter that parses options, calls the core, maps errors.

`main(argv, env)` returns the exit code, so tests run commands in-process. Options that
every command shares (-f, -C, -v, -q, the context overrides) are accepted before or after
the command name; each also comes from a SHIPIT_* variable. Precedence: command line >
SHIPIT_* environment > spec > defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from shipit import __version__, app
from shipit.context import EVENTS, Overrides
from shipit.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ShipitError,
    SpecError,
    printable,
)
from shipit.log import COLOR_CHOICES, Console, Style, counted, escape_github, use_color
from shipit.render import plan_text

F = TypeVar("F", bound=Callable[..., Any])

# name -> (SHIPIT_* variable, converter for the variable's text)
_SHARED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "spec_file": ("SHIPIT_FILE", str),
    "directory": ("SHIPIT_DIRECTORY", str),
    "verbose": ("SHIPIT_VERBOSE", int),
    "quiet": ("SHIPIT_QUIET", lambda t: t.lower() in ("1", "true", "yes")),
    "debug": ("SHIPIT_DEBUG", lambda t: t.lower() in ("1", "true", "yes")),
    "color": ("SHIPIT_COLOR", str),
    "ref": ("SHIPIT_REF", str),
    "event": ("SHIPIT_EVENT", str),
    "sha": ("SHIPIT_SHA", str),
    "pr": ("SHIPIT_PR", int),
    "default_branch": ("SHIPIT_DEFAULT_BRANCH", str),
}


def shared_options(func: F) -> F:
    """The options every command takes, on the group and on each command."""
    options = [
        click.option(
            "-f",
            "--file",
            "spec_file",
            metavar="FILE",
            help="The spec (default shipit.yml, relative to -C).",
        ),
        click.option("-C", "--directory", metavar="DIR", help="Run as if started in DIR."),
        click.option("-v", "--verbose", count=True, help="More detail (repeat for more)."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Only warnings and errors."),
        click.option("--debug", is_flag=True, default=None, help="Tracebacks for failures."),
        click.option(
            "--color",
            type=click.Choice(COLOR_CHOICES),
            default=None,
            help="Colour: auto (a terminal, or CI; not with NO_COLOR), always, never.",
        ),
        click.option("--ref", metavar="REF", help="Build as if for this ref (refs/tags/v1.2.3)."),
        click.option("--event", type=click.Choice(EVENTS), help="Build as if for this event."),
        click.option("--sha", metavar="SHA", help="The commit to label images with."),
        click.option("--pr", type=int, metavar="N", help="Build as pull request N."),
        click.option("--default-branch", metavar="NAME", help="The repository's default branch."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class State:
    env: Mapping[str, str]


def _shared(ctx: click.Context) -> dict[str, Any]:
    """Merge shared options: the command's own, then the group's, then SHIPIT_* variables."""
    state: State = ctx.find_object(State) or State(env=os.environ)
    parent = ctx.parent.params if ctx.parent else {}
    merged: dict[str, Any] = {}
    for name, (variable, convert) in _SHARED.items():
        value = ctx.params.get(name)
        if value in (None, 0, False):
            value = parent.get(name)
        if value in (None, 0, False) and state.env.get(variable):
            try:
                value = convert(state.env[variable])
            except ValueError:
                raise click.BadParameter(
                    f"{variable}={state.env[variable]!r} is not valid"
                ) from None
        merged[name] = value
    return merged


def _options(ctx: click.Context) -> tuple[app.Options, Mapping[str, str], Console]:
    shared = _shared(ctx)
    state: State = ctx.find_object(State) or State(env=os.environ)
    verbosity = -1 if shared["quiet"] else int(shared["verbose"] or 0)
    console = Console(state.env, verbosity=verbosity, color=shared["color"])
    ctx.meta["debug"] = bool(shared["debug"])
    ctx.meta["color"] = shared["color"]
    options = app.Options(
        directory=Path(shared["directory"] or "."),
        spec_file=shared["spec_file"],
        overrides=Overrides(
            ref=shared["ref"],
            event=shared["event"],
            sha=shared["sha"],
            pr=shared["pr"],
            default_branch=shared["default_branch"],
        ),
    )
    return options, state.env, console


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) stops a run the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _emit_json(document: Any) -> None:
    """JSON on stdout, never coloured."""
    click.echo(json.dumps(document, indent=2, sort_keys=False), color=False)


def _stdout_style(ctx: click.Context, env: Mapping[str, str]) -> Style:
    """Colour for what goes to stdout (tables, results), decided for stdout itself."""
    return Style(use_color(ctx.meta.get("color"), env, sys.stdout))


def _echo(text: str, style: Style) -> None:
    click.echo(text, color=style.enabled)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="shipit")
@shared_options
def cli(**_: Any) -> None:
    """shipit: tag, build, scan, sign and push container images from one spec.

    \b
    Examples:
      shipit plan                          what CI would do for this checkout
      shipit plan --ref refs/tags/v2.0.0   what a release of 2.0.0 would publish
      shipit run                           build, scan, push and sign
      shipit -C services/api validate      check another folder's shipit.yml

    Every command takes -f, -C, -v/-q, --color and the context overrides, before or after its
    name; each also comes from a SHIPIT_* variable. Exit codes: 0 ok, 1 a stage failed,
    2 bad usage or spec, 3 the scan gate blocked, 130 interrupted.
    """


@cli.command()
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--skip", multiple=True, metavar="STAGE", help="Leave out a stage (scan, push, sign)."
)
@click.option("--no-push", is_flag=True, help="Plan a run that builds but does not push.")
@click.option("--image", "only", metavar="NAME", help="Only this image of the spec.")
@click.pass_context
def plan(
    ctx: click.Context,
    /,
    *,
    as_json: bool,
    skip: Sequence[str],
    no_push: bool,
    only: str | None,
    **_: Any,
) -> int:
    """What a run would do: version, tags, refs per registry, stages. No Docker needed.

    \b
    Examples:
      shipit plan
      shipit plan --ref refs/tags/v1.4.3 --json
      shipit plan --event pull_request --pr 42 --image api
    """
    options, env, _console = _options(ctx)
    result = app.plan(options, env, skip=skip, push=not no_push, only=only)
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(plan_text(result))
    return 0


@cli.command()
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON.")
@click.option(
    "--skip", multiple=True, metavar="STAGE", help="Leave out a stage (scan, push, sign)."
)
@click.option("--no-push", is_flag=True, help="Build (and scan) but push nothing.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop (same as `shipit plan`).")
@click.option("--image", "only", metavar="NAME", help="Only this image of the spec.")
@click.option(
    "--report", metavar="FILE", help="Write the result document here (default shipit-report.json)."
)
@click.pass_context
def run(
    ctx: click.Context,
    /,
    *,
    as_json: bool,
    skip: Sequence[str],
    no_push: bool,
    dry_run: bool,
    only: str | None,
    report: str | None,
    **_: Any,
) -> int:
    """Build, scan, push and sign, as the plan says.

    Writes the result document (shipit-report.json, or --report) and prints a summary table;
    nothing is tagged before every registry holds the image.

    \b
    Examples:
      shipit run
      shipit run --no-push                 build and scan only (a fork's pull request)
      shipit run --skip sign -v
      shipit run --image api --report out/api.json
    """
    options, env, console = _options(ctx)
    result_plan = app.plan(options, env, skip=skip, push=not no_push, only=only)
    if dry_run:
        _emit_json(result_plan.to_json()) if as_json else click.echo(plan_text(result_plan))
        return 0
    for warning in result_plan.warnings:
        console.warn(warning)
    report_path = Path(report or env.get("SHIPIT_REPORT") or options.directory / app.DEFAULT_REPORT)
    app.clear_report(report_path)  # an older run's report must not pass for this one's
    with _sigterm_as_interrupt():
        result = app.run(result_plan, env, console)
    run_error = result.error
    result, failures = app.leave_behind(
        result, env, report=report_path, directory=options.directory
    )
    if as_json:
        _emit_json(app.result_document(result))
    else:
        style = _stdout_style(ctx, env)
        _echo(app.summary(result, style), style)
    for message in (run_error, *failures):  # what the run said, then each output not written
        if message:
            console.error(message)
    return result.exit_code or (EXIT_FAILED if failures else 0)


@cli.command()
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print version, tags and refs as JSON.")
@click.option("--image", "only", metavar="NAME", help="Only this image of the spec.")
@click.pass_context
def tags(ctx: click.Context, /, *, as_json: bool, only: str | None, **_: Any) -> int:
    """The full image references, one a line (for shell scripts).

    \b
    Examples:
      shipit tags
      shipit tags --ref refs/tags/v1.2.3 --json
      for ref in $(shipit tags); do echo "$ref"; done
    """
    options, env, _console = _options(ctx)
    result = app.plan(options, env, only=only)
    if as_json:
        _emit_json(app.tags_document(result))
    else:
        for image in result.active():
            for ref in image.refs:
                click.echo(ref)
    return 0


@cli.command()
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print the version of each image as JSON.")
@click.option("--image", "only", metavar="NAME", help="The version of this image.")
@click.pass_context
def version(ctx: click.Context, /, *, as_json: bool, only: str | None, **_: Any) -> int:
    """The derived semantic version.

    \b
    Examples:
      shipit version                       1.4.4-dev.7+g1a2b3c4 between releases
      shipit version --ref refs/tags/v1.4.3
      shipit version --image api --json
    """
    options, env, _console = _options(ctx)
    result = app.plan(options, env, only=only)
    if as_json:
        images = [{"name": i.name, "version": i.version.text} for i in result.images]
        _emit_json({"version": result.version, "images": images})
    else:
        click.echo(result.version)
    return 0


@cli.command()
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
@click.pass_context
def matrix(ctx: click.Context, /, *, output_format: str, as_json: bool, **_: Any) -> int:
    """The images of the spec as a CI matrix, to run one job per image.

    Prints {"include": [{"image": ..., "version": ..., "context": ...}, ...]} on one line (the
    context relative to the spec's folder), for GitHub's `strategy: matrix: ${{
    fromJSON(needs.JOB.outputs.matrix) }}`; in GitHub Actions it also goes to the step output
    `matrix`. Each job then runs `shipit run --image NAME` (the action's `image` input). Images
    this build does not release are left out: a monorepo tag api/v1.2.0 fans out to api only.

    --format gitlab prints `parallel: matrix: - IMAGE: [...]` to paste into the job that extends
    `.shipit`, with `SHIPIT_ARGS: --image $IMAGE`. GitLab cannot make a matrix from a value
    computed in the pipeline, and a generated child pipeline would move the jobs, their
    artifacts and reports out of the main pipeline; a pasted matrix keeps them in it. Print it
    on a branch, where every image is built; on a monorepo tag the jobs of the other images
    build and push nothing.

    \b
    Examples:
      shipit matrix
      shipit matrix --format gitlab
    """
    from shipit import matrix as matrix_mod  # noqa: PLC0415

    if as_json and output_format == "gitlab":
        raise click.UsageError("--json and --format gitlab do not go together")
    options, env, console = _options(ctx)
    result = app.plan(options, env)
    for warning in result.warnings:
        console.warn(warning)
    document = matrix_mod.document(result)
    matrix_mod.write_github_output(document, env)
    if output_format == "gitlab":
        click.echo(matrix_mod.gitlab_snippet(document), nl=False)
    else:
        click.echo(matrix_mod.to_json(document))
    return 0


@cli.command()
@shared_options
@click.argument("refs", nargs=-1)
@click.option(
    "--report", metavar="FILE", help="The run's result document (default shipit-report.json)."
)
@click.option(
    "--key", "public_key", metavar="KEY", help="Verify with this public key (file or KMS URI)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def verify(
    ctx: click.Context,
    /,
    *,
    refs: Sequence[str],
    report: str | None,
    public_key: str | None,
    as_json: bool,
    **_: Any,
) -> int:
    """Check the cosign signatures of what a run pushed (or of REFS).

    Each ref is verified with its image's signing policy (the spec's key or keyless
    identity) and reached with its registry's settings. Exit 1 if any fails.

    \b
    Examples:
      shipit verify                        every digest in shipit-report.json
      shipit verify --key cosign.pub ghcr.io/acme/app:1.2.3
      shipit verify --json --report out/api.json
    """
    from shipit import verify as verify_mod  # noqa: PLC0415

    options, env, console = _options(ctx)
    spec = app.load_spec(options, env)
    if refs:
        targets = list(refs)
    else:
        default = options.directory / app.DEFAULT_REPORT
        targets = verify_mod.refs_from_report(Path(report or env.get("SHIPIT_REPORT") or default))
    results = verify_mod.verify_refs(spec, targets, env, console, public_key=public_key)
    if as_json:
        _emit_json([{"ref": r.ref, "ok": r.ok, "error": r.error} for r in results])
    else:
        style = _stdout_style(ctx, env)
        for result in results:
            word = style.status("verified" if result.ok else "FAILED  ")
            _echo(f"{word}  {result.ref}", style)
    failed = [r for r in results if not r.ok]
    for result in failed:
        console.error(f"{result.ref}: {result.error}")
    return EXIT_FAILED if failed else 0


@cli.command()
@shared_options
@click.pass_context
def validate(ctx: click.Context, /, **_: Any) -> int:
    """Check the spec; every problem as FILE:LINE:COL: message.

    Exit 2 when the spec has any problem; all of them are listed at once.

    \b
    Examples:
      shipit validate
      shipit validate -f deploy/shipit.yml
    """
    options, env, _console = _options(ctx)
    spec = app.load_spec(options, env)
    count = len(spec.images)
    click.echo(f"{options.spec_path}: valid ({counted(count, 'image')})")
    return 0


@cli.command()
@shared_options
@click.option("--force", is_flag=True, help="Write over an existing spec.")
@click.pass_context
def init(ctx: click.Context, /, *, force: bool, **_: Any) -> int:
    """Write a starter shipit.yml for the repository in -C (or at -f).

    The registry comes from the CI variables or the git remote: GitHub (GITHUB_REPOSITORY_OWNER,
    or a github.com remote) pushes to ghcr.io/OWNER with the workflow's GITHUB_TOKEN; GitLab
    (CI_REGISTRY_IMAGE, or a GitLab remote) to the project's registry with CI_REGISTRY_USER and
    CI_REGISTRY_PASSWORD; anything else to localhost:5000. The image is named after the
    repository (or the folder, for a subfolder of one); its context is the folder of the first
    Dockerfile found. The spec scans with Trivy (fail_on: HIGH) and has signing written out,
    commented. Then the CI configuration that runs it is printed, like every message, on
    stderr. An existing spec is kept unless --force is given.

    \b
    Examples:
      shipit init
      shipit init -C services/api --force
    """
    from shipit import init as init_mod  # noqa: PLC0415

    options, env, console = _options(ctx)
    result = init_mod.init(
        options.directory,
        options.spec_path,
        env,
        force=force,
        spec_file=options.spec_file,
    )
    for warning in result.warnings:
        console.warn(warning)
    if console.verbosity >= 0:
        check = "shipit plan"
        if str(options.directory) != ".":
            check += f" -C {options.directory}"
        if options.spec_file:
            check += f" -f {options.spec_file}"
        click.echo(init_mod.next_steps(result, check), err=True)
    return 0


@cli.command()
def schema() -> int:
    """The JSON Schema of shipit.yml, for editors.

    \b
    Examples:
      shipit schema > shipit.schema.json
      # then, first line of shipit.yml:
      # yaml-language-server: $schema=./shipit.schema.json
    """
    click.echo(app.schema_text(), nl=False)
    return 0


# -- entry points ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run shipit with `argv` (default sys.argv[1:]) in `env`; return the exit code."""
    environment = os.environ if env is None else env
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or environment.get("SHIPIT_DEBUG", "").lower() in ("1", "true")
    try:
        result = cli.main(
            args=args, prog_name="shipit", standalone_mode=False, obj=State(env=environment)
        )
    except click.exceptions.Abort:
        _error("interrupted", environment)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if exc.exit_code in (1, 2) else exc.exit_code
    except ShipitError as exc:
        if debug:
            traceback.print_exc()
        _report(exc, environment)
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted", environment)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug in shipit: say so plainly, trace only when asked
        if debug:
            traceback.print_exc()
        _error(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            environment,
        )
        return EXIT_FAILED
    return result if isinstance(result, int) else 0


def _report(exc: ShipitError, env: Mapping[str, str]) -> None:
    github = env.get("GITHUB_ACTIONS") == "true"
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            loc = problem.location
            click.echo(str(problem), err=True)
            if github:
                click.echo(
                    f"::error file={loc.file},line={loc.line},col={loc.column}::"
                    f"{escape_github(printable(problem.message))}",
                    err=True,
                )
        count = len(exc.problems)
        click.echo(f"shipit: {counted(count, 'problem')} in the spec", err=True)
    else:
        _error(exc.message, env)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


def _error(message: str, env: Mapping[str, str]) -> None:
    if env.get("GITHUB_ACTIONS") == "true":
        click.echo(f"::error::{escape_github(message)}", err=True)
    else:
        click.echo(f"shipit: error: {message}", err=True)


def run_main() -> None:
    sys.exit(main())
