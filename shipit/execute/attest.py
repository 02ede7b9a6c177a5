"""The SLSA provenance of every signed digest, attested next to the image (never inside it).

After the signatures and before any tag (publish.py): for each digest an image stored (each
platform manifest, and the index of several), the predicate of stages/provenance.py is
written to a file and `cosign attest --type slsaprovenance1` attaches it, signed with the
image's key or keyless identity, to that digest in every registry whose signature succeeded.
cosign stores it beside the image (an OCI referrer, or the `sha256-<hex>.att` tag in the
legacy format), so the image index keeps listing images only.

A predicate that would hold a secret's value (a build secret, a registry password, the key's
password), for instance a build arg equal to one under `provenance: max`, is not attested:
the digest's attestation fails and nothing is tagged.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shipit import log
from shipit.execute.prepare import Ready
from shipit.execute.results import RunState
from shipit.plan import ImagePlan, Source
from shipit.stages import provenance
from shipit.stages.push import TargetResult

_log = log.get(__name__)


def attest_all(
    run: RunState,
    image: ImagePlan,
    item: Ready,
    *,
    targets: Sequence[Any],  # the SignTargets of every stored digest ref, signed or not
    signed: set[str],
    signer: Any,
    stored: Sequence[TargetResult],
) -> tuple[Any, ...]:
    """Attest the provenance of every digest `image` stored to each signed ref of it; one
    result per ref attested (failures included)."""
    from shipit.stages import sign  # noqa: PLC0415 (only runs that sign need it)

    policy = image.image.sign
    source = run.plan.source
    if policy is None or policy.provenance == "off" or source is None:
        return ()
    by_ref = {t.ref: t for t in targets if t.ref in signed}
    secrets = _secret_values(run.env, image, by_ref.values(), policy.key)
    results: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="shipit-provenance-") as tmp:
        for digest, parts in digest_parts(item):
            chosen = [by_ref[r] for r in (t.digest_ref(digest) for t in stored) if r in by_ref]
            if not chosen:
                continue
            document = _predicate(run, image, item, source, parts)
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
            leaked = any(secret in text for secret in secrets)
            if leaked:
                refused = [_refused(sign, t.ref) for t in chosen]
                for result in refused:
                    _log.error("%s", result.error)
                results += refused
                continue
            path = Path(tmp) / f"{digest.replace(':', '-')}.json"
            path.write_text(text, encoding="utf-8")
            results += sign.attest_all(
                signer, chosen, policy, path, env=run.env, console=run.console,
                parallel=image.image.push.parallel, predicate_type=provenance.COSIGN_TYPE,
            )  # fmt: skip
    return tuple(results)


def digest_parts(item: Ready) -> list[tuple[str, tuple[provenance.PlatformBuild, ...]]]:
    """Each digest to attest with the platforms it holds: every platform manifest alone,
    then the index (if any) with all of them."""
    built = {p.platform: p for p in item.built.platforms}
    found: list[tuple[str, tuple[provenance.PlatformBuild, ...]]] = []
    for export in item.artifact.platforms:
        made = built.get(export.platform)
        part = provenance.PlatformBuild(
            platform=export.platform, bases=made.bases if made is not None else ()
        )
        found.append((export.manifest.digest, (part,)))
    if item.artifact.index is not None:
        found.append((item.artifact.index.digest, tuple(p for _, (p,) in found)))
    return found


def _predicate(
    run: RunState,
    image: ImagePlan,
    item: Ready,
    source: Source,
    parts: tuple[provenance.PlatformBuild, ...],
) -> dict[str, Any]:
    build = image.build
    context = str(Path(build.context).resolve())
    paths = provenance.Paths(
        spec=provenance.relative(str(Path(run.plan.spec).resolve()), source.root),
        context=provenance.relative(context, source.root),
        dockerfile=provenance.relative(str(Path(context) / build.dockerfile), source.root),
    )
    return provenance.predicate(
        image, source, paths=paths, parts=parts, env=run.env,
        started=item.started, finished=item.finished,
    )  # fmt: skip


def _secret_values(
    env: Mapping[str, str], image: ImagePlan, targets: Any, key: str | None
) -> list[str]:
    """Every value that must never be in a provenance document."""
    from shipit.stages import sign  # noqa: PLC0415

    values = sign.secrets_of(env, list(targets), key)
    values += [env.get(s.env, "") for s in image.build.secrets if s.env]
    return [v for v in values if v]


def _refused(sign: Any, ref: str) -> Any:
    return sign.SignResult(
        ref=ref,
        ok=False,
        error=f"attest: the provenance of {ref} would hold a secret's value (a build arg"
        " equal to a secret, under `provenance: max`?); it was not attested",
    )
