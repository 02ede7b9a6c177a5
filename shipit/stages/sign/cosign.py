"""Which cosign: the binary on the run's PATH and its major version; and how it says why it
failed."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

from shipit import log, proc
from shipit.errors import StageError
from shipit.stages.sign.records import CosignTool

_log = log.get(__name__)

PROBE_TIMEOUT: Final = 30.0  # `cosign version`, `cosign sign --help`, `cosign public-key`
COSIGN_HINT: Final = (
    "install cosign 3 (https://github.com/sigstore/cosign/releases; in GitHub Actions"
    " sigstore/cosign-installer; on Debian the `cosign` package from sid) and put it on PATH,"
    " or turn signing off with `sign: false`"
)
_SEMVER_MAJOR = re.compile(r"v?(\d+)\.\d+")


def find_cosign(env: Mapping[str, str]) -> CosignTool:
    """The cosign on the environment's PATH and its major version.

    `cosign version --json` names the version in release builds; distribution builds (Debian)
    say `devel`, so then `cosign sign --help` tells: cosign 3 shows `--use-signing-config=true`
    and hides the deprecated `--new-bundle-format`; cosign 2.6 shows both as false; older
    cosign 2 has neither.
    """
    path = proc.find_tool("cosign", env, hint=COSIGN_HINT)
    version = proc.run([path, "version", "--json"], env=env, timeout=PROBE_TIMEOUT, check=False)
    major = major_from_version(version.stdout) if version.returncode == 0 else None
    if major is not None and major >= 3:
        return CosignTool(path=path, major=major, new_bundle_flag=True)
    probe = [path, "sign", "--new-bundle-format=true", "--help"]  # an unknown flag fails
    has_flag = proc.run(probe, env=env, timeout=PROBE_TIMEOUT, check=False).returncode == 0
    if major is None:
        usage = proc.run([path, "sign", "--help"], env=env, timeout=PROBE_TIMEOUT, check=False)
        if version.returncode != 0 and usage.returncode != 0:  # every cosign answers these
            said = (version.stderr or version.stdout).strip().splitlines()[-3:]
            raise StageError(
                "preflight",
                f"cosign at {path} does not work: `cosign version` exited with"
                f" {version.returncode}" + (": " + " / ".join(said) if said else ""),
                hint=COSIGN_HINT,
            )
        major = major_from_help(usage.stdout + usage.stderr, accepts_new_bundle_format=has_flag)
    _log.debug("cosign at %s is version %d", path, major)
    return CosignTool(path=path, major=major, new_bundle_flag=has_flag)


def major_from_version(text: str) -> int | None:
    """The major version in `cosign version --json` output, None for `devel` builds."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    version = data.get("gitVersion") if isinstance(data, dict) else None
    match = _SEMVER_MAJOR.match(version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


def major_from_help(usage: str, *, accepts_new_bundle_format: bool) -> int:
    """The major version told by the defaults `cosign sign --help` shows (see find_cosign)."""
    for flag in ("new-bundle-format", "use-signing-config"):
        default = _help_default(usage, flag)
        if default is not None:
            return 3 if default == "true" else 2
    return 3 if accepts_new_bundle_format else 2


def _help_default(usage: str, flag: str) -> str | None:
    """A boolean flag's default in help text: cosign's `--flag=true:`, cobra's `(default true)`."""
    cosign_style = re.search(rf"--{re.escape(flag)}=(true|false)\b", usage)
    if cosign_style:
        return cosign_style.group(1)
    line = re.search(rf"--{re.escape(flag)}\b[^\n]*", usage)
    if line is None:
        return None
    return "true" if "(default true)" in line.group(0) else "false"


def cosign_reason(exc: proc.CommandError, secrets: Sequence[str]) -> str:
    """cosign's own explanation of a failure, on one line and without secrets."""
    if exc.timed_out:
        return f"timed out after {exc.result.seconds:.0f} s"
    lines = [line.strip() for line in exc.result.stderr.splitlines() if line.strip()]
    prefixes = ("Error: ", "error during command execution: ")
    errors = [line.removeprefix(p) for p in prefixes for line in lines if line.startswith(p)]
    reason = errors[0] if errors else (lines[-1] if lines else f"exit {exc.result.returncode}")
    return proc.redact(reason, secrets)
