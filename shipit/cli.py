"""The command line: a thin adapter that parses options, calls the core, maps errors.

`main(argv, env)` returns the exit code, so tests run commands in-process. Options that
every command shares (-f, -C, -v, -q, the context overrides) are accepted before or after
the command name; each also comes from a SHIPIT_* variable. Precedence: command line >
SHIPIT_* environment > spec > defaults. That machinery lives in `shipit.cli_common`; the
fan-out commands (`matrix`, `merge`) in `shipit.cli_fanout`.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from shipit import __version__, app, cli_fanout
from shipit.cli_common import State, shared_options
from shipit.cli_common import command_options as _options
from shipit.cli_common import echo as _echo
from shipit.cli_common import emit_json as _emit_json
from shipit.cli_common import finish as _finish
from shipit.cli_common import report_path as _report_path
from shipit.cli_common import sigterm_as_interrupt as _sigterm_as_interrupt
from shipit.cli_common import stdout_style as _stdout_style
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
        written = app.write_leg(report_path, result_plan, result)
        failures = (
            app.write_leg_ci_outputs(written, env, directory=options.directory)
            if written is not None
            else ()
        )
        leg_document = written.to_json() if written is not None else app.result_document(result)
        shown = leg_document if as_json else None
        return _finish(ctx, env, console, result, shown, failures=failures)
    run_error = result.error
    result, failures = app.leave_behind(
        result, env, report=report_path, directory=options.directory
    )
    document = app.result_document(result) if as_json else None
    return _finish(ctx, env, console, result, document, error=run_error, failures=failures)


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
@click.argument("refs", nargs=-1)
@click.option(
    "--report", metavar="FILE", help="The run's result document (default shipit-report.json)."
)
@click.option(
    "--key", "public_key", metavar="KEY", help="Verify with this public key (file or KMS URI)."
)
@click.option(
    "--provenance/--no-provenance",
    "check_provenance",
    default=None,
    help="Also verify the SLSA provenance attestation (default: where the spec attests it).",
)
@click.option(
    "--source-commit",
    metavar="SHA",
    help="The commit the provenance must name (default: the report's commit).",
)
@click.option(
    "--builder-id",
    metavar="ID",
    help="The builder.id the provenance must name (default: the report's builder).",
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
    check_provenance: bool | None,
    source_commit: str | None,
    builder_id: str | None,
    as_json: bool,
    **_: Any,
) -> int:
    """Check the cosign signatures of what a run pushed (or of REFS), and its provenance.

    Each ref is verified with its image's signing policy (the spec's key or keyless
    identity) and reached with its registry's settings. Where the spec attests provenance
    (or with --provenance), `cosign verify-attestation --type slsaprovenance1` must pass too,
    for the digest, naming the expected source commit and builder. Exit 1 if any fails.

    \b
    Examples:
      shipit verify                        every digest in shipit-report.json
      shipit verify --key cosign.pub ghcr.io/acme/app:1.2.3
      shipit verify --source-commit 1a2b3c4 ghcr.io/acme/app@sha256:...
      shipit verify --json --report out/api.json
    """
    from shipit import verify as verify_mod  # noqa: PLC0415

    options, env, console = _options(ctx)
    spec = app.load_spec(options, env)
    report_path = Path(report or env.get("SHIPIT_REPORT") or options.directory / app.DEFAULT_REPORT)
    targets = list(refs) if refs else verify_mod.refs_from_report(report_path)
    from_report = verify_mod.expected_from_report(report_path) if report or not refs else None
    expected = verify_mod.Expected(
        commit=source_commit or (from_report.commit if from_report else None),
        builder_id=builder_id or (from_report.builder_id if from_report else None),
    )
    results = verify_mod.verify_refs(
        spec, targets, env, console, public_key=public_key,
        check_provenance=check_provenance, expected=expected,
    )  # fmt: skip
    if as_json:
        _emit_json([_verified_json(r) for r in results])
    else:
        style = _stdout_style(ctx, env)
        for result in results:
            word = style.status("verified" if result.ok else "FAILED  ")
            _echo(f"{word}  {result.ref}", style)  # the ref last: scripts read it there
            note = _provenance_note(result)
            if note:
                _echo(note, style)
    failed = [r for r in results if not r.ok]
    for result in failed:
        console.error(f"{result.ref}: {result.error}")
    if (
        check_provenance is not False
        and expected.commit is None
        and any(r.provenance for r in results)
    ):
        console.warn("the provenance's source commit was not checked: give --source-commit")
    return EXIT_FAILED if failed else 0


def _verified_json(result: Any) -> dict[str, Any]:
    checked = result.provenance
    document: dict[str, Any] = {"ref": result.ref, "ok": result.ok, "error": result.error}
    document["provenance"] = (
        None
        if checked is None
        else {
            "ok": checked.ok,
            "commits": list(checked.commits),
            "builders": list(checked.builders),
        }
    )
    return document


def _provenance_note(result: Any) -> str:
    checked = result.provenance
    if checked is None or not checked.commits:
        return ""
    commits = ", ".join(sorted({c[:12] for c in checked.commits}))
    builders = ", ".join(sorted(set(checked.builders)))
    return f"          provenance: commit {commits}, builder {builders}"


@cli.command()
@shared_options
@click.option("--apply", "do_apply", is_flag=True, help="Delete what the plan deletes.")
@click.option(
    "--plan", "plan_file", metavar="FILE", help="With --apply: carry out this saved plan."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or the report) as JSON.")
@click.option(
    "--report", metavar="FILE", help="Where --apply writes its report (default shipit-prune.json)."
)
@click.option("--image", "only", metavar="NAME", help="Only this image of the spec.")
@click.pass_context
def prune(
    ctx: click.Context,
    /,
    *,
    do_apply: bool,
    plan_file: str | None,
    as_json: bool,
    report: str | None,
    only: str | None,
    **_: Any,
) -> int:
    """Delete what the `retention:` policy does not keep, in every registry of the spec.

    A dry run unless --apply: a table of every manifest (registry, repository, digest, tags,
    created, action and the rule that decided). Decided on digests: an image stays if any of
    its tags is kept, with its platform manifests, signatures and attestations; floating tags
    (latest, 1.4, 1) and what `shipit plan` would publish now always stay; what goes takes its
    signatures with it. --apply re-reads every tag first and skips whatever moved. Exit 1 if
    anything planned was not done (a registry that refuses deletes, a tag that moved).

    \b
    Examples:
      shipit prune                         what would go, and why
      shipit prune --apply                 delete it; report in shipit-prune.json
      shipit prune --json > plan.json      save the plan to review it...
      shipit prune --apply --plan plan.json   ...then carry out exactly that plan
    """
    from shipit.lifecycle import report as lifecycle_report  # noqa: PLC0415

    options, env, console = _options(ctx)
    if plan_file and not do_apply:
        raise click.UsageError("--plan FILE is carried out with --apply")
    style = _stdout_style(ctx, env)
    if plan_file:
        pruning = app.read_prune_plan(Path(plan_file))
    else:
        pruning = app.prune_plan(options, env, console, only=only)
    if not do_apply:
        if as_json:
            _emit_json(pruning.to_json())
        else:
            _echo(lifecycle_report.plan_table(pruning, style), style)
        unreadable = [r.error for r in pruning.repositories if r.error]
        for error in unreadable:
            console.error(error)
        return EXIT_FAILED if unreadable else 0
    with _sigterm_as_interrupt():
        result = app.prune_apply(options, env, console, pruning)
    document = lifecycle_report.result_document(result)
    lifecycle_report.write_json(Path(report or options.directory / "shipit-prune.json"), document)
    if as_json:
        _emit_json(document)
    else:
        _echo(lifecycle_report.result_table(result, style), style)
    return 0 if result.complete else EXIT_FAILED


@cli.command()
@shared_options
@click.argument("image_ref", metavar="REF")
@click.option(
    "--to", "targets", multiple=True, metavar="REGISTRY",
    help="A spec registry url, or HOST[/NAMESPACE] (repeat for several).",
)  # fmt: skip
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag it so there (repeatable).")
@click.option(
    "--allow-unsigned", is_flag=True, help="Copy even without a verified signature (warns)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--report", metavar="FILE", help="Write the report here (default shipit-promote.json)."
)
@click.pass_context
def promote(
    ctx: click.Context,
    /,
    *,
    image_ref: str,
    targets: Sequence[str],
    tags: Sequence[str],
    allow_unsigned: bool,
    as_json: bool,
    report: str | None,
    **_: Any,
) -> int:
    """Copy an image this spec publishes, with its signatures, to other registries.

    REF is HOST/REPOSITORY:TAG or @sha256:... of one of the spec's images, one platform or
    several. Its signature is verified at the source first (the spec's key or keyless
    identity); an image without one is refused unless --allow-unsigned. The copy is byte for
    byte (same digests; blobs mounted within one host), with its signatures, attestations
    and SBOMs; tags are written only once everything is there: --tag, else REF's own tag.
    Exit 1 if it is refused or any target fails.

    \b
    Examples:
      shipit promote registry.staging.example/app:1.4.2 --to ghcr.io/acme
      shipit promote ghcr.io/acme/app@sha256:... --to registry.example/prod --tag stable
      shipit promote localhost:5000/app:pr-7 --to localhost:5001 --allow-unsigned
    """
    from shipit.lifecycle import report as lifecycle_report  # noqa: PLC0415

    options, env, console = _options(ctx)
    if not targets:
        raise click.UsageError("promote needs at least one --to REGISTRY")
    with _sigterm_as_interrupt():
        result = app.promote(
            options,
            env,
            console,
            ref=image_ref,
            to=targets,
            tags=tags,
            allow_unsigned=allow_unsigned,
        )
    document = result.to_json()
    lifecycle_report.write_json(Path(report or options.directory / "shipit-promote.json"), document)
    style = _stdout_style(ctx, env)
    if as_json:
        _emit_json(document)
    else:
        _echo(lifecycle_report.promote_lines(result, style), style)
    for error in lifecycle_report.promote_errors(result):
        console.error(error)
    if result.error:
        click.echo("hint: sign the image, or pass --allow-unsigned to copy it anyway", err=True)
    return result.exit_code


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


cli.add_command(cli_fanout.matrix)
cli.add_command(cli_fanout.merge)


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
