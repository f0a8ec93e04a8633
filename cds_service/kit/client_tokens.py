"""The CDS client's side of CDS Hooks authentication: key pairs, JWK Sets, and signed client JWTs.

Used by ``nxp2-cds keys generate`` and ``nxp2-cds call`` (an EHR simulator for integration teams) and by the
tests. A client token carries, per CDS Hooks 2.0: header ``alg`` (ES384 or RS384), ``kid``, ``typ: JWT`` and
optionally ``jku``; claims ``iss``, ``aud`` (the URL being invoked), ``exp``, ``iat``, ``jti`` and optionally
``tenant``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

Algorithm = Literal["ES384", "RS384"]
PRIVATE_KEY_FILE = "private-key.pem"
JWKS_FILE = "jwks.json"
CLIENT_FILE = "client.json"


@dataclass(frozen=True)
class ClientKey:
    """A CDS client's signing key and how its public half is published."""

    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    kid: str
    algorithm: Algorithm

    @classmethod
    def generate(cls, algorithm: Algorithm = "ES384", kid: str | None = None) -> ClientKey:
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if algorithm == "ES384":
            private_key = ec.generate_private_key(ec.SECP384R1())
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        return cls(private_key, kid or uuid.uuid4().hex, algorithm)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any] = (
            ECAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, ec.EllipticCurvePublicKey)
            else RSAAlgorithm.to_jwk(public, as_dict=True)
        )
        return jwk | {"kid": self.kid, "alg": self.algorithm, "use": "sig", "key_ops": ["verify"]}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def token(
        self,
        *,
        iss: str,
        aud: str | list[str],
        lifetime_seconds: int = 300,
        jku: str | None = None,
        tenant: str | None = None,
        now: float | None = None,
        jti: str | None = None,
        extra_claims: dict[str, Any] | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> str:
        """A signed client JWT for one call."""
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": iss,
            "aud": aud,
            "iat": issued,
            "exp": issued + lifetime_seconds,
            "jti": jti or str(uuid.uuid4()),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        claims.update(extra_claims or {})
        headers: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        if jku is not None:
            headers["jku"] = jku
        headers.update(extra_headers or {})
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers=headers)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, directory: Path, *, issuer: str | None = None) -> None:
        """Write ``private-key.pem`` (mode 600), ``jwks.json`` and ``client.json`` (kid, alg, iss) into
        ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / PRIVATE_KEY_FILE
        key_path.touch(mode=0o600, exist_ok=True)
        key_path.chmod(0o600)
        key_path.write_bytes(self.private_pem())
        (directory / JWKS_FILE).write_text(json.dumps(self.jwks(), indent=2) + "\n")
        client = {"kid": self.kid, "alg": self.algorithm, "iss": issuer}
        (directory / CLIENT_FILE).write_text(json.dumps(client, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> tuple[ClientKey, str | None]:
        """The key saved by :meth:`save`, and the issuer recorded with it."""
        client = json.loads((directory / CLIENT_FILE).read_text())
        private_key = serialization.load_pem_private_key((directory / PRIVATE_KEY_FILE).read_bytes(), password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{directory / PRIVATE_KEY_FILE}: not an EC or RSA private key")
        algorithm: Algorithm = "ES384" if client.get("alg") == "ES384" else "RS384"
        return cls(private_key, str(client["kid"]), algorithm), client.get("iss")
