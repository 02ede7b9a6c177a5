"""The run: one loop that drives the stages over a plan and collects what happened.

Order, and the guarantee it gives:

1. signing set up and proven (the key opens, the Sigstore services answer), build secrets there;
2. preflight: the scanner, then the buildx builders, the daemon and every registry's
   credentials at once;
3. `prepare`: build every image (one image per platform), scan every platform, export;
4. `publish`: store every manifest by digest everywhere, sign every digest, then tag.

Nothing is published unless every image built and passed its gate, and no tag moves until
every registry holds every image and every digest is signed; so a release publishes all of
its images or none, and a failure leaves only untagged manifests, which the result lists.

A leg of a distributed build (DESIGN section 9) stops after storing by digest (leg.py);
`shipit merge` joins the legs without building anything (merge.py), then publishes the same
way from the sign step on.

- results.py: `RunResult`, `ImageResult` and the run's state;
- prepare.py: build, scan and export;
- publish.py: store, sign and tag;
- leg.py: a leg's store, its record and its leg document;
- merge.py: the merge: legs checked against the plan and the registries, the index, publish.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shipit import proc
from shipit.errors import GateBlocked, ShipitError, UsageError
from shipit.execute.results import ImageResult, PlatformResult, RunResult, RunState
from shipit.log import Console
from shipit.plan import ImagePlan, Plan
from shipit.stages.export import ExportError
from shipit.stages.export_cache import ExportCache

__all__ = ["ImageResult", "PlatformResult", "RunResult", "execute"]


def execute(plan: Plan, env: Mapping[str, str], console: Console) -> RunResult:
    """Run every stage the plan lists; never raises for a stage failure, returns the result.

    Usage errors found before anything started (a missing signing key) still raise. Ctrl-C
    (or SIGTERM, which the command line turns into the same) stops every child process and
    ends the run as "interrupted"; every push is safe to repeat, so a second run finishes it.
    """
    run = RunState(plan, env, console)
    try:
        return _execute(run)
    except KeyboardInterrupt:
        proc.terminate_children()
        run.mark_unfinished("interrupted")
        return run.finish(
            "interrupted", "interrupted; pushes are safe to repeat: run again to finish"
        )


def _execute(run: RunState) -> RunResult:
    from shipit import docker_api  # noqa: PLC0415 (the Docker SDK is loaded only for a run)
    from shipit.execute.prepare import prepare_all  # noqa: PLC0415
    from shipit.execute.publish import publish  # noqa: PLC0415
    from shipit.stages import preflight  # noqa: PLC0415
    from shipit.stages.build import Engines  # noqa: PLC0415

    plan, env, console = run.plan, run.env, run.console
    images = plan.active()
    if not images:  # e.g. a monorepo tag that releases another image: nothing to do here
        console.write("no image of this spec is built for this ref")
        return run.finish("success")
    _check_build_secrets(images, env, console)  # local and quick: before any probe
    signers = _check_signing(images, env, console)
    with contextlib.ExitStack() as stack:
        cache, folder = _work_folder(env, console)
        workdir = Path(stack.enter_context(folder))
        try:
            with console.group("preflight"):
                if any("scan" in image.stages for image in images):
                    from shipit.stages import scan  # noqa: PLC0415

                    scan.find_trivy(env)  # a missing scanner is found before the build
                engines = Engines(env)
                stack.callback(engines.close)
                access = preflight.open_registries(images, env, console)
                for item in access.values():
                    stack.callback(item.client.close)
                with ThreadPoolExecutor(max_workers=1) as pool:  # registries answer meanwhile
                    registries = pool.submit(preflight.check_registries, images, access, console)
                    images = engines.choose_defaults(images, console)
                    engines.prepare(images, console)
                    if engines.needs_daemon(images):  # not when every builder is elsewhere
                        preflight.check_daemon(engines.daemon, console)
                        engines.check_sdk(images)  # platforms its classic builder cannot build
                    registries.result()
            ready = prepare_all(
                run, images, engines=engines, access=access, workdir=workdir, stack=stack,
                cache=cache,
            )  # fmt: skip
        except GateBlocked as exc:
            return run.finish("blocked", str(exc))
        except (docker_api.DaemonError, ExportError) as exc:
            return run.failed(exc)
        except ShipitError as exc:
            if isinstance(exc, UsageError):
                raise
            return run.failed(exc)
        if any(image.leg is not None for image in images):
            from shipit.execute.leg import publish_leg  # noqa: PLC0415

            return publish_leg(run, images, ready, access)  # stored by digest, no sign, no tag
        return publish(run, images, ready, access, signers)


def _work_folder(
    env: Mapping[str, str], console: Console
) -> tuple[ExportCache | None, tempfile.TemporaryDirectory[str]]:
    """The run's work folder: inside the export cache (so a layer is kept by a hard link), or
    a temporary one when the cache is off or cannot be written."""
    cache = ExportCache.from_env(env)
    if cache is not None:
        try:
            return cache, cache.run_folder()
        except OSError as exc:
            if console.verbosity > 0:
                console.write(f"the export cache {cache.root} is skipped: {exc.strerror or exc}")
    return None, tempfile.TemporaryDirectory(prefix="shipit-")


def _check_signing(
    images: tuple[ImagePlan, ...], env: Mapping[str, str], console: Console
) -> dict[str, Any]:
    """Decide how each image will be signed, and prove it can work, before anything is
    built (errors exit 2)."""
    signers: dict[str, Any] = {}
    policies = []
    for image in images:
        policy = image.image.sign
        if "sign" not in image.stages or policy is None:
            continue
        from shipit.stages import sign  # noqa: PLC0415 (only runs that sign need it)

        signers[image.name] = sign.check_signing(policy, env)
        policies.append((signers[image.name], policy))
        sign.check_annotations(image.annotations)
        scan_policy = image.image.scan
        if policy.attest_sbom and (scan_policy is None or scan_policy.sbom is None):
            raise UsageError(
                f"image {image.name}: sign.attest_sbom needs an SBOM: set scan.sbom: cyclonedx"
            )
    if policies:
        from shipit.stages import sign  # noqa: PLC0415

        sign.prove_signing(policies, env=env, console=console)
    return signers


def _check_build_secrets(
    images: tuple[ImagePlan, ...], env: Mapping[str, str], console: Console
) -> None:
    """Every build secret is there before anything is built (exit 2 names the missing one);
    the values are masked in every log line from now on."""
    for image in images:
        for secret in image.build.secrets:
            what = f"image {image.name}: build secret {secret.id}"
            if secret.env is not None:
                value = env.get(secret.env)
                if not value:
                    raise UsageError(
                        f"{what}: the variable {secret.env} is not set",
                        hint="set it in the job's environment (a masked CI variable or secret)",
                    )
                console.secret(value)
            elif secret.file is not None and not _is_file(secret.file):
                raise UsageError(f"{what}: the file {secret.file} does not exist")


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
