"""The commands that read and tidy what is in the registries: `verify` (the signatures and
provenance of what a run published), `prune` (retention, a dry run unless --apply) and
`promote` (a verified digest copied to another registry or tag). The group in `shipit.cli`
adds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from shipit import app
from shipit.cli_common import command_options as _options
from shipit.cli_common import echo as _echo
from shipit.cli_common import emit_json as _emit_json
from shipit.cli_common import shared_options
from shipit.cli_common import sigterm_as_interrupt as _sigterm_as_interrupt
from shipit.cli_common import stdout_style as _stdout_style
from shipit.errors import EXIT_FAILED


@click.command()
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
        _print_verified(ctx, env, results)
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


def _print_verified(ctx: click.Context, env: Mapping[str, str], results: Sequence[Any]) -> None:
    style = _stdout_style(ctx, env)
    for result in results:
        word = style.status("verified" if result.ok else "FAILED  ")
        _echo(f"{word}  {result.ref}", style)  # the ref last: scripts read it there
        note = _provenance_note(result)
        if note:
            _echo(note, style)


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


@click.command()
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
@click.option(
    "--max-delete",
    "max_delete",
    metavar="N|P%",
    default="50%",
    show_default=True,
    help="Refuse --apply if a repository would lose more tagged images than this (100% lifts it).",
)
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
    max_delete: str,
    **_: Any,
) -> int:
    """Delete what the `retention:` policy does not keep, in every registry of the spec.

    A dry run unless --apply: a table of every manifest (registry, repository, digest, tags,
    created, action and the rule that decided). Decided on digests: an image stays if any of
    its tags is kept, with its platform manifests, signatures and attestations; floating tags
    (latest, 1.4, 1) and what `shipit plan` would publish now always stay; what goes takes its
    signatures with it. --apply re-reads every tag first and skips whatever moved. Exit 1 if
    anything planned was not done (a registry that refuses deletes, a tag that moved).

    A `tags:` pattern is searched in the tag, as grep does (`^pr-` picks pr-6; `^main$` only
    main); a keep rule that picks no tag where something goes is a warning. --apply deletes
    nothing at all if a repository would lose more than --max-delete of its tagged images
    (default half of them); the dry run says so first.

    \b
    Examples:
      shipit prune                         what would go, and why
      shipit prune --apply                 delete it; report in shipit-prune.json
      shipit prune --json > plan.json      save the plan to review it...
      shipit prune --apply --plan plan.json   ...then carry out exactly that plan
      shipit prune --apply --max-delete 100%  a first cleanup of an old registry
    """
    from shipit.lifecycle import report as lifecycle_report  # noqa: PLC0415
    from shipit.lifecycle.limit import DeleteLimit, refusals  # noqa: PLC0415

    try:
        limit = DeleteLimit.parse(max_delete)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-delete") from None
    options, env, console = _options(ctx)
    if plan_file and not do_apply:
        raise click.UsageError("--plan FILE is carried out with --apply")
    style = _stdout_style(ctx, env)
    if plan_file:
        pruning = app.read_prune_plan(Path(plan_file))
    else:
        pruning = app.prune_plan(options, env, console, only=only)
    if not do_apply:
        refused = refusals(pruning.repositories, limit)
        if as_json:  # the table has them; the JSON has them too, and a reader needs a word
            for warning in lifecycle_report.rule_warnings(pruning):
                console.warn(warning)
            _emit_json(lifecycle_report.plan_document(pruning, limit, refused))
        else:
            _echo(lifecycle_report.plan_table(pruning, style, refused), style)
        unreadable = [r.error for r in pruning.repositories if r.error]
        for error in unreadable:
            console.error(error)
        return EXIT_FAILED if unreadable else 0
    with _sigterm_as_interrupt():
        result = app.prune_apply(options, env, console, pruning, limit)
    document = lifecycle_report.result_document(result)
    lifecycle_report.write_json(Path(report or options.directory / "shipit-prune.json"), document)
    if as_json:
        _emit_json(document)
    else:
        _echo(lifecycle_report.result_table(result, style), style)
    return 0 if result.complete else EXIT_FAILED


@click.command()
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
