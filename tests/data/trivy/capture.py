"""Capture the Trivy samples in this folder from real runs (Trivy 0.76, a real dockerd).

    DOCKER_HOST=unix:///var/run/docker.sock .venv/bin/python -m tests.data.trivy.capture

Every sample is what `trivy image` (or `trivy convert`) wrote with the flags shipit uses
(`shipit.stages.scan.Trivy`), against small `FROM scratch` images built here and the tiny
offline database of tests/support/trivydb.py. The *.txt files are Trivy's stderr when it
fails. Nothing here reaches beyond this machine: the one download attempt goes to a closed
port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from shipit.spec import ScanPolicy
from shipit.stages.scan import Trivy
from tests.integration.test_scan import (
    AWS_FILE,
    CRITICAL_ID,
    HIGH_ID,
    advisories,
    debian_rootfs,
    vulnerabilities,
)
from tests.support.trivydb import write_trivy_db

HERE = Path(__file__).resolve().parent


TAGS = ("shipit-test/secret:1", "shipit-test/debian:1", "shipit-test/misc:1", "shipit-test/clean:1")


def build(client: docker.DockerClient, context: Path, tag: str) -> str:
    (context / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\n", encoding="utf-8")
    image, _ = client.images.build(path=str(context), tag=tag, rm=True)
    return str(image.id)


def trivy(policy: ScanPolicy, cache: Path) -> Trivy:
    env = dict(os.environ)
    env.pop("TRIVY_CACHE_DIR", None)
    return Trivy(binary=str(Path(sys.executable).parent / "trivy"), env=env, policy=policy,
                 cache_dir=cache)  # fmt: skip


def run(argv: list[str], out: Path | None = None, err: Path | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    if err is not None:
        err.write_text(done.stderr, encoding="utf-8")
    elif done.returncode != 0:
        raise SystemExit(done.stderr)
    if out is not None and not out.exists():
        raise SystemExit(f"no {out}")


def main() -> None:
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="trivy-capture-"))
    try:
        capture(client, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for tag in TAGS:
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(tag, force=True)


def capture(client: docker.DockerClient, work: Path) -> None:
    # images
    secret_ctx = work / "secret"
    (secret_ctx / "rootfs/app").mkdir(parents=True)
    (secret_ctx / "rootfs/app/config.env").write_text(AWS_FILE, encoding="utf-8")
    build(client, secret_ctx, "shipit-test/secret:1")
    vuln_ctx = work / "vuln"
    debian_rootfs(vuln_ctx / "rootfs")
    build(client, vuln_ctx, "shipit-test/debian:1")
    misc_ctx = work / "misc"
    debian_rootfs(misc_ctx / "rootfs")
    (misc_ctx / "rootfs/app").mkdir(parents=True)
    (misc_ctx / "rootfs/app/Dockerfile").write_text(
        "FROM alpine\nUSER root\nRUN apk add curl\n", encoding="utf-8"
    )
    doc = misc_ctx / "rootfs/usr/share/doc/libfoo1"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: foo\n\nFiles: *\nCopyright: 2020 Test\nLicense: GPL-3.0-only\n",
        encoding="utf-8",
    )
    build(client, misc_ctx, "shipit-test/misc:1")
    clean_ctx = work / "clean"
    (clean_ctx / "rootfs").mkdir(parents=True)
    (clean_ctx / "rootfs/hello.txt").write_text("hello\n", encoding="utf-8")
    build(client, clean_ctx, "shipit-test/clean:1")

    cache = work / "cache"
    write_trivy_db(
        cache,
        os_name="debian",
        os_version="12",
        advisories=advisories(),
        vulnerabilities=vulnerabilities(),
    )
    ignore = work / ".trivyignore"
    ignore.write_text(f"{HIGH_ID}\n", encoding="utf-8")

    def scan(name: str, image: str, **policy: object) -> Path:
        t = trivy(ScanPolicy(skip_db_update=True, **policy), cache)  # type: ignore[arg-type]
        out = HERE / name
        run(t.scan_argv(image, out), out)
        return out

    scan("secret.json", "shipit-test/secret:1", scanners=("secret",))
    vuln = scan("vuln.json", "shipit-test/debian:1", scanners=("vuln", "secret"))
    scan(
        "vuln-suppressed.json",
        "shipit-test/debian:1",
        scanners=("vuln", "secret"),
        ignorefile=ignore,
    )
    scan("misconfig.json", "shipit-test/misc:1", scanners=("misconfig",))
    scan("license.json", "shipit-test/misc:1", scanners=("license",))
    scan("clean.json", "shipit-test/clean:1", scanners=("vuln", "secret"))

    t = trivy(ScanPolicy(), cache)
    run(t.convert_argv(vuln, HERE / "vuln.sarif", "sarif", ""))

    # failures: Trivy's stderr
    empty = work / "empty-cache"
    no_db = trivy(ScanPolicy(scanners=("vuln",), skip_db_update=True), empty)
    run(no_db.scan_argv("shipit-test/debian:1", work / "x.json"), err=HERE / "err-no-db.txt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = trivy(
        ScanPolicy(scanners=("vuln",), db_repository=(f"127.0.0.1:{port}/trivy-db:2",)), empty
    )
    run(closed.scan_argv("shipit-test/debian:1", work / "x.json"),
        err=HERE / "err-download.txt")  # fmt: skip
    run(t.scan_argv("shipit-test/absent:1", work / "x.json"), err=HERE / "err-no-image.txt")
    print("captured into", HERE, "with", CRITICAL_ID, HIGH_ID)


if __name__ == "__main__":
    main()
