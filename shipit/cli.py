"""The command line: a thin adapter that parses options, calls the core, maps errors.

`main(argv, env)` returns the exit code, so tests run commands in-process. Options that
every command shares (-f, -C, -v, -q, the context overrides) are accepted before or after
the command name; each also comes from a SHIPIT_* variable. Precedence: command line >
SHIPIT_* environment > spec > defaults. That machinery lives in `shipit.cli_common`; the
fan-out commands (`matrix`, `merge`) in `shipit.cli_fanout`; the registry commands (`verify`,
`prune`, `promote`) in `shipit.cli_registry`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from shipit import __version__, app, cli_fanout, cli_registry
from shipit.cli_common import State, shared_options
from shipit.cli_common import command_options as _options
from shipit.cli_common import emit_json as _emit_json
from shipit.cli_common import finish as _finish
from shipit.cli_common import report_path as _report_path
from shipit.cli_common import sigterm_as_interrupt as _sigterm_as_interrupt
from shipit.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ShipitError,
    SpecError,
    printable,
)
from shipit.log import counted, escape_github
from shipit.render import plan_text


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
      shipit prune                         what the retention policy would delete

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
@click.option(
    "--leg", is_flag=True, help="Build one platform as a leg of a distributed build (no tag)."
)
@click.option("--platform", metavar="PLATFORM", help="The leg's platform, e.g. linux/arm64.")
@click.option(
    "--leg-record", is_flag=True, help="Also keep the leg in each registry, for `shipit merge`."
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
    leg: bool,
    platform: str | None,
    leg_record: bool,
    **_: Any,
) -> int:
    """Build, scan, push and sign, as the plan says.

    Writes the result document (shipit-report.json, or --report) and prints a summary table;
    nothing is tagged before every registry holds the image.

    With --leg, one platform of a multi-platform image is built on this runner: scanned,
    its blobs and manifest pushed by digest to every registry, nothing signed or tagged; the
    leg document goes where the report goes, and to the CI outputs. `shipit merge` joins
    the legs. --leg-record also stores the leg in each registry, where a merge finds it.

    \b
    Examples:
      shipit run
      shipit run --no-push                 build and scan only (a fork's pull request)
      shipit run --skip sign -v
      shipit run --image api --report out/api.json
      shipit run --image api --platform linux/arm64 --leg --leg-record
    """
    options, env, console = _options(ctx)
    if (platform or leg_record) and not leg:
        raise click.UsageError("--platform and --leg-record go with --leg")
    if leg and not platform:
        raise click.UsageError("--leg needs --platform: the platform this leg builds")
    result_plan = app.plan(options, env, skip=skip, push=not no_push, only=only)
    if platform:
        result_plan = app.leg_plan(result_plan, platform=platform, record=leg_record)
    if dry_run:
        _emit_json(result_plan.to_json()) if as_json else click.echo(plan_text(result_plan))
        return 0
    for warning in result_plan.warnings:
        console.warn(warning)
    report_path = _report_path(options, env, report)
    with _sigterm_as_interrupt():
        result = app.run(result_plan, env, console)
    if leg:
        where = (report_path, options.directory)
        return _finish_leg(
            ctx, env, console, result, plan=result_plan, where=where, as_json=as_json
        )
    run_error = result.error
    result, failures = app.leave_behind(
        result, env, report=report_path, directory=options.directory
    )
    document = app.result_document(result) if as_json else None
    return _finish(ctx, env, console, result, document, error=run_error, failures=failures)


def _finish_leg(
    ctx: click.Context,
    env: Mapping[str, str],
    console: Any,
    result: Any,
    *,
    plan: Any,
    where: tuple[Path, Path],
    as_json: bool,
) -> int:
    """The end of a leg run: the leg document where the report goes (`where`: the report's
    path and the -C folder), and to the CI outputs."""
    report_path, directory = where
    written = app.write_leg(report_path, plan, result)
    failures = (
        app.write_leg_ci_outputs(written, env, directory=directory) if written is not None else ()
    )
    leg_document = written.to_json() if written is not None else app.result_document(result)
    shown = leg_document if as_json else None
    return _finish(ctx, env, console, result, shown, error=result.error, failures=failures)


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
@click.option(
    "--from",
    "source",
    metavar="FILE",
    help="Translate this GitHub workflow or .gitlab-ci.yml (the original is left untouched).",
)
@click.pass_context
def init(ctx: click.Context, /, *, force: bool, source: str | None, **_: Any) -> int:
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
    With --from FILE, the spec translates an existing pipeline instead (docker/metadata-action,
    build-push-action, login-action, trivy-action and cosign steps of a GitHub workflow; the
    docker/podman build, tag and push lines of a .gitlab-ci.yml): the pipeline rewritten to
    run shipit is written beside FILE, and a report says what was translated, what was not
    (with its line) and what changes.

    \b
    Examples:
      shipit init
      shipit init -C services/api --force
      shipit init --from .github/workflows/docker.yml
    """
    from shipit import init as init_mod  # noqa: PLC0415

    options, env, console = _options(ctx)
    if source is not None:
        from shipit import migrate  # noqa: PLC0415

        path = Path(source) if Path(source).is_absolute() else options.directory / source
        migration = migrate.migrate(path, options.spec_path, env, force=force)
        if console.verbosity >= 0:
            click.echo(migration.text(), err=True)
        return 0
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


cli.add_command(cli_fanout.matrix)
cli.add_command(cli_fanout.merge)
cli.add_command(cli_registry.verify)
cli.add_command(cli_registry.prune)
cli.add_command(cli_registry.promote)


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
    """The `shipit` command: `main`, then out of the process without tearing the interpreter
    down. Every atexit handler runs as it would (logging's flush, the thread pools' joins,
    `weakref.finalize` cleanups), and stdout and stderr are flushed; what is skipped is
    freeing each of the ~600 modules and their objects one by one, which took 60 ms of a
    2-second warm run (measured from the last atexit handler to the process's end)."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
            stream.flush()
    os._exit(code)
