"""A Docker token server issuing short-lived JWTs that distribution 2.8 verifies.

distribution's ``auth.token`` checks the JWT's signature with the ``x5c``
certificate in its header, and that certificate against ``rootcertbundle``; the
claims must carry the configured issuer, the service as audience, and an
``access`` list naming the repository and action.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port

ISSUER = "cacheproxy-test-issuer"
SERVICE = "cacheproxy-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenRequest:
    scope: str
    service: str
    authorization: str | None


@dataclass
class TokenServer:
    """Serve ``GET /token``; write the root bundle for the registry's config."""

    workdir: Path
    expires_in: int = 60
    users: dict[str, str] = field(default_factory=dict)  # empty: anonymous allowed
    host: str = "127.0.0.1"
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port(self.host)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cacheproxy test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rootcertbundle = self.workdir / "token-root.pem"
        self.rootcertbundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._runner: web.AppRunner | None = None

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth.token`` section of a distribution config."""
        return {
            "realm": self.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(self.rootcertbundle),
        }

    def issue(self, scope: str, subject: str = "") -> str:
        access = []
        for part in scope.split(" "):
            pieces = part.split(":")
            if len(pieces) >= 3:
                access.append(
                    {
                        "type": pieces[0],
                        "name": ":".join(pieces[1:-1]),
                        "actions": pieces[-1].split(","),
                    }
                )
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        cert_der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    async def _token(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        scope = request.query.get("scope", "")
        self.requests.append(TokenRequest(scope, request.query.get("service", ""), auth))
        subject = ""
        if self.users:
            if not auth or not auth.startswith("Basic "):
                return web.json_response({"details": "credentials required"}, status=401)
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != password:
                return web.json_response({"details": "bad credentials"}, status=401)
            subject = user
        token = self.issue(scope, subject)
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TokenServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
