"""One TLS context per trust setting for the whole run, shared by every HTTPS connection.

What `requests` (2.34) and `urllib3` (2.x) do without it: `HTTPAdapter.cert_verify` gives the
connection pool the CA bundle's path (certifi's, REQUESTS_CA_BUNDLE's, or a registry's CA file),
and urllib3's `_ssl_wrap_socket_and_match_hostname` makes a new `SSLContext` for every new
connection and loads that bundle into it (`load_verify_locations`), or the system's
certificates (`load_default_certs`) when it verifies nothing. Loading certifi's bundle takes
15 to 20 ms of CPU each time (measured here, Python 3.11), under the GIL: a push of a few
layers to three HTTPS registries opens a connection per parallel upload per registry, and
preflight's probe of a plain-HTTP registry pays it once per host for its first (https) try.

`SharedTLSAdapter` hands urllib3 a context made once per trust setting (verify with a bundle,
or verify nothing) and keeps the pool's CA path off the connection, so nothing is loaded
again; urllib3 still sets the context's verify mode and checks the host name as before.
A client certificate (`cert`) keeps requests' own per-connection path.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
from urllib3.util.ssl_ import create_urllib3_context

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs  # types-requests' names

_contexts: dict[str, ssl.SSLContext] = {}
_lock = threading.Lock()
_NO_CHECK = "\0verify nothing"  # a key no path can be


def shared_context(verify: bool | str) -> ssl.SSLContext:
    """The run's context for `verify`: True (requests' CA bundle), a bundle's path or a
    folder of certificates, or False (no certificate checked, nothing loaded)."""
    if verify is True:
        verify = requests.adapters.DEFAULT_CA_BUNDLE_PATH
    key = _NO_CHECK if verify is False else str(verify)
    with _lock:
        context = _contexts.get(key)
        if context is None:
            if verify is False:
                context = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
            else:
                context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
                if os.path.isdir(key):
                    context.load_verify_locations(capath=key)
                else:
                    context.load_verify_locations(cafile=key)
            _contexts[key] = context
        return context


class SharedTLSAdapter(requests.adapters.HTTPAdapter):
    """An `HTTPAdapter` whose HTTPS pools use `shared_context` (see the module)."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        if host["scheme"] == "https" and cert is None:
            pool.pop("ca_certs", None)
            pool.pop("ca_cert_dir", None)
            pool["ssl_context"] = shared_context(verify)
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        # `conn` is urllib3's pool; the context reaches its connections through `conn_kw`
        if getattr(conn, "conn_kw", {}).get("ssl_context") in _contexts.values():
            conn.ca_certs = None  # loaded into the shared context already
            conn.ca_cert_dir = None
