"""JWT bearer authentication with no I/O: key sets, a verifier, a token cache.

How this works: ``Verifier.verify`` takes the request's ``Authorization``
header values and returns ``Claims`` or a ``Failure`` with a short reason; it
never raises. python-jose 3.5.0 accepts too much by default (no ``exp``, any
``iss``, ``exp`` as a string, unknown ``crit`` headers, any key of a set for
any algorithm, recursion on deep JSON), so the token is taken apart here
first and jose only sees tokens that already passed these steps, in order:

1. exactly one ``Authorization`` header, scheme ``Bearer`` (any case), a
   token of at most ``max_token_bytes``;
2. the cache: a token verified before is answered from it until its ``exp``;
3. three base64url parts (five parts is a JWE); header and payload are JSON
   objects, nested at most 32 deep (counted without recursion, before
   ``json.loads``), with no duplicate names and no NaN or Infinity;
4. the header: no ``alg: none``, no ``crit``, ``jku``, ``x5u``, ``jwk``, a
   string ``kid``;
5. the provider whose ``issuer`` equals the unverified ``iss``, then the one
   key with that ``kid`` in its key set, then the token's ``alg`` among the
   algorithms that key allows;
6. claim types and values, on the injectable clock: ``exp`` required, times
   are finite numbers, ``aud`` matches one of the audiences when given;
7. the signature: RS256/384/512 and ES256/384 through ``jose.jwt.decode``
   with that one key, that one algorithm and every ``require_*`` option set
   (jose checks the claims once more, on the wall clock); PS256/384/512 and
   EdDSA, which jose does not implement, with ``cryptography`` directly.

Cheap claim checks run before the signature check, so an expired token
costs no RSA operation; a forged token is refused either way.

A key's algorithms come from its ``alg`` when present (it must fit the key
type and curve). Without ``alg``, as in agentgateway, an RSA key allows the
RSA signature family (RS256/384/512, PS256/384/512; Entra ID publishes its
keys without ``alg``), an EC key the algorithm of its curve, an Ed25519 key
EdDSA. HMAC keys are refused, so an HS256 token signed with a public key as
the secret never finds an allowed algorithm.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jose import jwk as jose_jwk
from jose import jwt as jose_jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

logger = logging.getLogger(__name__)

Mode = Literal["strict", "optional", "permissive"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey

MAX_JSON_DEPTH = 32
DEFAULT_LEEWAY = 30
DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_CACHE_SIZE = 10_000

NO_TOKEN = "no bearer token found"
UNKNOWN_KEY = "unknown key id"
MULTIPLE_HEADERS = "multiple authorization headers"

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM = {"P-256": "ES256", "P-384": "ES384"}
_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_JOSE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384"})
_PSS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 8192
_MAX_TIME = 2**53

_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class JwksError(ValueError):
    """A JWKS document is not a JSON object with a ``keys`` list.

    Single unusable keys do not raise: they are skipped (``KeySet.skipped``).
    """


@attrs.frozen
class SkippedKey:
    """A JWKS entry that was not loaded, and why."""

    index: int
    kid: str | None
    reason: str


@attrs.frozen
class _Key:
    kid: str
    algorithms: frozenset[str]
    public_key: PublicKey
    jose_keys: Mapping[str, Any]


@attrs.frozen(repr=False)
class KeySet:
    """The signing keys of one issuer, by ``kid``. Build it with ``from_jwks``.

    ``KeySet()`` is the empty set: every token then fails with
    ``unknown key id``, which is how a provider whose JWKS cannot be had
    fails closed.
    """

    _keys: Mapping[str, _Key] = attrs.field(factory=dict, alias="keys")
    skipped: tuple[SkippedKey, ...] = ()

    @classmethod
    def from_jwks(cls, document: str | bytes | Mapping[str, Any]) -> KeySet:
        """Load the usable keys of a JWKS (RFC 7517) document.

        Each key needs a ``kid``; keys with ``use`` other than ``sig``, with
        ``key_ops`` lacking ``verify``, HMAC (``oct``) keys, unsupported key
        types or curves, an ``alg`` that does not fit the key, RSA moduli
        outside 2048..8192 bits, invalid key material and repeated ``kid``
        values (the first wins) are skipped and listed in ``skipped``.

        Args:
            document: the JWKS as JSON text or as an already parsed object.

        Returns:
            The key set.

        Raises:
            JwksError: the document is not JSON, too deeply nested, or not an
                object with a ``keys`` list.
        """
        if isinstance(document, str | bytes):
            try:
                text = document.decode() if isinstance(document, bytes) else document
                parsed = _loads_json(text)
            except ValueError as exc:
                raise JwksError(f"invalid JWKS: {exc}") from None
        else:
            parsed = document
        if not isinstance(parsed, Mapping) or not isinstance(parsed.get("keys"), list):
            raise JwksError("invalid JWKS: expected an object with a 'keys' list")
        keys: dict[str, _Key] = {}
        skipped: list[SkippedKey] = []
        for index, entry in enumerate(parsed["keys"]):
            kid = entry.get("kid") if isinstance(entry, Mapping) else None
            kid = kid if isinstance(kid, str) and kid else None
            if kid is not None and kid in keys:
                loaded: _Key | str = "duplicate kid"
            else:
                loaded = _load_key(entry, kid)
            if isinstance(loaded, _Key):
                keys[loaded.kid] = loaded
            else:
                skipped.append(SkippedKey(index, kid, loaded))
        return cls(keys=MappingProxyType(keys), skipped=tuple(skipped))

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids loaded, in JWKS order."""
        return tuple(self._keys)

    def algorithms(self, kid: str) -> frozenset[str]:
        """The algorithms the key ``kid`` allows; empty for an unknown kid."""
        key = self._keys.get(kid)
        return key.algorithms if key is not None else frozenset()

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<KeySet kids={self.kids!r} skipped={len(self.skipped)}>"

    def _get(self, kid: str) -> _Key | None:
        return self._keys.get(kid)


def _load_key(entry: object, kid: str | None) -> _Key | str:
    if not isinstance(entry, Mapping):
        return "not a JSON object"
    if kid is None:
        return "missing kid"
    use = entry.get("use")
    if use is not None and use != "sig":
        return f"use is {use!r}, not 'sig'"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not include 'verify'"
    alg = entry.get("alg")
    if alg is not None and not isinstance(alg, str):
        return "alg is not a string"
    kty = entry.get("kty")
    try:
        if kty == "RSA":
            public_key: PublicKey = _rsa_key(entry)
            allowed = RSA_ALGORITHMS
        elif kty == "EC":
            crv = entry.get("crv")
            if crv not in _EC_CURVES:
                return f"unsupported EC curve {crv!r} (supported: P-256, P-384)"
            public_key = ec.EllipticCurvePublicNumbers(
                _b64_int(entry, "x"), _b64_int(entry, "y"), _EC_CURVES[crv]
            ).public_key()
            allowed = frozenset({_EC_ALGORITHM[crv]})
        elif kty == "OKP":
            crv = entry.get("crv")
            if crv != "Ed25519":
                return f"unsupported OKP curve {crv!r} (supported: Ed25519)"
            public_key = Ed25519PublicKey.from_public_bytes(_b64_field(entry, "x"))
            allowed = frozenset({"EdDSA"})
        elif kty == "oct":
            return "HMAC (oct) keys are refused"
        else:
            return f"unsupported kty {kty!r} (supported: RSA, EC, OKP)"
    except (ValueError, TypeError) as exc:
        return f"invalid {kty} key: {exc}"
    if alg is not None:
        if alg not in allowed:
            return f"alg {alg!r} does not fit this {kty} key"
        allowed = frozenset({alg})
    jose_keys = {a: jose_jwk.construct(public_key, a) for a in allowed & _JOSE_ALGORITHMS}
    return _Key(kid, allowed, public_key, MappingProxyType(jose_keys))


def _rsa_key(entry: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = _b64_int(entry, "n")
    if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
        raise ValueError(f"modulus of {n.bit_length()} bits (allowed: 2048 to 8192)")
    return rsa.RSAPublicNumbers(_b64_int(entry, "e"), n).public_key()


def _b64_field(entry: Mapping[str, Any], name: str) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing {name!r}")
    try:
        return _b64decode(value)
    except ValueError:
        raise ValueError(f"{name!r} is not base64url") from None


def _b64_int(entry: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_b64_field(entry, name), "big")


def _b64decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _is_shallow(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member name")
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_json(text: str) -> Any:
    if not _is_shallow(text):
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} deep")
    return json.loads(text, object_pairs_hook=_unique_names, parse_constant=_no_constants)


def _json_object(segment: str) -> dict[str, Any] | None:
    try:
        value = _loads_json(_b64decode(segment).decode("utf-8"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@attrs.frozen
class Provider:
    """One trusted issuer.

    Attributes:
        issuer: the ``iss`` a token must carry, compared exactly.
        audiences: when non-empty, the token's ``aud`` must contain one of
            them; ``None`` or empty, as in agentgateway, skips the check.
        keys: the issuer's signing keys.
    """

    issuer: str
    audiences: tuple[str, ...] | None
    keys: KeySet


@attrs.frozen
class Claims:
    """A verified token.

    Attributes:
        payload: every claim, read-only (shared with the cache).
        sub: the ``sub`` claim, if any.
        iss: the ``iss`` claim, equal to ``provider.issuer``.
        provider: the provider whose key verified the token.
    """

    payload: Mapping[str, Any]
    sub: str | None
    iss: str
    provider: Provider = attrs.field(repr=lambda p: repr(p.issuer))


@attrs.frozen
class Failure:
    """A token that was missing or refused.

    Attributes:
        reason: a short fixed text for the response and the access log. It
            never contains the token.
        refresh_issuer: set with ``unknown key id``: the issuer whose key set
            lacks the token's ``kid``. Refreshing that issuer's JWKS early
            may help (key rotation); the caller limits how often.
    """

    reason: str
    refresh_issuer: str | None = None

    @property
    def is_missing_token(self) -> bool:
        return self.reason == NO_TOKEN


@attrs.frozen
class Allow:
    """Let the request through; ``claims`` is ``None`` when unauthenticated."""

    claims: Claims | None


@attrs.frozen
class Deny:
    """Refuse the request with 401, ``authentication failure: <reason>``."""

    reason: str


def decide(mode: Mode, result: Claims | Failure) -> Allow | Deny:
    """Apply a ``jwtAuth`` mode to a verification result.

    ``strict``: no token or a bad token is denied. ``optional`` (agentgateway's
    default): no token is allowed without claims, a bad token is denied.
    ``permissive``: never denies; claims only when the token is valid.

    Args:
        mode: the policy's mode.
        result: what ``Verifier.verify`` returned.

    Returns:
        ``Allow`` (with claims when the token was valid) or ``Deny``.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in ("strict", "optional", "permissive"):
        raise ValueError(f"unknown jwtAuth mode {mode!r}")
    if isinstance(result, Claims):
        return Allow(result)
    if mode == "permissive" or (mode == "optional" and result.is_missing_token):
        return Allow(None)
    return Deny(result.reason)


@attrs.frozen
class VerifierStatistics:
    """A snapshot of the token cache for metrics; ``generation`` counts key changes."""

    hits: int
    misses: int
    size: int
    capacity: int
    generation: int


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < _MAX_TIME
    return isinstance(value, float) and math.isfinite(value)


def _providers(value: Iterable[Provider]) -> tuple[Provider, ...]:
    return tuple(value)


@attrs.define(eq=False)
class Verifier:
    """Verifies bearer tokens against one or more providers, with a cache.

    Args:
        providers: the trusted issuers; a token is checked by the one whose
            ``issuer`` equals its ``iss``.
        leeway: seconds of clock skew allowed for ``exp`` and ``nbf``.
        max_token_bytes: longer tokens are refused before any parsing.
        cache_size: how many verified tokens to remember; 0 turns the cache
            off.
        now: the clock, seconds since the epoch.
    """

    _providers: tuple[Provider, ...] = attrs.field(converter=_providers, alias="providers")
    leeway: float = attrs.field(default=DEFAULT_LEEWAY, kw_only=True)
    max_token_bytes: int = attrs.field(default=DEFAULT_MAX_TOKEN_BYTES, kw_only=True)
    cache_size: int = attrs.field(default=DEFAULT_CACHE_SIZE, kw_only=True)
    now: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    _cache: OrderedDict[str, tuple[Claims, float]] = attrs.field(init=False, factory=OrderedDict)
    _hits: int = attrs.field(init=False, default=0)
    _misses: int = attrs.field(init=False, default=0)
    _generation: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.leeway < 0 or self.max_token_bytes <= 0 or self.cache_size < 0:
            raise ValueError("leeway and cache_size must be >= 0, max_token_bytes > 0")

    @property
    def providers(self) -> tuple[Provider, ...]:
        return self._providers

    def verify(self, authorization_header_values: Sequence[bytes]) -> Claims | Failure:
        """Verify the bearer token of one request.

        Args:
            authorization_header_values: the values of every
                ``Authorization`` header of the request, in order.

        Returns:
            ``Claims`` for a valid token, else a ``Failure``; this never
            raises for any input.
        """
        try:
            return self._verify(authorization_header_values)
        except Exception as exc:
            logger.warning("unexpected %s while verifying a token", type(exc).__name__)
            return Failure("malformed token")

    def replace_keys(self, issuer: str, keys: KeySet) -> None:
        """Install a new key set for ``issuer`` and forget every cached token.

        Raises:
            KeyError: no provider has this issuer.
        """
        if not any(p.issuer == issuer for p in self._providers):
            raise KeyError(issuer)
        self._providers = tuple(
            attrs.evolve(p, keys=keys) if p.issuer == issuer else p for p in self._providers
        )
        self._cache.clear()
        self._generation += 1

    def statistics(self) -> VerifierStatistics:
        return VerifierStatistics(
            hits=self._hits,
            misses=self._misses,
            size=len(self._cache),
            capacity=self.cache_size,
            generation=self._generation,
        )

    def __repr__(self) -> str:
        issuers = [p.issuer for p in self._providers]
        return f"<Verifier issuers={issuers!r} cached={len(self._cache)}/{self.cache_size}>"

    def _verify(self, values: Sequence[bytes]) -> Claims | Failure:
        token = _bearer_token(values)
        if isinstance(token, Failure):
            return token
        if len(token) > self.max_token_bytes:
            return Failure("token too large")
        now = self.now()
        cached = self._cached(token, now)
        if cached is not None:
            return cached
        result = self._verify_token(token, now)
        if isinstance(result, Claims) and self.cache_size:
            self._remember(token, result, now)
        return result

    def _cached(self, token: str, now: float) -> Claims | None:
        entry = self._cache.get(token)
        if entry is not None:
            claims, exp = entry
            if now < exp:
                self._cache.move_to_end(token)
                self._hits += 1
                return claims
            del self._cache[token]
        self._misses += 1
        return None

    def _remember(self, token: str, claims: Claims, now: float) -> None:
        exp = float(claims.payload["exp"])
        if now >= exp:
            return
        self._cache[token] = (claims, exp)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _verify_token(self, token: str, now: float) -> Claims | Failure:
        if token.count(".") == 4:
            return Failure("encrypted tokens (JWE) are not supported")
        if not _TOKEN.fullmatch(token):
            return Failure("malformed token")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64)
        if header is None:
            return Failure("malformed token")
        if "enc" in header:
            return Failure("encrypted tokens (JWE) are not supported")
        alg = header.get("alg")
        if not isinstance(alg, str):
            return Failure("malformed token")
        if alg.lower() == "none":
            return Failure("algorithm not allowed")
        if "crit" in header:
            return Failure("unsupported crit header")
        if header.keys() & {"jku", "x5u", "jwk"}:
            return Failure("jku/x5u/jwk headers are not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            return Failure("missing key id")
        payload = _json_object(payload_b64)
        if payload is None:
            return Failure("malformed token")

        iss = payload.get("iss")
        if iss is None:
            return Failure("missing iss")
        candidates = [p for p in self._providers if p.issuer == iss]
        if not candidates:
            return Failure("invalid issuer")
        found = next(((p, k) for p in candidates if (k := p.keys._get(kid)) is not None), None)
        if found is None:
            return Failure(UNKNOWN_KEY, refresh_issuer=candidates[0].issuer)
        provider, key = found
        if alg not in key.algorithms:
            return Failure("algorithm not allowed")

        failure = self._check_claims(payload, now)
        if failure is not None:
            return failure
        audience = _match_audience(provider, payload.get("aud"))
        if isinstance(audience, Failure):
            return audience

        if alg in _JOSE_ALGORITHMS:
            failure = self._jose_decode(token, key, alg, provider, audience)
        else:
            failure = _verify_directly(key, alg, token, signature_b64)
        if failure is not None:
            return failure
        sub = payload.get("sub")
        return Claims(MappingProxyType(payload), sub, provider.issuer, provider)

    def _check_claims(self, payload: Mapping[str, Any], now: float) -> Failure | None:
        if "exp" not in payload:
            return Failure("missing exp")
        for name in ("exp", "nbf", "iat"):
            if name in payload and not _is_number(payload[name]):
                return Failure(f"invalid {name} claim")
        for name in ("sub", "jti"):
            if name in payload and not isinstance(payload[name], str):
                return Failure(f"invalid {name} claim")
        if now >= payload["exp"] + self.leeway:
            return Failure("token expired")
        if "nbf" in payload and now + self.leeway < payload["nbf"]:
            return Failure("token not yet valid")
        return None

    def _jose_decode(
        self, token: str, key: _Key, alg: str, provider: Provider, audience: str | None
    ) -> Failure | None:
        has_aud = audience is not None
        options = {
            "verify_signature": True,
            "verify_aud": has_aud,
            # Time is checked once, by ``_check_claims`` on the verifier's own
            # clock; jose would check it again on the wall clock.
            "verify_iat": False,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iss": True,
            "verify_sub": True,
            "verify_jti": True,
            # at_hash binds an OIDC ID token to an access token we never see.
            "verify_at_hash": False,
            "require_aud": has_aud,
            "require_iat": False,
            # jose turns require_x into verify_x; presence of exp is checked
            # by ``_check_claims`` (and its value on our clock).
            "require_exp": False,
            "require_nbf": False,
            "require_iss": True,
            "require_sub": False,
            "require_jti": False,
            "require_at_hash": False,
            "leeway": self.leeway,
        }
        try:
            jose_jwt.decode(
                token,
                key.jose_keys[alg],
                algorithms=[alg],
                issuer=provider.issuer,
                audience=audience,
                options=options,
            )
        except ExpiredSignatureError:
            return Failure("token expired")
        except JWTClaimsError:
            return Failure("invalid claims")
        except JWTError:
            return Failure("invalid signature")
        return None


def _match_audience(provider: Provider, aud: object) -> str | Failure | None:
    if aud is None:
        names: list[str] = []
    elif isinstance(aud, str):
        names = [aud]
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        names = aud
    else:
        return Failure("invalid aud claim")
    if not provider.audiences:
        return None
    if not names:
        return Failure("missing aud")
    matched = next((a for a in provider.audiences if a in names), None)
    return Failure("invalid audience") if matched is None else matched


def _verify_directly(key: _Key, alg: str, token: str, signature_b64: str) -> Failure | None:
    signing_input = token[: token.rindex(".")].encode("ascii")
    signature = _b64decode(signature_b64)
    public_key = key.public_key
    try:
        if alg == "EdDSA" and isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, signing_input)
        elif alg in _PSS_HASHES and isinstance(public_key, rsa.RSAPublicKey):
            digest = _PSS_HASHES[alg]()
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            public_key.verify(signature, signing_input, pss, digest)
        else:
            return Failure("algorithm not allowed")
    except InvalidSignature:
        return Failure("invalid signature")
    return None


def _bearer_token(values: Sequence[bytes]) -> str | Failure:
    if not values:
        return Failure(NO_TOKEN)
    if len(values) > 1:
        return Failure(MULTIPLE_HEADERS)
    value = bytes(values[0]).decode("latin-1").strip(" \t")
    scheme, _, rest = value.partition(" ")
    token = rest.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        return Failure(NO_TOKEN)
    return token
