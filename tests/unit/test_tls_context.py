"""The run's shared TLS contexts (shipit/registry/tls.py), against HTTPS servers on 127.0.0.1.

Each server is Python's own, wrapped in a certificate of a private CA made with openssl: what
is checked is what the client does (one context per trust setting, the certificate and the
host name still verified), not the server.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters

from shipit.registry import tls
from tests.support.services import make_tls_files


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: every GET is a new handshake

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _serve(folder: Path, names: str) -> Iterator[tuple[str, Path]]:
    ca, cert, key = make_tls_files(folder, names)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", ca
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server whose certificate names 127.0.0.1; its URL and its CA's file."""
    yield from _serve(tmp_path / "tls", "IP:127.0.0.1,DNS:localhost")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose certificate names only another host."""
    yield from _serve(tmp_path / "elsewhere", "DNS:elsewhere.invalid")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every certificate load from now on (what each new connection paid without tls.py),
    and the run's contexts forgotten, as at a run's start."""
    seen: list[str] = []
    for name in ("load_verify_locations", "load_default_certs"):
        original = getattr(ssl.SSLContext, name)

        def counted(self: ssl.SSLContext, *args: Any, _o: Any = original, _n: str = name,
                    **kwargs: Any) -> Any:  # fmt: skip
            seen.append(_n)
            return _o(self, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, name, counted)
    monkeypatch.setattr(tls, "_contexts", {})
    return seen


def _session(adapter: requests.adapters.HTTPAdapter | None = None) -> requests.Session:
    """A session that reads nothing from this machine's environment (no HTTPS_PROXY, no
    REQUESTS_CA_BUNDLE), with the shared-context adapter unless told."""
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", adapter or tls.SharedTLSAdapter(pool_maxsize=8))
    return session


def test_many_connections_of_several_sessions_load_the_ca_once(
    server: tuple[str, Path], loads: list[str]
) -> None:
    url, ca = server
    sessions = [_session() for _ in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda n: sessions[n % 3].get(url, verify=str(ca), timeout=10), range(18))
        )
    assert [a.status_code for a in answers] == [200] * 18
    assert loads == ["load_verify_locations"]
    assert list(tls._contexts) == [str(ca)]


def test_without_the_adapter_every_connection_loads_it_again(
    server: tuple[str, Path], loads: list[str]
) -> None:
    """What the adapter saves, shown on the same server: requests' own adapter."""
    url, ca = server
    session = _session(requests.adapters.HTTPAdapter())
    for _ in range(3):
        assert session.get(url, verify=str(ca), timeout=10).status_code == 200
    assert loads == ["load_verify_locations"] * 3


def test_a_certificate_of_another_ca_is_still_refused(
    server: tuple[str, Path], tmp_path: Path, loads: list[str]
) -> None:
    url, _ = server
    other_ca, _, _ = make_tls_files(tmp_path / "other")
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        _session().get(url, verify=str(other_ca), timeout=10)
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        _session().get(url, verify=True, timeout=10)  # requests' bundle: not this private CA


def test_the_host_name_is_still_checked(elsewhere: tuple[str, Path], loads: list[str]) -> None:
    url, ca = elsewhere
    with pytest.raises(requests.exceptions.SSLError, match="mismatch"):
        _session().get(url, verify=str(ca), timeout=10)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verifying_nothing_loads_nothing(server: tuple[str, Path], loads: list[str]) -> None:
    url, _ = server
    session = _session()
    for _ in range(3):
        assert session.get(url, verify=False, timeout=10).status_code == 200
    assert loads == []
    assert tls._contexts[tls._NO_CHECK].verify_mode == ssl.CERT_NONE


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_one_context_per_trust_setting(server: tuple[str, Path], loads: list[str]) -> None:
    url, ca = server
    session = _session()
    session.get(url, verify=str(ca), timeout=10)
    session.get(url, verify=False, timeout=10)
    session.get(url, verify=str(ca), timeout=10)
    assert tls.shared_context(str(ca)) is tls.shared_context(str(ca))
    assert tls.shared_context(str(ca)) is not tls.shared_context(False)
    assert tls.shared_context(str(ca)).verify_mode == ssl.CERT_REQUIRED
    assert tls.shared_context(str(ca)).check_hostname
    assert loads == ["load_verify_locations"]
