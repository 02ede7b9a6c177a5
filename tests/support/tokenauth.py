"""A real distribution 2.8 with `auth: token`, and the token server of the tests' own.

The registry is the Debian `docker-registry` the other tests run, configured with
`auth: token: {realm, service, issuer, rootcertbundle}` (distribution's docs, "token" auth,
and registry/auth/token/accesscontroller.go at v2.8.3). The token server is ours: it answers
`GET /token?service=S&scope=S1&scope=S2` with basic auth the way Docker's token
specification describes (docs/spec/auth/token.md in distribution: the answer is
`{"token", "access_token", "expires_in", "issued_at"}`, and it grants the intersection of
what was asked for and what the account may do, never an error for asking too much).

What distribution 2.8 checks in a token (registry/auth/token/token.go, verified here):
- signed with ES256 by a key whose certificate is in `rootcertbundle`, named in the header
  by `kid`, the libtrust key ID of that key (base32 of the SHA-256 of the DER public key,
  first 30 bytes, unpadded, in 12 groups of 4 joined by `:`; libtrust's util.go keyIDEncode);
- `iss` equal to the issuer, `aud` a **string** equal to the service (2.8 refuses a list),
  `exp`/`nbf` with 60 s of leeway;
- `access`: a list of `{type, name, actions}`, which decides what each request may do; every
  DELETE (an upload's cancel too) needs the `delete` action (registry/handlers/app.go).

`gitlab=True` makes it answer as GitLab's does: realm `/jwt/auth`, service
`container_registry`, and, as older GitLab versions did, only the first `scope` parameter of a
request honoured (estesp/manifest-tool#53).

Every token request is recorded (account, scopes asked, actions granted), so a test can see
what a client asked for and how often.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "shipit-test-registry"
ISSUER = "shipit-test-issuer"
TOKEN_LIFETIME = 300


@dataclass(frozen=True)
class Account:
    """Who may log in, and which actions they get on every repository."""

    username: str
    password: str
    actions: frozenset[str]


@dataclass(frozen=True)
class Asked:
    """One token request: who asked, for which scopes, and what the token grants."""

    account: str | None
    scopes: tuple[str, ...]
    granted: tuple[tuple[str, tuple[str, ...]], ...]  # (repository, actions)
    agent: str = ""  # the client's User-Agent: shipit's own, or cosign's

    @property
    def scope_set(self) -> tuple[str, ...]:
        """The scopes asked for, one per entry, sorted: what a client caches a token by."""
        return tuple(sorted({s for entry in self.scopes for s in entry.split()}))


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key ID libtrust (and so distribution) gives a public key."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def parse_scopes(values: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(type, name, actions) of every scope, repeated or space-separated ("repository:a/b:pull,push")."""
    found = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                found.append((kind, name, tuple(a for a in actions.split(",") if a)))
    return found


@dataclass
class TokenServer:
    """The token service: an HTTP server on 127.0.0.1 in a thread of the test process."""

    accounts: Mapping[str, Account]
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    asked: list[Asked] = field(default_factory=list)
    lifetime: int = TOKEN_LIFETIME
    gitlab: bool = False  # realm /jwt/auth, service container_registry, the first scope only
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def realm(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{'/jwt/auth' if self.gitlab else '/token'}"

    @property
    def service(self) -> str:
        return "container_registry" if self.gitlab else SERVICE

    def write_bundle(self, path: Path) -> Path:
        """The certificate of the signing key, as the registry's `rootcertbundle`."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipit test token issuer")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=7))
            .sign(self.key, hashes.SHA256())
        )
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def token(
        self, account: Account | None, scopes: list[str], agent: str = ""
    ) -> tuple[str, Asked]:
        granted: list[tuple[str, tuple[str, ...]]] = []
        for kind, name, actions in parse_scopes(scopes):
            allowed = account.actions if account else frozenset()
            given = tuple(a for a in actions if a in allowed or (a == "*" and allowed))
            if kind == "repository":
                granted.append((name, given))
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": libtrust_key_id(self.key.public_key())}
        claims = {
            "iss": ISSUER,
            "sub": account.username if account else "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": [{"type": "repository", "name": n, "actions": list(a)} for n, a in granted],
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        asked = Asked(account.username if account else None, tuple(scopes), tuple(granted), agent)
        return f"{signing_input}.{_b64url(signature)}", asked

    def start(self) -> TokenServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="token-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests_by(self, username: str | None) -> list[Asked]:
        with self._lock:
            return [a for a in self.asked if a.account == username]

    def record(self, asked: Asked) -> None:
        with self._lock:
            self.asked.append(asked)

    def clear(self) -> None:
        with self._lock:
            self.asked.clear()


def _handler(tokens: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:  # quiet
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != urlsplit(tokens.realm).path:
                self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
                return
            query = parse_qsl(url.query, keep_blank_values=True)
            asked_for = [v for k, v in query if k == "scope"]
            # older GitLab honoured one scope parameter a request (manifest-tool#53)
            scopes = asked_for[:1] if tokens.gitlab else asked_for
            service = [v for k, v in query if k == "service"]
            if service and service[0] != tokens.service:
                self._answer(400, {"errors": [{"code": "UNSUPPORTED", "message": "service"}]})
                return
            account = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                found = tokens.accounts.get(user)
                if found is None or not secrets.compare_digest(found.password, password):
                    self._answer(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "authentication failed"}]},
                    )
                    return
                account = found
            token, asked = tokens.token(account, scopes, self.headers.get("User-Agent", ""))
            tokens.record(replace(asked, scopes=tuple(asked_for)))  # what the client asked
            issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {
                "token": token,
                "access_token": token,
                "expires_in": tokens.lifetime,
                "issued_at": issued,
            }
            self._answer(200, body)

        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def token_auth_config(tokens: TokenServer, bundle: Path) -> dict[str, object]:
    """The registry config's `auth:` for `tokens`."""
    return {
        "token": {
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": ISSUER,
            "rootcertbundle": str(bundle),
        }
    }


def accounts(*entries: tuple[str, str]) -> dict[str, Account]:
    """Accounts by name from (name, "pull,push,delete")."""
    return {
        name: Account(name, secrets.token_urlsafe(12), frozenset(actions.split(",")))
        for name, actions in entries
    }
