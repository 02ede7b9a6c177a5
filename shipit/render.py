"""Human-readable text for plans and results (machine output is JSON, elsewhere)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shipit.plan import ImagePlan, Plan

# paints one cell of a table: (column index, the cell padded to its column's width) -> text
CellPainter = Callable[[int, str], str]


def plan_text(plan: Plan) -> str:
    ctx = plan.context
    where = (
        ctx.get("branch") or ctx.get("tag") or (f"PR {ctx['pr']}" if ctx.get("pr") else "detached")
    )
    lines = [
        f"shipit plan for {plan.spec}",
        f"  context  {ctx['provider']} {ctx['event']} of {where} at {str(ctx['sha'])[:12]}"
        f" (default branch {ctx['default_branch']})",
    ]
    for image in plan.images:
        lines.append("")
        lines.extend(_image_lines(image))
    if plan.warnings:
        lines.append("")
        lines.extend(f"warning: {w}" for w in plan.warnings)
    return "\n".join(lines)


def _image_lines(image: ImagePlan) -> list[str]:
    version = image.version
    kind = "release" if version.is_release else "development build"
    head = f"image {image.name}  version {version.text} ({kind})"
    if image.skipped:
        return [head, f"  skipped  {image.skipped}"]
    build = image.build
    details = [build.dockerfile]
    if build.target:
        details.append(f"target {build.target}")
    if build.platforms:
        details.append(", ".join(build.platforms))
    lines = [
        head,
        f"  build    {build.context} ({', '.join(details)})",
        f"  stages   {' -> '.join(image.stages)}",
        f"  tags     {', '.join(image.tags)}",
    ]
    lines.extend(_column("refs", list(image.refs)))
    if build.build_args:
        lines.extend(_column("args", [f"{k}={v}" for k, v in build.build_args.items()]))
    return lines


def _column(title: str, values: Sequence[str]) -> list[str]:
    return [f"  {title if i == 0 else '':<8} {value}" for i, value in enumerate(values)]


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    paint: CellPainter | None = None,
    paint_header: Callable[[str], str] | None = None,
) -> str:
    """A text table, columns as wide as their widest cell; widths are measured on the plain
    text, so colour added by `paint` (per body cell) and `paint_header` keeps columns aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str], painter: CellPainter | None) -> str:
        last = len(cells) - 1
        padded = [
            cell if i == last else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        if painter is not None:
            padded = [painter(i, cell) for i, cell in enumerate(padded)]
        return "  ".join(padded).rstrip()

    def header(_: int, cell: str) -> str:
        return paint_header(cell) if paint_header is not None else cell

    out = [line(headers, header), line(["-" * w for w in widths], None)]
    out.extend(line(row, paint) for row in rows)
    return "\n".join(out)
