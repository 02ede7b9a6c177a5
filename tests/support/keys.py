"""cosign key pairs for the tests, made by the real `cosign generate-key-pair`."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import tool_path


@dataclass(frozen=True)
class KeyPair:
    private: Path  # cosign.key, encrypted with `password`
    public: Path  # cosign.pub
    password: str


def cosign_key_pair(folder: Path, password: str | None = None) -> KeyPair:
    """A fresh key pair in `folder`; a random password unless one is given."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = password if password is not None else "cosign-" + secrets.token_urlsafe(18)
    subprocess.run(
        [tool_path("cosign"), "generate-key-pair"],
        cwd=folder,
        env={"PATH": os.environ["PATH"], "COSIGN_PASSWORD": chosen, "HOME": str(folder)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return KeyPair(private=folder / "cosign.key", public=folder / "cosign.pub", password=chosen)
