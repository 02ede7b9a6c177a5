"""A `.gitlab-ci.yml` whose jobs `docker build`/`tag`/`push` (or `podman`) as a shipit spec;
the pipeline rewritten with those jobs replaced by shipit's include.

What a job pushes is what is published: each pushed `IMAGE:TAG` becomes a tag rule of the
image, enabled when the job runs (its `only:`/`rules:` when they are one of the common
forms; otherwise the report says so). `$CI_*` variables in tags become shipit's names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shipit.migrate.report import Report
from shipit.migrate.yamlsrc import clean, line_of

TEMPLATE: Final = "https://raw.githubusercontent.com/OWNER/shipit/v1/.gitlab-ci-template.yml"
_TOOLS: Final = ("docker", "podman")
_KEYWORDS: Final = frozenset(
    {"stages", "variables", "include", "default", "workflow", "image", "services", "cache",
     "before_script", "after_script", "types", "pages"}
)  # fmt: skip
# A tag that is exactly one variable: the shipit rule that makes the same tag.
_WHOLE: Final[Mapping[str, dict[str, Any]]] = {
    "CI_COMMIT_SHA": {"type": "sha", "format": "long", "prefix": ""},
    "CI_COMMIT_SHORT_SHA": {"type": "sha", "length": 8, "prefix": ""},
    "CI_COMMIT_TAG": {"type": "ref", "event": "tag"},
    "CI_COMMIT_REF_SLUG": {"type": "raw", "value": "{{ branch_slug }}"},
}
_NAMES: Final = {
    "CI_COMMIT_SHA": "sha",
    "CI_COMMIT_SHORT_SHA": "sha[:8]",
    "CI_COMMIT_TAG": "tag",
    "CI_COMMIT_BRANCH": "branch",
    "CI_COMMIT_REF_NAME": "branch or tag",
    "CI_COMMIT_REF_SLUG": "branch_slug",
    "CI_PIPELINE_IID": "build_number",
    "CI_DEFAULT_BRANCH": "'main'",
}
_VAR = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")


def _var(text: str) -> str | None:
    m = _VAR.fullmatch(text)
    return (m.group(1) or m.group(2)) if m else None


def _tag_rule(tag: str, report: Report, line: int | None) -> dict[str, Any] | None:
    whole = _var(tag)
    if whole is not None and whole in _WHOLE:
        return dict(_WHOLE[whole])

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in _NAMES:
            return "{{ " + _NAMES[name] + " }}"
        report.changed(f"the tag {tag!r} reads ${name} from shipit's environment", line)
        return "{{ env." + name + " }}"

    return {"type": "raw", "value": _VAR.sub(one, tag)}


def _image(ref: str) -> tuple[str, str, str]:
    """(registry url, image name, tag) of a pushed reference like `$CI_REGISTRY_IMAGE:$TAG`."""
    name, _, tag = ref.rpartition(":") if ref.rfind(":") > ref.rfind("/") else (ref, "", "latest")
    if name in ("$CI_REGISTRY_IMAGE", "${CI_REGISTRY_IMAGE}"):
        return "${CI_REGISTRY}/${CI_PROJECT_NAMESPACE}", "${CI_PROJECT_NAME}", tag
    for prefix in ("$CI_REGISTRY_IMAGE/", "${CI_REGISTRY_IMAGE}/"):
        if name.startswith(prefix):
            rest = name.removeprefix(prefix)
            head, _, last = rest.rpartition("/")
            return "${CI_REGISTRY_IMAGE}" + (f"/{head}" if head else ""), last, tag
    parts = name.lower().split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0].startswith("$")):
        parts = ["docker.io", *(parts if len(parts) > 1 else ["library", *parts])]
    url = "/".join(parts[:-1]).replace("$ci_registry", "${CI_REGISTRY}")
    return url, parts[-1], tag


def _condition(job: Mapping[str, Any], report: Report, name: str) -> str | None:
    """When the job runs, as a Jinja expression (None: always)."""
    line = line_of(job)
    only = job.get("only")
    if isinstance(only, dict):
        only = only.get("refs")
    if isinstance(only, str):
        only = [only]
    if isinstance(only, list):
        parts = []
        for ref in only:
            if ref == "tags":
                parts.append("event == 'tag'")
            elif ref in ("branches", "pushes"):
                parts.append("event == 'push'")
            elif ref == "merge_requests":
                parts.append("event == 'pull_request'")
            elif re.fullmatch(r"[\w./-]+", str(ref)):
                parts.append(f"branch == '{ref}'")
            else:
                report.missed(f"job {name}: only: {ref} (its tags are made on every build)", line)
                return None
        return " or ".join(parts) if parts else None
    rules = job.get("rules")
    if isinstance(rules, list) and rules:
        exprs = []
        for rule in rules:
            expr = _rule_if(rule.get("if", "") if isinstance(rule, dict) else "")
            when = rule.get("when", "on_success") if isinstance(rule, dict) else "on_success"
            if expr is None or when == "never":
                report.missed(
                    f"job {name}: rules {clean(rule)} (its tags are made on every build)", line
                )
                return None
            exprs.append(expr)
        return " or ".join(f"({e})" if " or " in e else e for e in exprs)
    return None


def _rule_if(text: str) -> str | None:
    text = text.strip()
    if text in ("$CI_COMMIT_TAG", "$CI_COMMIT_TAG != null", "$CI_COMMIT_TAG != null"):
        return "event == 'tag'"
    if re.fullmatch(r"\$CI_COMMIT_BRANCH\s*==\s*\$CI_DEFAULT_BRANCH", text):
        return "is_default_branch"
    if re.fullmatch(r"\$CI_COMMIT_BRANCH", text):
        return "event == 'push'"
    if re.fullmatch(r'\$CI_PIPELINE_SOURCE\s*==\s*["\']merge_request_event["\']', text):
        return "event == 'pull_request'"
    m = re.fullmatch(r'\$CI_COMMIT_(?:BRANCH|REF_NAME)\s*==\s*["\']([\w./-]+)["\']', text)
    if m:
        return f"ref_name == '{m.group(1)}'".replace("ref_name", "(branch or tag)")
    return None


def _script(job: Mapping[str, Any]) -> list[tuple[str, int | None]]:
    lines = []
    for key in ("before_script", "script"):
        items = job.get(key) or []
        for item in [items] if isinstance(items, str) else items:
            for part in str(item).splitlines():
                lines.append((part.strip(), line_of(job)))
    return lines


@dataclass(kw_only=True)
class _Found:
    """What the jobs publish, gathered job by job."""

    images: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)


def translate(
    document: Mapping[str, Any], report: Report
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The spec and the rewritten pipeline (the building jobs replaced by the include)."""
    found = _Found()
    for name, job in document.items():
        if name in _KEYWORDS or str(name).startswith(".") or not isinstance(job, dict):
            continue
        lines = _script(job)
        if any(_is_tool(line, ("build", "push")) for line, _ in lines):
            found.replaced.append(name)
            _job(str(name), job, lines, found, report)
    if not found.images:
        report.missed("no job runs `docker push` or `podman push`")
        return {}, None
    spec = _spec(found.images, found.credentials, report)
    return spec, _rewrite(document, found.replaced, report)


def _job(
    name: str,
    job: Mapping[str, Any],
    lines: list[tuple[str, int | None]],
    found: _Found,
    report: Report,
) -> None:
    condition = _condition(job, report, name)
    build: dict[str, Any] = {}
    for text, line in lines:
        try:
            argv = shlex.split(text)
        except ValueError:
            argv = []
        if len(argv) < 2 or argv[0] not in _TOOLS:
            if text and not text.startswith("#"):
                report.missed(f"job {name}: {text}", line)
            continue
        verb = argv[2] if argv[1] == "buildx" and len(argv) > 2 else argv[1]
        args = argv[3:] if argv[1] == "buildx" else argv[2:]
        if verb == "login":
            _login(args, found.credentials, report, line)
        elif verb == "build":
            build = _build(args, report, line, name)
        elif verb == "push" and args:
            rule = _push(
                args[-1], build=build, condition=condition, found=found, report=report, line=line
            )
            report.done(f"job {name}: {text} -> tag rule {rule}", line)
        elif verb in ("tag", "pull", "info", "version", "images", "logout"):
            report.done(f"job {name}: {text} (shipit tags and pushes itself)", line)
        else:
            report.missed(f"job {name}: {text}", line)


def _push(
    ref: str,
    *,
    build: Mapping[str, Any],
    condition: str | None,
    found: _Found,
    report: Report,
    line: int | None,
) -> dict[str, Any] | None:
    """What one `docker push REF` publishes, as a tag rule of REF's image."""
    url, image_name, tag = _image(ref)
    image = found.images.setdefault((url, image_name), {"name": image_name, "tags": []})
    image.update({k: v for k, v in build.items() if k not in image})
    rule = _tag_rule(tag, report, line)
    if rule is not None:
        if condition:
            rule["enable"] = "{{ " + condition + " }}"
        if rule not in image["tags"]:
            image["tags"].append(rule)
    return rule


def _is_tool(text: str, verbs: tuple[str, ...]) -> bool:
    words = text.split()
    return len(words) > 1 and words[0] in _TOOLS and (words[1] in verbs or words[1] == "buildx")


def _login(
    args: list[str], credentials: dict[str, dict[str, str]], report: Report, line: int | None
) -> None:
    user = password = None
    host = "docker.io"
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-u", "--username") and i + 1 < len(args):
            user = args[i + 1]
            i += 1
        elif arg in ("-p", "--password") and i + 1 < len(args):
            password = args[i + 1]
            i += 1
        elif arg == "--password-stdin":
            password = "stdin"  # noqa: S105 (a marker, not a secret)
        elif not arg.startswith("-"):
            host = arg
        i += 1
    host = "${CI_REGISTRY}" if _var(host) == "CI_REGISTRY" else host
    entry: dict[str, str] = {}
    if user:
        user_var = _var(user)
        entry["username"] = "${" + user_var + "}" if user_var else user
    if password and _var(password):
        entry["password_env"] = _var(password) or ""
    elif host == "${CI_REGISTRY}":
        entry["password_env"] = "CI_REGISTRY_PASSWORD"  # noqa: S105 (a variable's name)
    else:
        report.missed(f"login to {host}: the password is not one variable", line)
    credentials[host] = entry
    report.done(f"login to {host}: a registry entry with password_env", line)


def _build(args: list[str], report: Report, line: int | None, job: str) -> dict[str, Any]:
    build: dict[str, Any] = {}
    context = "."
    i = 0
    with_value = {"-t", "--tag", "-f", "--file", "--build-arg", "--target", "--platform", "--label"}
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if arg in with_value and i + 1 < len(args) else None
        if value is not None:
            i += 1
        if arg in ("-f", "--file"):
            build["dockerfile"] = value
        elif arg == "--build-arg" and value and "=" in value:
            key, _, val = value.partition("=")
            build.setdefault("build_args", {})[key] = _VAR.sub(_build_arg, val)
        elif arg == "--target":
            build["target"] = value
        elif arg == "--platform" and value:
            platforms = value.split(",")
            build.update(
                {"platform": platforms[0]} if len(platforms) == 1 else {"platforms": platforms}
            )
        elif arg == "--label" and value and "=" in value:
            key, _, val = value.partition("=")
            build.setdefault("labels", {})[key] = val
        elif arg in ("-t", "--tag", "--pull", "--no-cache", "--push", "--load"):
            pass
        elif arg.startswith("-"):
            report.missed(f"job {job}: build option {arg}", line)
        else:
            context = arg
        i += 1
    if context != ".":
        build["context"] = context
    if "dockerfile" in build and build["dockerfile"].startswith(context.rstrip("/") + "/"):
        build["dockerfile"] = build["dockerfile"][len(context.rstrip("/")) + 1 :]
    report.done(f"job {job}: build of {context}", line)
    return build


def _build_arg(m: re.Match[str]) -> str:
    """A variable in a build arg: shipit's name for it, else the variable from the environment."""
    name = m.group(1) or m.group(2)
    return "{{ " + _NAMES[name] + " }}" if name in _NAMES else "${" + name + "}"


def _spec(
    images: Mapping[tuple[str, str], dict[str, Any]],
    credentials: Mapping[str, dict[str, str]],
    report: Report,
) -> dict[str, Any]:
    def entry(url: str) -> Any:
        host = url.split("/", maxsplit=1)[0]
        cred = credentials.get(host)
        if cred is None and host == "${CI_REGISTRY}":
            cred = {"username": "${CI_REGISTRY_USER}", "password_env": "CI_REGISTRY_PASSWORD"}
        return {"url": url, **cred} if cred else url

    by_name: dict[str, dict[str, Any]] = {}
    urls: dict[str, list[str]] = {}
    for (url, name), image in images.items():
        merged = by_name.setdefault(name, {**image, "tags": []})
        for rule in image["tags"]:
            if rule not in merged["tags"]:
                merged["tags"].append(rule)
        urls.setdefault(name, []).append(url)
    spec: dict[str, Any] = {"version": 1}
    listed = list(by_name.values())
    for image in listed:
        image["flavor"] = {"latest": "false"}
        if any(rule.get("value") == "latest" for rule in image["tags"]):
            report.changed("`latest` is made where the old jobs pushed it, by a raw rule")
    if len({tuple(v) for v in urls.values()}) == 1:
        spec["registries"] = [entry(u) for u in next(iter(urls.values()))]
    else:
        for image in listed:
            image["registries"] = [entry(u) for u in urls[image["name"]]]
    if len(listed) == 1:
        spec["image"] = listed[0]
    else:
        spec["images"] = listed
    if any(
        u.startswith("${CI_REGISTRY}/${CI_PROJECT_NAMESPACE}") for v in urls.values() for u in v
    ):
        report.changed(
            "$CI_REGISTRY_IMAGE is spelled ${CI_REGISTRY}/${CI_PROJECT_NAMESPACE} and the name"
            " ${CI_PROJECT_NAME}: the same path for a project whose path is lowercase"
        )
    return spec


def _rewrite(document: Mapping[str, Any], replaced: list[str], report: Report) -> dict[str, Any]:
    out = clean(document)
    for name in replaced:
        out.pop(name, None)
        report.done(f"job {name}: replaced by shipit's include")
    include = out.get("include") or []
    include = [include] if isinstance(include, dict | str) else list(include)
    include.append({"remote": TEMPLATE})
    return {"include": include, **{k: v for k, v in out.items() if k != "include"}}
