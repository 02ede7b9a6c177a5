"""Proving that signing can work: which Sigstore services cosign will contact, how they are
asked (real HTTP against small servers on 127.0.0.1), the proxy rules of a Go program, the
OIDC token, and the key check's command line and environment (with a fake `cosign` that
records its calls; tests/integration/test_sign_preflight.py runs the real one).
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shipit.errors import EXIT_USAGE, UsageError
from shipit.log import Console
from shipit.spec import SignPolicy
from shipit.stages import sign
from shipit.stages.sign import Signer, probes, services
from shipit.stages.sign.probes import Http, ProbeError
from shipit.stages.sign.services import Service

NOW = datetime(2026, 3, 1, tzinfo=UTC)
COSIGN = "/opt/cosign/bin/cosign"
KEY_PASSWORD = "key-password-5b1e"

# the shape of sigstore/root-signing targets/signing_config.v0.2.json (its public services)
PUBLIC_SIGNING_CONFIG: dict[str, Any] = {
    "mediaType": services.SIGNING_CONFIG_TYPE,
    "caUrls": [
        {"url": "https://fulcio.sigstore.dev", "majorApiVersion": 1,
         "validFor": {"start": "2022-04-13T20:06:15.000Z"}, "operator": "sigstore.dev"},
    ],
    "oidcUrls": [
        {"url": "https://oauth2.sigstore.dev/auth", "majorApiVersion": 1,
         "validFor": {"start": "2022-04-13T20:06:15.000Z"}, "operator": "sigstore.dev"},
    ],
    "rekorTlogUrls": [
        {"url": "https://log2025-1.rekor.sigstore.dev", "majorApiVersion": 2,
         "validFor": {"start": "2025-10-06T00:00:00Z"}, "operator": "sigstore.dev"},
        {"url": "https://rekor.sigstore.dev", "majorApiVersion": 1,
         "validFor": {"start": "2021-01-12T11:53:27.000Z"}, "operator": "sigstore.dev"},
    ],
    "tsaUrls": [
        {"url": "https://timestamp.sigstore.dev/api/v1/timestamp", "majorApiVersion": 1,
         "validFor": {"start": "2025-07-04T00:00:00Z"}, "operator": "sigstore.dev"},
    ],
    "rekorTlogConfig": {"selector": "ANY"},
    "tsaConfig": {"selector": "ANY"},
}  # fmt: skip


def key_signer(major: int = 3, key: str = "/keys/cosign.key") -> Signer:
    return Signer(mode="key", key=key, cosign=COSIGN, major=major)


def keyless_signer(major: int = 3) -> Signer:
    return Signer(mode="keyless", key=None, cosign=COSIGN, major=major)


def jwt(claims: Mapping[str, Any]) -> str:
    def part(data: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


# -- a small HTTP server on 127.0.0.1 --------------------------------------------------------------


@dataclass
class Served:
    """What the server answers per path, and every request it saw."""

    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    host: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def json(self, path: str, document: Any, status: int = 200) -> None:
        self.routes[path] = (status, json.dumps(document).encode())

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            served.seen.append((self.path, dict(self.headers.items())))
            status, body = served.routes.get(self.path.split("?")[0], (404, b"not here"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.host = f"127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound and not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def tuf_repository(served: Served, signing_config: Any, *, consistent: bool = True) -> None:
    """TUF metadata as a repository serves it: timestamp -> snapshot -> targets -> target."""
    digest = "ab" * 32
    served.json("/timestamp.json", {"signed": {"meta": {"snapshot.json": {"version": 7}}}})
    snapshot = {"signed": {"meta": {"targets.json": {"version": 12}}}}
    served.json("/7.snapshot.json" if consistent else "/snapshot.json", snapshot)
    targets = {
        "signed": {
            "targets": {"signing_config.v0.2.json": {"hashes": {"sha256": digest}, "length": 1}}
        }
    }
    served.json("/12.targets.json" if consistent else "/targets.json", targets)
    name = f"/targets/{digest}.signing_config.v0.2.json" if consistent else ""
    served.json(name or "/targets/signing_config.v0.2.json", signing_config)


def private_signing_config(url: str, *, tsa: bool = True) -> dict[str, Any]:
    valid = {"start": "2024-01-01T00:00:00Z"}
    config: dict[str, Any] = {
        "mediaType": services.SIGNING_CONFIG_TYPE,
        "rekorTlogUrls": [
            {"url": f"{url}/rekor", "majorApiVersion": 1, "validFor": valid, "operator": "us"}
        ],
        "rekorTlogConfig": {"selector": "ANY"},
        "caUrls": [
            {"url": f"{url}/fulcio", "majorApiVersion": 1, "validFor": valid, "operator": "us"}
        ],
    }
    if tsa:
        config["tsaUrls"] = [
            {"url": f"{url}/tsa/api/v1/timestamp", "majorApiVersion": 1, "validFor": valid}
        ]
        config["tsaConfig"] = {"selector": "ANY"}
    return config


# -- the proxy a Go program would take -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "proxy"),
    [
        ("https://rekor.sigstore.dev", {"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("https://rekor.sigstore.dev", {"https_proxy": "proxy:3128"}, "http://proxy:3128"),
        ("https://rekor.sigstore.dev", {"HTTP_PROXY": "http://proxy:3128"}, None),
        ("http://rekor.internal", {"HTTP_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("http://127.0.0.1:8080", {"HTTP_PROXY": "http://proxy:3128"}, None),  # loopback: direct
        ("http://localhost:8080", {"HTTP_PROXY": "http://proxy:3128"}, None),
        ("http://[::1]:8080", {"HTTP_PROXY": "http://proxy:3128"}, None),
        ("https://rekor.sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "*"}, None),
        ("https://rekor.sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "sigstore.dev"}, None),
        ("https://sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "sigstore.dev"}, None),
        ("https://sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": ".sigstore.dev"}, "http://p:1"),
        ("https://a.sigstore.dev", {"HTTPS_PROXY": "p:1", "no_proxy": "*.sigstore.dev"}, None),
        ("https://notsigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "sigstore.dev"}, "http://p:1"),
        ("https://rekor.sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "x, rekor.sigstore.dev:443"}, None),
        ("https://rekor.sigstore.dev", {"HTTPS_PROXY": "p:1", "NO_PROXY": "rekor.sigstore.dev:80"}, "http://p:1"),
        ("https://10.1.2.3", {"HTTPS_PROXY": "p:1", "NO_PROXY": "10.0.0.0/8"}, None),
        ("https://10.1.2.3", {"HTTPS_PROXY": "p:1", "NO_PROXY": "10.1.2.3"}, None),
        ("https://11.1.2.3", {"HTTPS_PROXY": "p:1", "NO_PROXY": "10.0.0.0/8"}, "http://p:1"),
    ],
)  # fmt: skip
def test_the_proxy_is_the_one_cosign_would_take(
    url: str, env: dict[str, str], proxy: str | None
) -> None:
    assert probes.proxy_for(url, env) == proxy


def test_a_proxy_is_shown_without_its_password() -> None:
    assert probes.shown_proxy("http://user:s3cret@proxy:3128") == "http://proxy:3128"


# -- what cosign will contact ---------------------------------------------------------------------


def test_cosign_3_with_the_log_takes_its_services_from_tuf() -> None:
    need = services.needs(key_signer(), SignPolicy(key="/k"), {"HOME": "/home/ci"}, now=NOW)
    assert need.tuf == services.TufRepo(
        mirror="https://tuf-repo-cdn.sigstore.dev", source="cosign's default"
    )
    assert (need.tuf_required, need.from_tuf, need.services, need.rekor_versions) == (
        True,
        True,
        (),
        (1, 2),
    )


@pytest.mark.parametrize(
    ("signer", "policy", "urls", "tuf"),
    [
        (key_signer(), SignPolicy(key="/k", tlog=False), [], None),
        (key_signer(), SignPolicy(key="/k", format="legacy"), [services.DEFAULT_REKOR], None),
        (key_signer(), SignPolicy(key="/k", rekor_url="https://r.in"), ["https://r.in"], None),
        (key_signer(2), SignPolicy(key="/k"), [services.DEFAULT_REKOR], None),
        (key_signer(2), SignPolicy(key="/k", tlog=False), [], None),
        # keyless without a signing config: cosign's default Fulcio, TUF for the trusted root
        (
            keyless_signer(),
            SignPolicy(format="legacy"),
            [services.DEFAULT_REKOR, services.DEFAULT_FULCIO],
            "warn",
        ),
        (
            keyless_signer(2),
            SignPolicy(),
            [services.DEFAULT_REKOR, services.DEFAULT_FULCIO],
            "required",
        ),
    ],
)
def test_without_a_signing_config_the_urls_are_cosigns_flags_and_defaults(
    signer: Signer, policy: SignPolicy, urls: list[str], tuf: str | None
) -> None:
    env = {"HOME": "/home/ci", "SIGSTORE_ID_TOKEN": "t"}
    need = services.needs(signer, policy, env, now=NOW)
    assert [s.url for s in need.services] == urls
    assert not need.from_tuf
    assert (None if need.tuf is None else "required" if need.tuf_required else "warn") == tuf


def test_a_signing_config_file_names_the_services(tmp_path: Path) -> None:
    config = tmp_path / "signing-config.json"
    config.write_text(json.dumps(PUBLIC_SIGNING_CONFIG))
    policy = SignPolicy(key="/k", signing_config=config)
    need = services.needs(key_signer(), policy, {"HOME": str(tmp_path)}, now=NOW)
    source = f"the signing config {config}"
    assert need.services == (
        Service(kind="rekor", url="https://log2025-1.rekor.sigstore.dev", api_version=2, source=source),
        Service(kind="tsa", url="https://timestamp.sigstore.dev/api/v1/timestamp", source=source),
    )  # fmt: skip
    assert need.tuf is not None and not need.tuf_required  # the trusted root: a warning only
    trusted = tmp_path / "trusted-root.json"
    trusted.write_text(json.dumps({"mediaType": services.TRUSTED_ROOT_TYPE}))
    policy = SignPolicy(signing_config=config, trusted_root=trusted)
    need = services.needs(keyless_signer(), policy, {"SIGSTORE_ID_TOKEN": "t"}, now=NOW)
    assert [s.kind for s in need.services] == ["rekor", "tsa", "fulcio"]
    assert need.tuf is None and need.token == "envvar"


def test_the_services_are_selected_as_sigstore_go_does() -> None:
    def urls(document: Mapping[str, Any], versions: tuple[int, ...] = (1, 2)) -> list[str]:
        found = services.config_services(
            document, source="x", keyless=True, rekor_versions=versions, now=NOW
        )
        return [s.url for s in found]

    assert urls(PUBLIC_SIGNING_CONFIG) == [
        "https://log2025-1.rekor.sigstore.dev",  # Rekor v2 first: the highest version
        "https://timestamp.sigstore.dev/api/v1/timestamp",
        "https://fulcio.sigstore.dev",
    ]
    assert urls(PUBLIC_SIGNING_CONFIG, versions=(1,))[0] == "https://rekor.sigstore.dev"
    before_v2 = datetime(2025, 1, 1, tzinfo=UTC)  # log2025-1 starts 2025-10-06
    found = services.config_services(
        PUBLIC_SIGNING_CONFIG, source="x", keyless=False, rekor_versions=(1, 2), now=before_v2
    )
    assert [s.url for s in found] == ["https://rekor.sigstore.dev"]  # no TSA before 2025-07-04
    two = {
        "rekorTlogUrls": [
            {"url": "https://a", "majorApiVersion": 1, "operator": "a",
             "validFor": {"start": "2024-01-01T00:00:00Z"}},
            {"url": "https://a-old", "majorApiVersion": 1, "operator": "a",
             "validFor": {"start": "2023-01-01T00:00:00Z"}},
            {"url": "https://b", "majorApiVersion": 1, "operator": "b",
             "validFor": {"start": "2023-06-01T00:00:00Z"}},
            {"url": "https://gone", "majorApiVersion": 1, "operator": "c",
             "validFor": {"start": "2020-01-01T00:00:00Z", "end": "2021-01-01T00:00:00Z"}},
        ],
        "caUrls": PUBLIC_SIGNING_CONFIG["caUrls"],
    }  # fmt: skip
    # ANY picks one at random among the newest of each operator: each must answer
    assert urls(two) == ["https://a", "https://b", "https://fulcio.sigstore.dev"]


@pytest.mark.parametrize(
    ("document", "policy_tlog", "keyless", "message"),
    [
        ({"mediaType": "application/json"}, True, False, "is not a Sigstore signing config"),
        ({**PUBLIC_SIGNING_CONFIG, "caUrls": []}, True, True, "names none"),
        (PUBLIC_SIGNING_CONFIG, False, False, "names a transparency log"),
    ],
)
def test_a_signing_config_that_cannot_work_is_a_usage_error(
    tmp_path: Path, document: Any, policy_tlog: bool, keyless: bool, message: str
) -> None:
    config = tmp_path / "sc.json"
    config.write_text(json.dumps(document))
    signer = keyless_signer() if keyless else key_signer()
    policy = SignPolicy(signing_config=config, tlog=policy_tlog)
    with pytest.raises(UsageError, match=message) as info:
        services.needs(signer, policy, {"SIGSTORE_ID_TOKEN": "t"}, now=NOW)
    assert str(config) in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


def test_a_trusted_root_that_is_none_is_a_usage_error(tmp_path: Path) -> None:
    trusted = tmp_path / "trusted-root.json"
    trusted.write_text("not json")
    with pytest.raises(UsageError, match=f"cannot read the trusted root {trusted}"):
        services.needs(key_signer(), SignPolicy(key="/k", trusted_root=trusted), {}, now=NOW)
    trusted.write_text(json.dumps(PUBLIC_SIGNING_CONFIG))  # a signing config, not a root
    policy = SignPolicy(key="/k", trusted_root=trusted, tlog=False)
    with pytest.raises(UsageError, match="is not a Sigstore trusted root") as info:
        services.needs(key_signer(), policy, {}, now=NOW)
    assert "cosign trusted-root create" in (info.value.hint or "")


def test_the_tuf_mirror_is_the_one_cosign_would_use(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert services.tuf_repo({"HOME": str(home)}).mirror == services.DEFAULT_TUF_MIRROR
    # `cosign initialize --mirror` leaves remote.json in the cache, and the root beside it
    cache = home / ".sigstore" / "root"
    cache.mkdir(parents=True)
    (cache / "remote.json").write_text(json.dumps({"mirror": "https://tuf.internal/prod"}))
    repo = services.tuf_repo({"HOME": str(home)})
    assert repo.mirror == "https://tuf.internal/prod"
    assert "remote.json" in repo.source and "cosign initialize" in repo.source
    assert repo.root_missing is not None and "tuf.internal-prod" in repo.root_missing
    (cache / "tuf.internal-prod").mkdir()
    (cache / "tuf.internal-prod" / "root.json").write_text("{}")
    assert services.tuf_repo({"HOME": str(home)}).root_missing is None
    # TUF_MIRROR wins, and wants TUF_ROOT_JSON (or a cached root) too
    env = {"HOME": str(home), "TUF_MIRROR": "http://127.0.0.1:9/", "TUF_ROOT": str(tmp_path)}
    repo = services.tuf_repo(env)
    assert (repo.mirror, repo.source) == ("http://127.0.0.1:9", "TUF_MIRROR")
    assert repo.root_missing is not None
    (tmp_path / "root.json").write_text("{}")
    env["TUF_ROOT_JSON"] = str(tmp_path / "root.json")
    assert services.tuf_repo(env).root_missing is None


# -- asking them ------------------------------------------------------------------------------------


def test_any_http_answer_below_500_is_an_answer(server: Served) -> None:
    http = Http({})
    try:
        probes.probe_service(http, Service(kind="rekor", url=server.url, source="x"))  # a 404
        server.routes["/checkpoint"] = (503, b"down")
        with pytest.raises(ProbeError, match=r"HTTP 503 for .*/checkpoint"):
            probes.probe_service(
                http, Service(kind="rekor", url=server.url, api_version=2, source="x")
            )
        probes.probe_service(http, Service(kind="tsa", url=f"{server.url}/tsa", source="x"))
        probes.probe_service(http, Service(kind="fulcio", url=server.url, source="x"))
    finally:
        http.close()
    assert server.paths() == [
        "/api/v1/log",
        "/checkpoint",
        "/tsa/certchain",
        "/api/v2/configuration",
    ]


def test_a_closed_port_and_a_dead_proxy_fail_fast(closed_port: int) -> None:
    http = Http({"HTTPS_PROXY": f"http://127.0.0.1:{closed_port}"})
    try:
        with pytest.raises(ProbeError, match="connection refused"):
            http.get(f"http://127.0.0.1:{closed_port}/api/v1/log")
        # not resolved nor sent anywhere: the proxy (a closed loopback port) is asked first
        with pytest.raises(
            ProbeError, match=rf"the proxy http://127.0.0.1:{closed_port} did not connect"
        ):
            http.get("https://rekor.sigstore.dev/api/v1/log")
    finally:
        http.close()


def test_requests_go_through_the_proxy_of_the_run_not_of_this_process(
    server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # this process's: not used
    http = Http({"HTTP_PROXY": server.url})
    try:
        http.get("http://rekor.internal.example/api/v1/log").close()
    finally:
        http.close()
    # a proxied plain-HTTP request names the whole URL: it reached the proxy, nothing else
    assert server.paths() == ["http://rekor.internal.example/api/v1/log"]


def test_the_tuf_walk_finds_the_signing_config(server: Served, tmp_path: Path) -> None:
    tuf_repository(server, private_signing_config("https://x"))
    repo = services.TufRepo(mirror=server.url, source="TUF_MIRROR")
    http = Http({})
    try:
        document = probes.tuf_signing_config(http, repo)
    finally:
        http.close()
    assert document == private_signing_config("https://x")
    assert server.paths() == [
        "/timestamp.json",
        "/7.snapshot.json",
        "/12.targets.json",
        "/targets/" + "ab" * 32 + ".signing_config.v0.2.json",
    ]


def test_the_tuf_walk_without_consistent_snapshots_and_from_a_folder(
    server: Served, tmp_path: Path
) -> None:
    tuf_repository(server, private_signing_config("https://y"), consistent=False)
    http = Http({})
    try:
        repo = services.TufRepo(mirror=server.url, source="x")
        assert probes.tuf_signing_config(http, repo) == private_signing_config("https://y")
        # the same files in a folder: a file:// mirror (air-gapped)
        for path, (_, body) in server.routes.items():
            target = tmp_path / "repo" / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        folder = services.TufRepo(mirror=f"file://{tmp_path / 'repo'}", source="x")
        assert probes.tuf_signing_config(http, folder) == private_signing_config("https://y")
    finally:
        http.close()


def test_a_tuf_repository_without_a_signing_config_cannot_serve_cosign_3(server: Served) -> None:
    tuf_repository(server, {})
    server.json("/12.targets.json", {"signed": {"targets": {"trusted_root.json": {}}}})
    http = Http({})
    try:
        repo = services.TufRepo(mirror=server.url, source="x")
        with pytest.raises(ProbeError, match=r"no signing_config\.v0\.2\.json"):
            probes.tuf_signing_config(http, repo)
        delegated = {"signed": {"targets": {}, "delegations": {"roles": [{"name": "r"}]}}}
        server.json("/12.targets.json", delegated)
        assert probes.tuf_signing_config(http, repo) is None  # a delegated role may hold it
        del server.routes["/timestamp.json"]
        with pytest.raises(ProbeError, match=r"no timestamp\.json .*TUF repository"):
            probes.tuf_signing_config(http, repo)
    finally:
        http.close()


# -- the OIDC token ---------------------------------------------------------------------------------


def test_the_github_runner_is_asked_for_a_sigstore_token(server: Served) -> None:
    token = jwt({"aud": "sigstore", "exp": time.time() + 600})
    server.json("/token", {"value": token})
    env = {
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{server.url}/token?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token-77ab",
    }
    http = Http(env)
    try:
        assert probes.github_token(http, env) == token
        server.routes["/token"] = (403, b"{}")
        with pytest.raises(ProbeError, match="HTTP 403"):
            probes.github_token(http, env)
    finally:
        http.close()
    path, headers = server.seen[0]
    assert path == "/token?api-version=2.0&audience=sigstore"  # as cosign asks for it
    assert headers["Authorization"] == "bearer request-token-77ab"


def test_a_token_that_cannot_be_used_is_named() -> None:
    now = time.time()
    assert probes.token_problem(jwt({"exp": now + 60}), now=now) is None
    assert "expired 60 s ago" in (probes.token_problem(jwt({"exp": now - 60}), now=now) or "")
    assert "not a JWT" in (probes.token_problem("just-a-string", now=now) or "")
    assert "not base64url" in (probes.token_problem("a.b@d.c", now=now) or "")
    assert probes.token_audience(jwt({"aud": ["sigstore", "x"]})) == ["sigstore", "x"]


# -- the key (a fake cosign records the command line and the environment) ----------------------------


def fake_cosign(folder: Path, *, stdout: str = "", stderr: str = "", code: int = 0) -> str:
    """A `cosign` that records each call and answers with `stdout`, `stderr` and `code`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "answer.json").write_text(json.dumps([stdout, stderr, code]))
    script = folder / "cosign"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "here = Path(__file__).parent\n"
        "with open(here / 'calls.jsonl', 'a') as out:\n"
        "    out.write(json.dumps({'argv': sys.argv, 'env': dict(os.environ)}) + '\\n')\n"
        "stdout, stderr, code = json.loads((here / 'answer.json').read_text())\n"
        "sys.stdout.write(stdout)\n"
        "sys.stderr.write(stderr)\n"
        "sys.exit(code)\n"
    )
    script.chmod(0o755)
    return str(script)


def calls(folder: Path) -> list[dict[str, Any]]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\nZmFrZQ==\n-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize(
    "key", ["/keys/cosign.key", "env://COSIGN_PRIVATE_KEY", "awskms://kms.example/alias/release"]
)
def test_the_key_is_opened_with_the_password_in_the_environment_only(
    tmp_path: Path, key: str
) -> None:
    cosign = fake_cosign(tmp_path, stdout=PUBLIC_KEY)
    env = {"PATH": os.defpath, "COSIGN_PASSWORD": KEY_PASSWORD, "COSIGN_PRIVATE_KEY": "pem"}
    sign.preflight.check_key_opens(cosign, key, env=env, secrets=[KEY_PASSWORD])
    [call] = calls(tmp_path)
    assert call["argv"] == [cosign, "public-key", "--key", key]
    assert call["env"]["COSIGN_PASSWORD"] == KEY_PASSWORD
    assert not any(KEY_PASSWORD in arg for arg in call["argv"])


@pytest.mark.parametrize(
    ("key", "env", "said", "message", "hint"),
    [
        ("/k", {"COSIGN_PASSWORD": "x"}, "decrypt: encrypted: decryption failed",
         "does not open with COSIGN_PASSWORD", "COSIGN_PASSWORD"),
        ("/k", {}, "inappropriate ioctl for device", "COSIGN_PASSWORD is not set",
         "COSIGN_PASSWORD"),
        ("/k", {"COSIGN_PASSWORD": "x"}, "invalid pem block", "is not a cosign private key",
         "cosign generate-key-pair"),
        ("gcpkms://projects/p/k", {}, "getting public key: permission denied",
         "could not read the KMS key gcpkms://projects/p/k", "KMS credentials"),
    ],
)  # fmt: skip
def test_a_key_that_does_not_open_says_what_to_change(
    tmp_path: Path, key: str, env: dict[str, str], said: str, message: str, hint: str
) -> None:
    cosign = fake_cosign(
        tmp_path, stderr=f"Error: {said}\nerror during command execution: x\n", code=1
    )
    with pytest.raises(UsageError, match=message) as info:
        sign.preflight.check_key_opens(cosign, key, env={"PATH": os.defpath, **env}, secrets=[])
    assert said in str(info.value)  # cosign's own words
    assert hint in (info.value.hint or "")
    assert info.value.exit_code == EXIT_USAGE


# -- the whole preflight ----------------------------------------------------------------------------


def test_signing_is_proven_once_per_way_of_signing(server: Served, tmp_path: Path) -> None:
    """A private Sigstore behind a TUF mirror: the walk finds its signing config, whose log and
    timestamp authority are asked; images signed the same way are proven once, and a key
    used several ways is opened once."""
    tuf_repository(server, private_signing_config(server.url))
    (tmp_path / "root.json").write_text("{}")
    cosign = fake_cosign(tmp_path / "bin", stdout=PUBLIC_KEY)
    env = {
        "PATH": os.defpath,
        "HOME": str(tmp_path),
        "COSIGN_PASSWORD": KEY_PASSWORD,
        "TUF_MIRROR": server.url,
        "TUF_ROOT_JSON": str(tmp_path / "root.json"),
    }
    signer = Signer(mode="key", key="/keys/cosign.key", cosign=cosign, major=3)
    policy = SignPolicy(key="/keys/cosign.key")
    stream = io.StringIO()
    offline = SignPolicy(key="/keys/cosign.key", tlog=False)
    pairs = [(signer, policy), (signer, policy), (signer, offline)]
    sign.prove_signing(pairs, env=env, console=Console(env, stream=stream))
    assert len(calls(tmp_path / "bin")) == 1  # the key is opened once
    assert server.paths()[-2:] == ["/rekor/api/v1/log", "/tsa/api/v1/timestamp/certchain"]
    output = stream.getvalue()
    assert "the signing key /keys/cosign.key opens" in output
    assert f"the transparency log (Rekor) at {server.url}/rekor" in output
    assert KEY_PASSWORD not in output

    server.routes["/rekor/api/v1/log"] = (502, b"bad gateway")
    with pytest.raises(UsageError, match=r"Rekor\) at .* did not answer: HTTP 502") as info:
        sign.prove_signing([(signer, policy)], env=env, console=Console(env, stream=io.StringIO()))
    assert f"the signing config of the TUF repository at {server.url} (TUF_MIRROR)" in str(
        info.value
    )
    assert "tlog: false" in (info.value.hint or "")


def test_keyless_needs_a_token_that_has_not_expired(server: Served, tmp_path: Path) -> None:
    tuf_repository(server, private_signing_config(server.url, tsa=False))
    (tmp_path / "root.json").write_text("{}")
    expired = jwt({"aud": "sigstore", "exp": time.time() - 3600})
    env = {
        "HOME": str(tmp_path),
        "TUF_MIRROR": server.url,
        "TUF_ROOT_JSON": str(tmp_path / "root.json"),
        "SIGSTORE_ID_TOKEN": expired,
    }
    stream = io.StringIO()
    with pytest.raises(UsageError, match=r"SIGSTORE_ID_TOKEN cannot be used .* expired") as info:
        sign.prove_signing(
            [(keyless_signer(), SignPolicy())], env=env, console=Console(env, stream=stream)
        )
    assert "id_tokens" in (info.value.hint or "")
    assert "/fulcio/api/v2/configuration" in server.paths()  # Fulcio was asked first
    assert expired not in stream.getvalue() + str(info.value)


def test_without_the_log_a_key_needs_no_service(tmp_path: Path, closed_port: int) -> None:
    cosign = fake_cosign(tmp_path, stdout=PUBLIC_KEY)
    env = {"PATH": os.defpath, "COSIGN_PASSWORD": KEY_PASSWORD}
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = f"http://127.0.0.1:{closed_port}"
    signer = Signer(mode="key", key="/k", cosign=cosign, major=3)
    stream = io.StringIO()
    sign.prove_signing(
        [(signer, SignPolicy(key="/k", tlog=False))], env=env, console=Console(env, stream=stream)
    )
    assert "answered" not in stream.getvalue()


def test_a_tuf_repository_that_does_not_answer_is_only_a_warning_where_cosign_warns(
    tmp_path: Path, closed_port: int
) -> None:
    """A signing config file and no trusted root: cosign 3 asks TUF for the trusted root but
    carries on without it ("Continuing with individual targets")."""
    config = tmp_path / "sc.json"
    config.write_text(json.dumps({"mediaType": services.SIGNING_CONFIG_TYPE}))
    cosign = fake_cosign(tmp_path / "bin", stdout=PUBLIC_KEY)
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "COSIGN_PASSWORD": KEY_PASSWORD}
    env["HTTPS_PROXY"] = f"http://127.0.0.1:{closed_port}"
    signer = Signer(mode="key", key="/k", cosign=cosign, major=3)
    stream = io.StringIO()
    policy = SignPolicy(key="/k", signing_config=config)
    sign.prove_signing([(signer, policy)], env=env, console=Console(env, stream=stream))
    assert "warning: cosign reads its trusted root from the TUF repository" in stream.getvalue()
    assert "sign.trusted_root" in stream.getvalue()
