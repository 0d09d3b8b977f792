"""A signing key of the harness's own, its JWKS, and RS256 tokens signed with it.

Standard JWS compact serialisation done with `cryptography` alone, so the
tokens the benchmark sends do not depend on the JWT library agentgw verifies
them with.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_BITS = 2048
TOKEN_LIFETIME_S = 3600


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

    def jwks(self) -> str:
        """The public key as a JWKS document (JSON text)."""
        numbers = self.private_key.public_key().public_numbers()
        key = {
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "n": _b64_int(numbers.n),
            "e": _b64_int(numbers.e),
        }
        return json.dumps({"keys": [key]}, separators=(",", ":"))

    def token(
        self,
        *,
        issuer: str,
        audience: str,
        subject: str,
        groups: Sequence[str],
        lifetime_s: int = TOKEN_LIFETIME_S,
    ) -> str:
        """An RS256 token with `iss`, `aud`, `sub`, `groups`, `iat` and `exp`."""
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "groups": list(groups),
            "iat": now,
            "exp": now + lifetime_s,
        }
        signing_input = f"{_b64_json(header)}.{_b64_json(claims)}".encode()
        signature = self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _b64_int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))
