"""Publishing, in the order that keeps every tag honest (DESIGN section 4, steps 6 to 8).

1. **Store**: every image's blobs and manifests, by digest only, in every registry.
2. **Sign**: every stored digest (each platform and the index) in every registry; then, with
   `sign.provenance` (on by default), attest each digest's SLSA provenance (attest.py). The
   attachment indexes cosign replaces on the way are deleted, not left untagged (superseded.py).
3. **Tag**: only when every image is stored everywhere and every digest is signed and
   attested (when signing is on) does any tag move, in every registry.

A failure before step 3 leaves only untagged manifests (a pull by tag never sees them);
the result lists them and says nothing was tagged, and a second run finishes the job
(blobs and manifests already there are not sent again). A registry that fails while tags
are written leaves the others tagged, and the result says exactly which tags each holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shipit.execute.prepare import Ready
from shipit.execute.results import ImageResult, RunResult, RunState
from shipit.plan import ImagePlan
from shipit.progress import showing
from shipit.stages import push
from shipit.stages.push import TargetResult


def publish(
    run: RunState,
    images: tuple[ImagePlan, ...],
    ready: Mapping[str, Ready],
    access: Mapping[str, Any],
    signers: Mapping[str, Any],
) -> RunResult:
    """Store, sign, then tag every image that pushes; never raises for a registry's failure."""
    pushing = [image for image in images if "push" in image.stages]
    for image in images:
        if "push" not in image.stages:
            run.update(image.name, status="ok")
    for image in pushing:
        item = ready[image.name]
        with showing(item.transfer, run.console):
            targets = push.store(image, item.artifact, item.uploads, access, run.console)
        complete = all(t.complete for t in targets)
        run.update(image.name, targets=targets, status="stored" if complete else "failed")
    if not all(run.results[i.name].status == "stored" for i in pushing):
        _fail_incomplete(run, pushing)
        return run.finish("failed", untagged_message(run.results.values(), "a registry failed"))
    signing_failed = [
        image.name
        for image in pushing
        if "sign" in image.stages
        and not _sign_and_attest(run, image, ready[image.name], access, signers[image.name])
    ]
    if signing_failed:
        reason = f"signing failed for {', '.join(signing_failed)}"
        return run.finish("failed", untagged_message(run.results.values(), reason))
    failed = False
    for image in pushing:
        item = ready[image.name]
        stored = run.results[image.name].targets
        tagged = push.tag(image, item.artifact, stored, access, run.console)
        ok = all(t.ok for t in tagged)
        failed = failed or not ok
        run.update(image.name, targets=tagged, status="ok" if ok else "failed")
    return run.finish("failed" if failed else "success")


def _fail_incomplete(run: RunState, pushing: Sequence[ImagePlan]) -> None:
    for image in pushing:
        result = run.results[image.name]
        if result.status != "stored":
            errors = [f"{t.registry}: {t.error}" for t in result.targets if t.error]
            run.update(image.name, status="failed", error="; ".join(errors) or "not stored")


def untagged_message(results: Sequence[ImageResult] | Any, reason: str) -> str:
    """`nothing was tagged`, why, and the manifests each registry holds untagged."""
    held = [
        f"{t.registry}/{image.name}: {', '.join(d[:19] for d in t.stored)}"
        for image in results
        for t in image.targets
        if t.stored
    ]
    text = f"{reason}; nothing was tagged in any registry"
    if held:
        text += (
            ". These manifests are stored by digest only, untagged (run again to finish): "
            + "; ".join(held)
        )
    return text


def _sign_and_attest(
    run: RunState, image: ImagePlan, item: Ready, access: Mapping[str, Any], signer: Any
) -> bool:
    """Sign every digest of the image, then attest its provenance; False (and the image
    failed) when a signature or an attestation failed. The attachment manifests cosign
    replaced on the way are deleted, whatever happened (superseded.py)."""
    from shipit.execute import superseded  # noqa: PLC0415 (only runs that sign need it)

    policy = image.image.sign
    watch = superseded.Watch(
        [t for t in run.results[image.name].targets if t.complete],
        access,
        legacy=policy is not None and policy.format == "legacy",
        parallel=image.image.push.parallel,
    )
    watch.look()  # a digest signed before (a second run) already has attachments
    signatures = _sign(run, image, item, access, signer, between=watch.look)
    run.update(image.name, signatures=signatures)
    error = None if all(s.ok for s in signatures) else "signing failed"
    if error is None:
        watch.look()
        attested = _provenance(run, image, item, access, signer)
        run.update(image.name, attestations=attested)
        if not all(a.ok for a in attested):
            error = "the provenance attestation failed"
    watch.clean()
    if error is not None:
        run.update(image.name, status="failed", error=error)
    return error is None


def _sign(
    run: RunState,
    image: ImagePlan,
    item: Ready,
    access: Mapping[str, Any],
    signer: Any,
    *,
    between: Callable[[], None],
) -> tuple[Any, ...]:
    """Sign every digest the image stored (each platform and the index) in every registry;
    with `attest_sbom`, attach each platform's SBOM to that platform's digest (`between`
    runs after the signatures, before the SBOMs)."""
    from shipit.stages import sign  # noqa: PLC0415 (only runs that sign need it)

    policy = image.image.sign
    if policy is None:
        return ()
    targets = [t for t in run.results[image.name].targets if t.complete]
    sign_targets = [
        _sign_target(sign, ref, target, access)
        for target in targets
        for ref in target.stored_refs()
    ]
    if not sign_targets:
        return ()
    parallel = image.image.push.parallel
    results = sign.sign_all(
        signer, sign_targets, policy, image.annotations, env=run.env, console=run.console,
        parallel=parallel,
    )  # fmt: skip
    if policy.attest_sbom:
        between()
        results = _attest_sboms(
            run, image, item, targets=targets, access=access, signer=signer, results=results
        )
    return tuple(results)


def _provenance(
    run: RunState, image: ImagePlan, item: Ready, access: Mapping[str, Any], signer: Any
) -> tuple[Any, ...]:
    """The SLSA provenance of every stored digest, attested where it was signed."""
    from shipit.execute import attest  # noqa: PLC0415
    from shipit.stages import sign  # noqa: PLC0415

    stored = [t for t in run.results[image.name].targets if t.complete]
    targets = [_sign_target(sign, ref, t, access) for t in stored for ref in t.stored_refs()]
    signed = {s.ref for s in run.results[image.name].signatures if s.ok}
    return attest.attest_all(
        run, image, item, targets=targets, signed=signed, signer=signer, stored=stored
    )


def _attest_sboms(
    run: RunState,
    image: ImagePlan,
    item: Ready,
    *,
    targets: Sequence[TargetResult],
    access: Mapping[str, Any],
    signer: Any,
    results: list[Any],
) -> list[Any]:
    from shipit.stages import sign  # noqa: PLC0415

    policy = image.image.sign
    assert policy is not None  # noqa: S101 - only called when signing
    signed = {r.ref for r in results if r.ok}
    scans = {s.platform: s for s in run.results[image.name].scans}
    failures: dict[str, Any] = {}
    for part in item.artifact.platforms:
        report = scans.get(part.platform if len(item.artifact.platforms) > 1 else None)
        if report is None or report.sbom is None:
            continue
        digest = part.manifest.digest
        refs = [(t, t.digest_ref(digest)) for t in targets]
        chosen = [_sign_target(sign, ref, t, access) for t, ref in refs if ref in signed and ref]
        attested = sign.attest_all(
            signer, chosen, policy, report.sbom, env=run.env, console=run.console,
            parallel=image.image.push.parallel,
        )  # fmt: skip
        failures.update({r.ref: r for r in attested if not r.ok})
    return [failures.get(r.ref, r) for r in results]


def _sign_target(sign: Any, ref: str, target: TargetResult, access: Mapping[str, Any]) -> Any:
    registry = access[target.registry].registry
    credentials = access[target.registry].credentials
    return sign.SignTarget(
        ref=ref,
        insecure=registry.insecure,
        ca_file=registry.ca_file,
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
    )
