"""Real images end to end: a multi-stage Python web app on a real Debian bookworm base
(tests/support/debian_base.py, served from a loopback registry), built by each engine.

The builder stage installs a Debian package with apt (gettext-base, for envsubst, which
renders the app's config) and makes a venv with two wheels (Jinja2 and MarkupSafe, from the
locked wheelhouse); the runtime stage installs tini with apt, adds a non-root user, copies
the venv, and declares `EXPOSE` and a Python `HEALTHCHECK`. apt works offline there: the
.deb files, with what the base lacks, are downloaded on the host beforehand and `COPY`ed in.

- engine sdk, once, everything: Trivy with a fixture database holding an advisory for tini's
  source package in `debian 12` blocks the release (exit 3, the error names it); a
  .trivyignore named in the spec lets it through; the CycloneDX SBOM is attested, the digest
  signed, both pushed to two registries; `cosign verify`, `skopeo inspect` and
  `crane validate` read what shipit pushed; the image, pulled from the second registry by
  digest, runs healthy, serves its page and runs as the non-root uid.
- engines buildx and buildah: build, push to two registries, pull, run, serve and become
  healthy (buildah builds Docker's image format, which keeps HEALTHCHECK).

Every address is 127.0.0.1. Containers started here are removed by their id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_buildah import registries_yaml
from tests.support.cli import run_shipit
from tests.support.debian_base import (
    BaseImage,
    base_image,
    debian_registries_conf,
    debs,
    serve_base,
)
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project
from tests.support.services import Dockerd, RegistryFactory, tool_path
from tests.support.services import Registry as RunningRegistry
from tests.support.trivydb import vulnerability, write_trivy_db
from tests.support.wheelhouse import locked_wheels

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

UID = 10001
PORT = 8080
ADVISORY = "CVE-2099-10001"  # a made-up id: only the fixture database knows it
TOOLS_PATH = os.pathsep.join(
    [str(Path(tool_path("cosign")).parent), str(Path(tool_path("trivy")).parent)]
)

# in Python: the base has neither curl nor wget
HEALTHCHECK_CMD = [
    "/opt/venv/bin/python",
    "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=2)",
]
DOCKERFILE = f"""\
ARG BASE
FROM ${{BASE}} AS builder
COPY debs/builder/ /tmp/debs/
# apt from local files: the .deb of gettext-base (envsubst) and nothing else needed
RUN apt-get install -y --no-install-recommends /tmp/debs/*.deb && rm -rf /tmp/debs
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir jinja2 \\
 && rm -rf /tmp/wheels
ARG GREETING=hello
COPY app/app.conf.in /tmp/app.conf.in
RUN GREETING="$GREETING" envsubst < /tmp/app.conf.in > /opt/app.conf

FROM ${{BASE}} AS runtime
COPY debs/runtime/ /tmp/debs/
RUN apt-get install -y --no-install-recommends /tmp/debs/*.deb && rm -rf /tmp/debs \\
 && useradd --system --uid {UID} --home-dir /srv/app --create-home app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/app.conf /etc/app/app.conf
COPY app/server.py /srv/app/server.py
USER {UID}
WORKDIR /srv/app
EXPOSE {PORT}
HEALTHCHECK --interval=1s --timeout=3s --retries=3 CMD {json.dumps(HEALTHCHECK_CMD)}
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/opt/venv/bin/python", "/srv/app/server.py"]
"""

SERVER = f"""\
import http.server
import os

import jinja2

GREETING = open("/etc/app/app.conf").read().strip()
PAGE = jinja2.Template("<p>{{{{ greeting }}}} from uid {{{{ uid }}}}</p>\\n")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\\n"
        else:
            body = PAGE.render(greeting=GREETING, uid=os.getuid()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("0.0.0.0", {PORT}), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return base_image("python")


@pytest.fixture(scope="module")
def base_ref(base: BaseImage, registry_factory: RegistryFactory) -> str:
    """The Python base in a loopback registry of its own."""
    return serve_base(base, registry_factory())


@pytest.fixture(scope="module")
def two(registry_factory: RegistryFactory) -> tuple[RunningRegistry, RunningRegistry]:
    """A plain registry and a TLS one with a private CA."""
    return registry_factory(), registry_factory(tls=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def app_files(base: BaseImage) -> dict[str, str | bytes]:
    return web_app_files(base)


def web_app_files(base: BaseImage) -> dict[str, str | bytes]:
    """The app's files beside its Dockerfile: the server, its config template, the .deb files
    of each stage and the two wheels (benchmarks/push_fanout.py --image debian builds it too)."""
    files: dict[str, str | bytes] = {
        "app/server.py": SERVER,
        "app/app.conf.in": "${GREETING} world\n",
    }
    for stage, packages in (("builder", ["gettext-base"]), ("runtime", ["tini"])):
        for deb in sorted(debs(base, packages).glob("*.deb")):
            files[f"debs/{stage}/{deb.name}"] = deb.read_bytes()
    wheels = locked_wheels(base.python_version())
    for pattern in ("jinja2-*.whl", "markupsafe-*.whl"):
        [wheel] = wheels.glob(pattern)
        files[f"wheels/{wheel.name}"] = wheel.read_bytes()
    return files


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def containers() -> Iterator[list[tuple[str, str]]]:
    """(container id, image reference) of each container a test starts: each container
    removed at the end by its id, then the reference the daemon pulled for it."""
    started: list[tuple[str, str]] = []
    yield started
    for cid, ref in started:
        docker("rm", "--force", "--volumes", cid, timeout=60)
        docker("image", "rm", ref, timeout=60)


def run_app(ref: str, containers: list[tuple[str, str]]) -> tuple[str, int]:
    """`docker run` the image (the daemon pulls it), published on a loopback port; the
    container id and that port."""
    done = docker("run", "--detach", "--publish", f"127.0.0.1::{PORT}", ref)
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    containers.append((cid, ref))
    port = docker("port", cid, f"{PORT}/tcp").stdout.strip().splitlines()[0].rpartition(":")[2]
    return cid, int(port)


def wait_health(cid: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "--format", "{{.State.Health.Status}}", cid).stdout.strip()
        if status in ("healthy", "unhealthy"):
            return status
        time.sleep(0.5)
    return status


def get(port: int, path: str = "/", timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            r.raise_for_status()
            return r.text
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def assert_runs_as_designed(ref: str, containers: list[tuple[str, str]], greeting: str) -> str:
    """The image, run on the daemon: serves its page as the non-root uid; its container id."""
    cid, port = run_app(ref, containers)
    assert get(port) == f"<p>{greeting} world from uid {UID}</p>"
    assert docker("exec", cid, "id", "-u").stdout.strip() == str(UID)
    # tini is PID 1, the app its child (the runtime stage's apt install really happened)
    assert docker("exec", cid, "cat", "/proc/1/comm").stdout.strip() == "tini"
    return cid


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{TOOLS_PATH}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        **extra,
    }


def test_a_debian_web_app_is_gated_signed_attested_pushed_and_runs_healthy(
    tmp_path: Path,
    dockerd: Dockerd,
    base: BaseImage,
    base_ref: str,
    app_files: dict[str, str | bytes],
    two: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    containers: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, installed = base_packages_of(app_files, "tini")
    cache = tmp_path / "trivy-cache"
    write_trivy_db(
        cache,
        os_name="debian",
        os_version="12",
        advisories={source: {ADVISORY: "0.19.0-99"}},  # fixed after the installed version
        vulnerabilities={ADVISORY: vulnerability("tini: a made-up flaw", "HIGH")},
    )
    namespace = f"web{os.urandom(3).hex()}"

    def scan(ignore: str) -> str:
        return (
            f"scan: {{fail_on: HIGH, scanners: [vuln, secret], cache_dir: {cache},"
            f" skip_db_update: true, sbom: cyclonedx{ignore}}}\n"
        )

    head = (
        f"version: 1\n{registries_yaml(two, namespace)}"
        f"image:\n  name: web\n  engine: sdk\n"
        f"  build_args: {{BASE: '{base_ref}', GREETING: bonjour}}\n"
        f"sign: {{key: {keys.private}, tlog: false, attest_sbom: true}}\n"
    )
    project = make_project(
        tmp_path / "project",
        head + scan(""),
        dockerfile=DOCKERFILE,
        files={**app_files, ".trivyignore.web": f"# accepted until tini 0.19.0-99\n{ADVISORY}\n"},
    )
    env = env_for(tmp_path, COSIGN_PASSWORD=keys.password)
    report = tmp_path / "report.json"

    code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 3, err
    # the gate's table names the advisory, the package and its installed and fixed versions
    [row] = [line for line in err.splitlines() if line.startswith(ADVISORY)]
    assert row.split()[:5] == [ADVISORY, "tini", installed, "0.19.0-99", "HIGH"]
    assert "error: image web: 1 finding at or above HIGH; nothing was pushed" in err
    [image] = json.loads(report.read_text())["images"]
    assert image["scan"]["blocked"] is True
    assert not any(r["pushed"] for r in image["refs"])

    (project / "shipit.yml").write_text(
        head + scan(", ignorefile: .trivyignore.web"), encoding="utf-8"
    )
    code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 0, err
    [image] = json.loads(report.read_text())["images"]
    assert image["scan"]["blocked"] is False
    digest = image["digest"]
    assert all(r["pushed"] and r["signed"] and r["digest"] == digest for r in image["refs"])
    assert {r["registry"] for r in image["refs"]} == {f"{r.host}/{namespace}" for r in two}

    plain, tls = two
    plain_ref = f"{plain.host}/{namespace}/web@{digest}"
    cosign = [tool_path("cosign")]
    insecure = ["--insecure-ignore-tlog", "--allow-http-registry", "--allow-insecure-registry"]
    for argv in (
        ["verify", "--key", str(keys.public), *insecure, plain_ref],
        ["verify-attestation", "--type", "cyclonedx", "--key", str(keys.public), *insecure,
         plain_ref],
    ):  # fmt: skip
        done = subprocess.run(cosign + argv, capture_output=True, text=True, timeout=120,
                              check=False, env=env_for(tmp_path))  # fmt: skip
        assert done.returncode == 0, done.stderr

    # other tools read what shipit pushed: skopeo (containers/image) and crane (go-containerregistry)
    inspected = subprocess.run(
        [tool_path("skopeo"), "inspect", "--tls-verify=false", f"docker://{plain_ref}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr
    inspect = json.loads(inspected.stdout)
    assert inspect["Digest"] == digest and inspect["Os"] == "linux"
    assert inspect["Labels"]["org.opencontainers.image.title"] == "web"
    assert len(inspect["Layers"]) >= 6  # base, apt, user, venv, config, app
    validated = subprocess.run(
        [tool_path("crane"), "validate", "--insecure", f"--remote={plain_ref}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "PASS" in validated.stdout

    config = image_config(f"{tls.host}/{namespace}/web@{digest}", tls)
    assert config["User"] == str(UID)
    assert f"{PORT}/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"

    # pulled from the TLS registry by digest (the daemon trusts loopback), run, healthy
    cid = assert_runs_as_designed(f"{tls.host}/{namespace}/web@{digest}", containers, "bonjour")
    assert wait_health(cid) == "healthy"


def base_packages_of(files: dict[str, str | bytes], package: str) -> tuple[str, str]:
    """(source package, version) of a package the app installs, from its .deb's control."""
    [name] = [n for n in files if n.rsplit("/", 1)[-1].startswith(f"{package}_")]
    fields = deb_fields(files[name])
    return fields.get("Source", package).split(" ")[0], fields["Version"]


def deb_fields(deb: str | bytes) -> dict[str, str]:
    assert isinstance(deb, bytes)
    done = subprocess.run(
        ["dpkg-deb", "--field", "/dev/stdin"], input=deb, capture_output=True, timeout=30,
        check=True,
    )  # fmt: skip
    fields = {}
    for line in done.stdout.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields[key] = value.strip()
    return fields


def image_config(ref: str, reg: RunningRegistry) -> dict[str, Any]:
    done = subprocess.run(
        [tool_path("crane"), "config", ref],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **({"SSL_CERT_FILE": str(reg.ca_file)} if reg.ca_file else {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["config"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("engine", ["buildx", "buildah"])
def test_each_engine_builds_the_app_and_what_it_pushed_runs(
    engine: str,
    tmp_path: Path,
    dockerd: Dockerd,
    base_ref: str,
    app_files: dict[str, str | bytes],
    two: tuple[RunningRegistry, RunningRegistry],
    containers: list[tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"{engine}{os.urandom(3).hex()}"
    spec = (
        f"version: 1\n{registries_yaml(two, namespace)}"
        f"image:\n  name: web\n  engine: {engine}\n"
        f"  build_args: {{BASE: '{base_ref}', GREETING: hola}}\n"
        "scan: false\nsign: false\n"
    )
    project = make_project(tmp_path / "project", spec, dockerfile=DOCKERFILE, files=app_files)
    env = env_for(tmp_path)
    if engine == "buildah":
        # buildah pulls the base over plain HTTP only from a registry marked insecure
        conf = debian_registries_conf(tmp_path / "registries.conf", base_ref.partition("/")[0])
        storage = tmp_path / "containers"
        (tmp_path / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{storage / "graph"}"\n'
            f'runroot = "{storage / "run"}"\n',
            encoding="utf-8",
        )
        env |= {
            "CONTAINERS_REGISTRIES_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(tmp_path / "storage.conf"),
        }
    report = tmp_path / "report.json"
    try:
        code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
        assert code == 0, err
    finally:
        if engine == "buildah":
            remove_storage(storage, env)
    [image] = json.loads(report.read_text())["images"]
    digest = image["digest"]
    assert all(r["pushed"] and r["digest"] == digest for r in image["refs"])
    plain, _ = two
    ref = f"{plain.host}/{namespace}/web@{digest}"
    config = image_config(ref, plain)
    assert config["User"] == str(UID) and f"{PORT}/tcp" in config["ExposedPorts"]
    cid = assert_runs_as_designed(ref, containers, "hola")
    # buildah too: the engine builds Docker's format, whose config keeps the health check
    # (with OCI's, buildah dropped HEALTHCHECK: found by this test)
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "HEALTHCHECK is not supported" not in err
    assert wait_health(cid) == "healthy"


def remove_storage(storage: Path, env: dict[str, str]) -> None:
    """The test's own containers-storage gone: buildah's containers and images, then any
    overlay mount left below it, then the folder (as tests/integration/test_buildah.py does)."""
    subprocess.run(["buildah", "rm", "--all"], env={**os.environ, **env},
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    subprocess.run(["buildah", "rmi", "--all", "--force"], env={**os.environ, **env},
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if Path(line.split()[4]).is_relative_to(storage)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(storage, ignore_errors=True)
