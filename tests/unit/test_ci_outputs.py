"""GitHub outputs that cannot be injected into, the step summary, GitLab's dotenv."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shipit import app, ci_outputs
from shipit.execute import ImageResult, RunResult
from shipit.stages.push import TargetResult

DIGEST = "sha256:" + "ab" * 32


def result(error: str | None = None) -> RunResult:
    target = TargetResult(
        registry="ghcr.io/acme",
        host="ghcr.io",
        repository="acme/app",
        refs=("ghcr.io/acme/app:1.0.0", "ghcr.io/acme/app:latest"),
        pushed=("ghcr.io/acme/app:1.0.0", "ghcr.io/acme/app:latest"),
        digest=DIGEST,
    )
    failed = TargetResult(
        registry="quay.io/acme",
        host="quay.io",
        repository="acme/app",
        refs=("quay.io/acme/app:1.0.0", "quay.io/acme/app:latest"),
        pushed=(),
        digest=None,
        error="connection refused",
    )
    image = ImageResult(
        name="app",
        version="1.0.0",
        tags=("1.0.0", "latest"),
        status="failed",
        image_id="sha256:1",
        targets=(target, failed),
    )
    return RunResult(version="1.0.0", images=(image,), status="failed", error=error)


def parse_github_output(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT as the runner reads it: name<<DELIM ... DELIM, or name=value."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
        else:
            name, value = line.split("=", 1)
            values[name] = value
            i += 1
    return values


def test_github_outputs_are_heredocs_with_random_delimiters(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_text("earlier=step\n", encoding="utf-8")
    summary = tmp_path / "summary.md"
    summary.write_text("# an earlier step's summary\n", encoding="utf-8")
    evil = "boom\n::set-output name=digest::sha256:evil\ndigest<<EOF\nsha256:evil\nEOF"
    ci_outputs.write_github(
        result(error=evil), {"GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
    )
    values = parse_github_output(output.read_text(encoding="utf-8"))
    assert values["earlier"] == "step"  # appended, not overwritten
    assert values["version"] == "1.0.0"
    assert values["digest"] == DIGEST
    assert values["tags"].splitlines() == ["ghcr.io/acme/app:1.0.0", "ghcr.io/acme/app:latest"]
    document = json.loads(values["json"])
    assert document["error"] == evil
    assert set(values) == {"earlier", "version", "tags", "digest", "json"}
    delimiters = re.findall(
        r"^\w+<<(ghadelimiter_\w+)$", output.read_text(encoding="utf-8"), re.MULTILINE
    )
    assert len(set(delimiters)) == 4


def test_step_summary_is_appended_and_escaped(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier\n", encoding="utf-8")
    ci_outputs.write_github(result(error="a | b <script>"), {"GITHUB_STEP_SUMMARY": str(summary)})
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("# earlier\n")
    assert "| app | ghcr.io/acme | `1.0.0`, `latest` | `sha256:abababababab` | no |" in text
    assert "`1.0.0` (failed)" in text
    assert "a \\| b &lt;script&gt;" in text


def test_gitlab_dotenv(tmp_path: Path) -> None:
    path = ci_outputs.write_gitlab(result(), tmp_path)
    assert path == tmp_path / "shipit.env"
    assert path.read_text(encoding="utf-8").splitlines() == [
        "SHIPIT_VERSION=1.0.0",
        f"SHIPIT_DIGEST={DIGEST}",
        "SHIPIT_TAGS=ghcr.io/acme/app:1.0.0,ghcr.io/acme/app:latest",
        "SHIPIT_STATUS=failed",
    ]


def test_the_report_and_the_summary_list_each_digest_signed_and_attested() -> None:
    from shipit import report
    from shipit.plan import Source
    from shipit.stages.sign import SignResult

    platform = "sha256:" + "cd" * 32
    target = TargetResult(
        registry="ghcr.io/acme",
        host="ghcr.io",
        repository="acme/app",
        refs=("ghcr.io/acme/app:1.0.0",),
        pushed=(),
        digest=DIGEST,
        stored=(platform, DIGEST),
    )
    refs = [f"ghcr.io/acme/app@{d}" for d in (platform, DIGEST)]
    image = ImageResult(
        name="app",
        version="1.0.0",
        tags=("1.0.0",),
        status="failed",
        targets=(target,),
        signatures=tuple(SignResult(ref=r, ok=True) for r in refs),
        attestations=(SignResult(ref=refs[0], ok=True), SignResult(ref=refs[1], ok=False)),
    )
    source = Source(repository=None, commit="1a2b" * 10, ref="refs/heads/main", event="push")
    run = RunResult(
        version="1.0.0", images=(image,), status="failed", source=source, builder_id="local"
    )
    document = report.document(run)
    assert document["source"]["commit"] == "1a2b" * 10
    assert document["builder_id"] == "local"
    assert document["images"][0]["registries"][0]["manifests"] == [
        {"digest": platform, "signed": True, "attested": True},
        {"digest": DIGEST, "signed": True, "attested": False},
    ]
    summary = ci_outputs.markdown_summary(run)
    assert "| image | registry | digest | signed | provenance |" in summary
    assert f"| app | ghcr.io/acme | `{platform}` | yes | yes |" in summary
    assert f"| app | ghcr.io/acme | `{DIGEST}` | yes | no |" in summary


def test_the_summary_lists_the_platforms_of_a_multi_platform_image() -> None:
    from shipit.execute import PlatformResult

    index = "sha256:" + "cd" * 32
    arm = "sha256:" + "ef" * 32
    image = ImageResult(
        name="app",
        version="1.0.0",
        tags=("1.0.0",),
        status="ok",
        digest=index,
        platforms=(
            PlatformResult(platform="linux/amd64", digest=DIGEST),
            PlatformResult(platform="linux/arm64", digest=arm),
        ),
    )
    text = ci_outputs.markdown_summary(
        RunResult(version="1.0.0", images=(image,), status="success")
    )
    assert (
        f"Platforms of `app` (index `{index[:19]}`): linux/amd64 `{DIGEST[:19]}`,"
        f" linux/arm64 `{arm[:19]}`." in text
    )


def success() -> RunResult:
    image = ImageResult(
        name="app",
        version="1.0.0",
        tags=("1.0.0",),
        status="ok",
        targets=(
            TargetResult(
                registry="ghcr.io/acme",
                host="ghcr.io",
                repository="acme/app",
                refs=("ghcr.io/acme/app:1.0.0",),
                pushed=("ghcr.io/acme/app:1.0.0",),
                digest=DIGEST,
            ),
        ),
    )
    return RunResult(version="1.0.0", images=(image,), status="success")


# Each way a CI output's file can be unwritable, even for root: its folder is missing, a
# folder stands where the file goes, or the filesystem takes no new file (sysfs).
BROKEN = {
    "missing folder": (lambda tmp: tmp / "nowhere" / "file", "No such file or directory"),
    "a folder in its place": (lambda tmp: tmp / "taken", "Is a directory"),
    "no new files there": (lambda tmp: Path("/sys/shipit-test-output"), "Permission denied"),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
@pytest.mark.parametrize("variable", ["GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"])
def test_a_github_output_that_cannot_be_written_is_named(
    tmp_path: Path, variable: str, broken: str
) -> None:
    make, reason = BROKEN[broken]
    (tmp_path / "taken").mkdir()
    bad = make(tmp_path)
    other = "GITHUB_STEP_SUMMARY" if variable == "GITHUB_OUTPUT" else "GITHUB_OUTPUT"
    good = tmp_path / "good"
    env = {"GITHUB_ACTIONS": "true", variable: str(bad), other: str(good)}
    [failure] = ci_outputs.write(success(), env, tmp_path)
    assert (failure.path, failure.variable, failure.reason) == (str(bad), variable, reason)
    assert str(failure) == f"cannot write the CI output {bad} (from {variable}): {reason}"
    assert good.read_text(encoding="utf-8")  # the other output is still written
    assert not bad.is_file()


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_a_gitlab_dotenv_that_cannot_be_written_is_named(tmp_path: Path, broken: str) -> None:
    make, reason = BROKEN[broken]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "shipit.env").mkdir()
    project_dir = make(tmp_path).parent if broken != "a folder in its place" else tmp_path / "taken"
    env = {"GITLAB_CI": "true", "CI_PROJECT_DIR": str(project_dir)}
    [failure] = ci_outputs.write(success(), env, tmp_path)
    assert failure.path == str(project_dir / "shipit.env")
    assert (failure.variable, failure.reason) == ("CI_PROJECT_DIR", reason)


def test_without_ci_project_dir_the_dotenv_goes_to_the_directory_named_by_c(
    tmp_path: Path,
) -> None:
    assert ci_outputs.write(success(), {"GITLAB_CI": "true"}, tmp_path) == []
    assert (tmp_path / "shipit.env").read_text(encoding="utf-8").startswith("SHIPIT_VERSION=1.0.0")
    [failure] = ci_outputs.write(success(), {"GITLAB_CI": "true"}, tmp_path / "gone")
    assert failure.variable == "-C" and failure.reason == "No such file or directory"


def test_outside_ci_nothing_is_written(tmp_path: Path) -> None:
    env = {"GITHUB_OUTPUT": str(tmp_path / "o"), "CI_PROJECT_DIR": str(tmp_path)}
    assert ci_outputs.write(success(), env, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_the_report_is_written_with_a_note_and_the_status_of_the_run(tmp_path: Path) -> None:
    env = {"GITLAB_CI": "true", "CI_PROJECT_DIR": str(tmp_path / "missing")}
    report = tmp_path / "shipit-report.json"
    result, failures = app.leave_behind(success(), env, report=report, directory=tmp_path)
    expected = (
        f"cannot write the CI output {tmp_path / 'missing' / 'shipit.env'} (from CI_PROJECT_DIR):"
        " No such file or directory"
    )
    assert failures == (expected,)
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["status"] == "success" and result.status == "success"
    assert document["error"] == expected
    assert document["images"][0]["refs"][0]["pushed"] is True


def test_a_run_error_keeps_its_place_before_the_note(tmp_path: Path) -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "no" / "out")}
    report = tmp_path / "r.json"
    _, failures = app.leave_behind(
        result(error="push: quay.io refused"), env, report=report, directory=tmp_path
    )
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["status"] == "failed"
    assert document["error"] == f"push: quay.io refused; {failures[0]}"
    assert failures[0].startswith(f"cannot write the CI output {tmp_path / 'no' / 'out'}")


def test_a_report_that_cannot_be_written_is_a_failure_too(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    _, failures = app.leave_behind(success(), {}, report=tmp_path / "taken", directory=tmp_path)
    assert failures == (f"cannot write the report {tmp_path / 'taken'}: Is a directory",)
