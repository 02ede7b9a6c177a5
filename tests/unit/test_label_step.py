"""The SDK engine's labels as one LABEL step (dockerfile.with_label_step, sdk's
_labels_in_one_step): at the end of the stage built, written only where it is written for
sure; the labels go the usual way otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipit.docker_api import BuildRequest
from shipit.stages.build.dockerfile import parse_instructions, with_label_step
from shipit.stages.build.sdk import _labels_in_one_step

LABELS = {"org.opencontainers.image.version": "1.2.3+g1", "org.example.url": "https://x/y?a=b"}
STEP = 'LABEL "org.opencontainers.image.version"="1.2.3+g1" "org.example.url"="https://x/y?a=b"'
MULTI = (
    "# escape=\\\n"
    "FROM --platform=$BUILDPLATFORM golang AS Build\n"
    "RUN <<EOF\necho one\nFROM not-a-stage\nEOF\n"
    "\n# the runtime\n"
    "FROM build as final\nCOPY --from=build /a /a\n"
)


def test_the_step_ends_the_last_stage() -> None:
    changed = with_label_step(MULTI, LABELS, None)
    assert changed == MULTI + STEP + "\n"
    assert with_label_step("FROM x", LABELS, None) == "FROM x\n" + STEP + "\n"


def test_the_step_ends_the_target_stage_before_the_next_from_not_inside_a_heredoc() -> None:
    changed = with_label_step(MULTI, LABELS, "BUILD")
    assert changed is not None
    lines = changed.splitlines()
    assert lines.index(STEP) == lines.index("FROM build as final") - 1
    assert lines[: lines.index("EOF") + 1] == MULTI.splitlines()[: lines.index("EOF") + 1]
    words = [i.word for i in parse_instructions(changed)]
    assert words == ["FROM", "RUN", "LABEL", "FROM", "COPY"]


@pytest.mark.parametrize(
    "labels",
    [
        {"a": 'say "hi"'},  # a quote
        {"a": "$HOME"},  # LABEL expands variables
        {"a": "back\\slash"},
        {"a": "tick`"},
        {"a": "two\nlines"},
        {},
    ],
)
def test_a_label_that_is_not_plain_is_not_written(labels: dict[str, str]) -> None:
    assert with_label_step(MULTI, {**labels, "b": "c"} if labels else {}, None) is None


def test_an_unknown_target_or_a_continued_last_line_is_not_written() -> None:
    assert with_label_step(MULTI, LABELS, "nope") is None
    assert with_label_step("FROM x\nRUN a \\", LABELS, None) is None


def request(tmp_path: Path, labels: dict[str, str], dockerfile: str = "Dockerfile") -> BuildRequest:
    (tmp_path / "Dockerfile").write_text(MULTI)
    return BuildRequest(context=tmp_path, dockerfile=dockerfile, tag="x:1", labels=labels)


def test_the_request_sends_the_changed_dockerfile_and_no_labels(tmp_path: Path) -> None:
    sent = _labels_in_one_step(request(tmp_path, LABELS), MULTI)
    assert sent.labels == {}
    assert sent.dockerfile_text == MULTI + STEP + "\n"


def test_one_label_or_an_unwritable_one_goes_the_usual_way(tmp_path: Path) -> None:
    one = request(tmp_path, {"a": "b"})
    assert _labels_in_one_step(one, MULTI) is one  # one step either way
    quoted = request(tmp_path, {"a": '"', "b": "c"})
    assert _labels_in_one_step(quoted, MULTI) is quoted
