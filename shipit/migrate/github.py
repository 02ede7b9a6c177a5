"""A GitHub workflow (login, metadata, build-push, trivy, cosign steps) as a shipit spec,
and the workflow rewritten to run shipit's action instead of those steps."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shipit.migrate import metadata
from shipit.migrate.report import Report
from shipit.migrate.yamlsrc import clean, line_of

ACTION: Final = "OWNER/shipit@v1"
SETUP_TRIVY: Final = "aquasecurity/setup-trivy@81e514348e19b6112ce2a7e3ecbafe19c1e1f567  # v0.3.1"
SEVERITIES: Final = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
_SECRET = re.compile(r"\$\{\{\s*(secrets|vars|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_EXPR = re.compile(r"\$\{\{.*?\}\}")


@dataclass(kw_only=True)
class Translation:
    spec: dict[str, Any]
    workflow: dict[str, Any] | None  # the rewritten workflow, None when nothing was replaced
    env: dict[str, str] = field(default_factory=dict)  # what the shipit step needs


def _uses(step: Mapping[str, Any]) -> str:
    return str(step.get("uses", "")).split("@")[0].strip()


def _with(step: Mapping[str, Any]) -> dict[str, str]:
    given = step.get("with") or {}
    return {str(k): str(v) for k, v in given.items() if k != "__line__"}


def _lines(text: str | None) -> list[str]:
    """An action's list input: one item a line (commas too for some), `#` comments out."""
    items = []
    for raw in (text or "").splitlines():
        item = raw.strip()
        if item and not item.startswith("#"):
            items.append(item)
    return items


def _triggers(workflow: Mapping[str, Any]) -> set[str]:
    on = workflow.get("on")
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return {str(x) for x in on}
    if isinstance(on, dict):
        return {str(k) for k in on if k != "__line__"}
    return set()


def _env_flag(*scopes: Any) -> bool:
    for scope in scopes:
        env = scope.get("env") if isinstance(scope, dict) else None
        if (
            isinstance(env, dict)
            and str(env.get("DOCKER_METADATA_PR_HEAD_SHA", "")).lower() == "true"
        ):
            return True
    return False


def translate(workflow: Mapping[str, Any], report: Report) -> Translation:  # noqa: C901, PLR0912, PLR0915
    """The spec and rewritten workflow for the first job that uses build-push-action or
    metadata-action (a workflow with several such jobs: the others are reported)."""
    jobs = {k: v for k, v in (workflow.get("jobs") or {}).items() if k != "__line__"}
    chosen = None
    for name, job in jobs.items():
        steps = job.get("steps") or []
        if any(_uses(s) in ("docker/build-push-action", "docker/metadata-action") for s in steps):
            if chosen is None:
                chosen = name
            else:
                report.missed(f"job {name}: only one building job is translated", line_of(job))
    if chosen is None:
        report.missed("no job uses docker/build-push-action or docker/metadata-action")
        return Translation(spec={}, workflow=None)
    job = jobs[chosen]
    steps = job.get("steps") or []
    triggers = _triggers(workflow)
    env: dict[str, str] = {}
    credentials: dict[str, dict[str, str]] = {}
    metas: dict[str, dict[str, Any]] = {}  # step id -> image fragments
    builds: list[tuple[dict[str, str], int | None]] = []
    scan: dict[str, Any] = {}
    sign: dict[str, Any] | None = None
    kept: list[Any] = []
    for step in steps:
        uses, given, line = _uses(step), _with(step), line_of(step)
        if uses == "docker/login-action":
            host, entry = _login(given, env, report, line)
            credentials[host] = entry
        elif uses == "docker/metadata-action":
            pr_merge = bool(triggers & {"pull_request", "pull_request_target"}) and not _env_flag(
                workflow, job, step
            )
            options = metadata.Options(pr_merge_sha=pr_merge, line=line)
            metas[str(step.get("id", ""))] = _metadata(given, options, report)
            if pr_merge and "sha" in given.get("tags", "type=sha" if not given.get("tags") else ""):
                report.changed(
                    "the sha tag on pull requests stays GitHub's merge commit (GITHUB_SHA), as"
                    " before; drop the rule marked `event == 'pull_request'` for the PR head",
                    line,
                )
        elif uses == "docker/build-push-action":
            builds.append((given, line))
        elif uses == "aquasecurity/trivy-action":
            scan = _trivy(given, report, line)
        elif uses in ("docker/setup-buildx-action", "docker/setup-qemu-action"):
            report.done(f"{uses}: shipit sets up its builder itself", line)
        elif "run" in step and re.search(r"\bcosign\s+sign\b", str(step["run"])):
            sign = _cosign(str(step["run"]), step, env, report, line)
        else:
            kept.append(step)
            if uses and uses != "actions/checkout":
                report.done(f"step {uses}: kept as it is", line)
            elif "run" in step:
                report.done(f"step {step.get('name') or 'run'}: kept as it is", line)
    images, push = _images(builds, metas, credentials, report)
    spec: dict[str, Any] = {"version": 1}
    spec.update(images)
    if scan:
        spec["scan"] = scan
    if sign is not None:
        spec["sign"] = sign
        report.changed(
            "cosign signs each pushed digest inside `shipit run`, before the tags are"
            " published, instead of in a step after the push"
        )
    rewritten = _rewrite(workflow, chosen, job, kept, env, push=push, scan=bool(scan), sign=sign)
    return Translation(spec=spec, workflow=rewritten, env=env)


def _secret_name(
    value: str, env: dict[str, str], report: Report, what: str, line: int | None
) -> str | None:
    """The variable a secret expression becomes (and the step's env to set it); literals refused."""
    value = value.strip()
    if value in ("${{ github.token }}", "${{ secrets.GITHUB_TOKEN }}"):
        env["GITHUB_TOKEN"] = "${{ github.token }}"  # noqa: S105 (an expression, not a secret)
        return "GITHUB_TOKEN"
    m = _SECRET.fullmatch(value)
    if m:
        env[m.group(2)] = value
        return m.group(2)
    report.missed(
        f"{what}: only ${{{{ secrets.NAME }}}} is translated, never a written value", line
    )
    return None


def _login(
    given: Mapping[str, str], env: dict[str, str], report: Report, line: int | None
) -> tuple[str, dict[str, str]]:
    host = (given.get("registry") or "docker.io").lower()
    host = "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host
    entry: dict[str, str] = {}
    user = given.get("username", "").strip()
    if user == "${{ github.actor }}":
        entry["username"] = "${GITHUB_ACTOR}"
    elif m := _SECRET.fullmatch(user):
        env[m.group(2)] = user
        entry["username"] = "${" + m.group(2) + "}"
    elif user and not _EXPR.search(user):
        entry["username"] = user
    elif user:
        report.missed(f"login to {host}: the username {user!r}", line)
    if "password" in given:
        name = _secret_name(given["password"], env, report, f"login to {host}: password", line)
        if name:
            entry["password_env"] = name
    report.done(f"login to {host}: a registry entry with password_env", line)
    return host, entry


def _metadata(
    given: Mapping[str, str], options: metadata.Options, report: Report
) -> dict[str, Any]:
    line = options.line
    refs = metadata.parse_images(_lines(given.get("images")), report, line)
    tags = metadata.translate_tags(
        _lines(given.get("tags")), _lines(given.get("flavor")), options, report
    )
    labels = metadata.labels(_lines(given.get("labels")), report, line)
    for key in given:
        if key in ("sep-tags", "sep-labels", "sep-annotations"):
            report.done(f"{key}: shipit's outputs are one item a line", line)
        elif key not in ("images", "tags", "flavor", "labels"):
            report.missed(f"metadata-action input {key}", line)
    return {"refs": refs, "tags": tags, "labels": labels, "line": line}


def _trivy(given: Mapping[str, str], report: Report, line: int | None) -> dict[str, Any]:
    scan: dict[str, Any] = {}
    chosen = [
        s.strip().upper()
        for s in given.get("severity", "UNKNOWN,LOW,MEDIUM,HIGH,CRITICAL").split(",")
        if s.strip()
    ]
    if given.get("exit-code", "0").strip() in ("0", ""):
        scan["fail_on"] = "never"
        report.done("trivy-action without exit-code: the scan reports, never blocks", line)
    else:
        lowest = min(chosen, key=SEVERITIES.index) if chosen else "UNKNOWN"
        scan["fail_on"] = lowest
        if set(chosen) != set(SEVERITIES[SEVERITIES.index(lowest) :]):
            report.changed(
                f"trivy severity {','.join(chosen)}: shipit blocks on {lowest} and above", line
            )
        report.done(f"trivy-action severity {','.join(chosen)}: fail_on {lowest}", line)
    if given.get("ignore-unfixed", "false").lower() == "true":
        scan["ignore_unfixed"] = True
    ignores = [f.strip() for f in given.get("trivyignores", "").split(",") if f.strip()]
    if ignores:
        scan["ignorefile"] = ignores[0]
        if len(ignores) > 1:
            report.missed(f"trivyignores: only the first file ({ignores[0]}) is read", line)
    for key in given:
        if key not in (
            "severity",
            "exit-code",
            "ignore-unfixed",
            "trivyignores",
            "image-ref",
            "format",
            "output",
            "scan-type",
        ):
            report.missed(f"trivy-action input {key}", line)
    return scan


def _cosign(
    run: str, step: Mapping[str, Any], env: dict[str, str], report: Report, line: int | None
) -> dict[str, Any]:
    m = re.search(r"--key[ =](\S+)", run)
    if m is None:
        report.done("cosign sign without a key: keyless (OIDC) signing", line)
        return {}
    key = m.group(1).strip("'\"")
    step_env = step.get("env") or {}
    if key.startswith("env://"):
        var = key.removeprefix("env://")
        if var in step_env:
            env[var] = str(step_env[var])
        password = step_env.get("COSIGN_PASSWORD")
        if password:
            env["COSIGN_PASSWORD"] = str(password)
        report.done(f"cosign sign --key {key}", line)
        return {"key": key}
    if key.startswith("$"):
        report.missed(f"cosign --key {key}: a shell variable (use env://NAME)", line)
        return {}
    report.done(f"cosign sign --key {key}", line)
    return {"key": key}


def _images(
    builds: Sequence[tuple[dict[str, str], int | None]],
    metas: Mapping[str, dict[str, Any]],
    credentials: Mapping[str, dict[str, str]],
    report: Report,
) -> tuple[dict[str, Any], str]:
    """The spec's registries and images; and the shipit step's `push` input."""
    images: list[dict[str, Any]] = []
    push = "true"
    registries: dict[str, list[str]] = {}
    for given, line in builds or [({}, None)]:
        tags_ref = re.search(r"steps\.([\w-]+)\.outputs\.tags", given.get("tags", ""))
        meta = metas.get(tags_ref.group(1)) if tags_ref else next(iter(metas.values()), None)
        if meta is None:
            report.missed("build-push-action tags not from metadata-action", line)
            continue
        base = _build(given, report, line)
        if "push" in given:
            push = given["push"].strip()
        for ref in meta["refs"]:
            registries.setdefault(ref.name, []).append(ref.registry)
        names = list(dict.fromkeys(ref.name for ref in meta["refs"]))
        for name in names:
            image: dict[str, Any] = {"name": name, **base}
            if meta["labels"]:
                image["labels"] = {**image.get("labels", {}), **meta["labels"]}
            image["tags"] = meta["tags"].rules
            if meta["tags"].flavor:
                image["flavor"] = meta["tags"].flavor
            images.append(image)

    return _layout(images, registries, credentials, report), push


def _layout(
    images: list[dict[str, Any]],
    registries: Mapping[str, list[str]],
    credentials: Mapping[str, dict[str, str]],
    report: Report,
) -> dict[str, Any]:
    """Registries at the top when every image goes to the same ones, else per image."""

    def entry(url: str) -> Any:
        cred = credentials.get(url.split("/", maxsplit=1)[0])
        return {"url": url, **cred} if cred else url

    out: dict[str, Any] = {}
    shared = {tuple(v) for v in registries.values()}
    if len(shared) == 1 and images:
        out["registries"] = [entry(u) for u in next(iter(shared))]
    else:
        for image in images:
            image["registries"] = [entry(u) for u in registries[image["name"]]]
        if len(images) > 1:
            report.changed("each image name is built once: metadata-action's names differ", None)
    if len(images) == 1:
        out["image"] = images[0]
    elif images:
        out["images"] = images
    for host in credentials:
        if not any(u.split("/")[0] == host for urls in registries.values() for u in urls):
            report.missed(f"login to {host}: no image goes there", None)
    return out


def _build(given: Mapping[str, str], report: Report, line: int | None) -> dict[str, Any]:
    image: dict[str, Any] = {}
    simple = {"context": "context", "file": "dockerfile", "target": "target"}
    for key, value in given.items():
        if key in simple:
            if "${{" in value:
                report.missed(f"build-push-action {key}: {value}", line)
            else:
                image[simple[key]] = value
        elif key == "platforms":
            platforms = [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
            image.update(
                {"platform": platforms[0]} if len(platforms) == 1 else {"platforms": platforms}
            )
        elif key == "build-args":
            image["build_args"] = dict(item.split("=", 1) for item in _lines(value) if "=" in item)
        elif key in ("tags", "push", "labels"):
            continue
        else:
            report.missed(f"build-push-action input {key}: {value}", line)
            continue
        report.done(f"build-push-action {key}", line)
    if (
        "file" in given
        and "context" in given
        and given["file"].startswith(given["context"].rstrip("/") + "/")
    ):
        image["dockerfile"] = given["file"][len(given["context"].rstrip("/")) + 1 :]
    if "labels" in given and "steps." not in given["labels"]:
        image["labels"] = dict(
            item.split("=", 1) for item in _lines(given["labels"]) if "=" in item
        )
    return image


def _rewrite(
    workflow: Mapping[str, Any],
    name: str,
    job: Mapping[str, Any],
    kept: list[Any],
    env: Mapping[str, str],
    *,
    push: str,
    scan: bool,
    sign: dict[str, Any] | None,
) -> dict[str, Any]:
    out = clean(workflow)
    new_job = clean(job)
    steps = []
    for step in clean(kept):
        if _uses(step) == "actions/checkout":
            steps.append({**step, "with": {**(step.get("with") or {}), "fetch-depth": 0}})
        else:
            steps.append(step)
    if scan:
        steps.append(
            {
                "name": "Install Trivy (shipit runs trivy from PATH)",
                "uses": SETUP_TRIVY,
                "with": {"version": "v0.76.0"},
            }
        )
    shipit_step: dict[str, Any] = {"uses": ACTION, "with": {"push": push}}
    if env:
        shipit_step["env"] = dict(env)
    steps.append(shipit_step)
    new_job["steps"] = steps
    permissions = dict(new_job.get("permissions") or {})
    permissions.setdefault("contents", "read")
    permissions.setdefault("packages", "write")
    if sign is not None and not sign.get("key"):
        permissions["id-token"] = "write"
    new_job["permissions"] = permissions
    out["jobs"] = {**out["jobs"], name: new_job}
    return dict(out)
