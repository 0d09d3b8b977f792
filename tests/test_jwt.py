"""The JWT verifier (agentgw.policy.jwt): keys and tokens made here, no I/O."""

from __future__ import annotations

import base64
import hmac
import json
import time
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from jose import jwt as jose_jwt

from agentgw.policy.jwt import (
    Allow,
    Claims,
    Deny,
    Failure,
    JwksError,
    KeySet,
    Provider,
    Verifier,
    decide,
)

ISSUER = "https://idp.example"
AUDIENCE = "mcp-gateway"
# python-jose checks exp/nbf on the wall clock as well, so the test clock
# starts at the real time and only moves forward.
START = float(int(time.time()))

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = Ed25519PrivateKey.generate()
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def rsa_jwk(kid: str, key: rsa.RSAPrivateKey = RSA_KEY, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": b64_int(numbers.n), "e": b64_int(numbers.e), **extra}


def ec_jwk(kid: str, key: ec.EllipticCurvePrivateKey = EC_KEY, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {256: "P-256", 384: "P-384"}[key.curve.key_size]
    return {
        "kty": "EC",
        "kid": kid,
        "crv": crv,
        "x": b64(numbers.x.to_bytes(size, "big")),
        "y": b64(numbers.y.to_bytes(size, "big")),
        **extra,
    }


def ed_jwk(kid: str, **extra: Any) -> dict[str, Any]:
    raw = ED_KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(raw), **extra}


JWKS = {
    "keys": [
        rsa_jwk("rsa", alg="RS256", use="sig"),
        rsa_jwk("rsa-any"),
        ec_jwk("ec"),
        ec_jwk("ec384", EC384_KEY),
        ed_jwk("ed"),
    ]
}
KEYS = KeySet.from_jwks(json.dumps(JWKS))

HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def signature(alg: str, key: Any, data: bytes) -> bytes:
    if alg == "EdDSA":
        return bytes(key.sign(data))
    digest = HASHES[alg[2:]]
    if alg.startswith("RS"):
        return bytes(key.sign(data, padding.PKCS1v15(), digest))
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return bytes(key.sign(data, pss, digest))
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": START,
        "exp": START + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def raw_token(header: bytes | str, payload: bytes | str, sig: bytes = b"x") -> str:
    def part(x: bytes | str) -> str:
        return b64(x.encode() if isinstance(x, str) else x)

    return f"{part(header)}.{part(payload)}.{b64(sig)}"


def token(
    payload: dict[str, Any] | None = None,
    *,
    alg: str = "RS256",
    kid: str | None = "rsa",
    key: Any = RSA_KEY,
    **header_extra: Any,
) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", **header_extra}
    if kid is not None:
        header["kid"] = kid
    body = claims() if payload is None else payload
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(signature(alg, key, signing_input.encode()))}"


def bearer(tok: str, scheme: str = "Bearer") -> list[bytes]:
    return [f"{scheme} {tok}".encode()]


@attrs.define
class Clock:
    t: float = START

    def __call__(self) -> float:
        return self.t


def verifier(
    audiences: tuple[str, ...] | None = (AUDIENCE,), keys: KeySet = KEYS, **kwargs: Any
) -> Verifier:
    kwargs.setdefault("now", Clock())
    return Verifier([Provider(ISSUER, audiences, keys)], **kwargs)


def check(tok: str, **kwargs: Any) -> Claims | Failure:
    return verifier(**kwargs).verify(bearer(tok))


def refused(tok: str, **kwargs: Any) -> str:
    result = check(tok, **kwargs)
    assert isinstance(result, Failure), result
    assert tok not in result.reason
    return result.reason


def accepted(tok: str, **kwargs: Any) -> Claims:
    result = check(tok, **kwargs)
    assert isinstance(result, Claims), result
    return result


# -- the Authorization header ------------------------------------------------


def test_valid_rs256_token() -> None:
    c = accepted(token())
    assert (c.sub, c.iss, c.provider.issuer) == ("alice", ISSUER, ISSUER)
    assert c.payload["aud"] == AUDIENCE


def test_missing_header() -> None:
    assert verifier().verify([]) == Failure("no bearer token found")
    assert Failure("no bearer token found").is_missing_token


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert isinstance(verifier().verify(bearer(token(), scheme)), Claims)


@pytest.mark.parametrize(
    "value", [b"Basic YWxpY2U6cHc=", b"Token abc", b"Bearer", b"Bearer   ", b""]
)
def test_other_schemes_are_no_bearer_token(value: bytes) -> None:
    assert verifier().verify([value]) == Failure("no bearer token found")


def test_two_authorization_headers() -> None:
    tok = token()
    assert verifier().verify([*bearer(tok), *bearer(tok)]) == Failure(
        "multiple authorization headers"
    )


def test_non_ascii_token_is_malformed() -> None:
    assert verifier().verify(["Bearer é.é.é".encode()]) == Failure("malformed token")


# -- time --------------------------------------------------------------------


def test_expired() -> None:
    assert refused(token(claims(exp=START - 31))) == "token expired"


def test_expired_within_leeway_passes() -> None:
    accepted(token(claims(exp=START - 10)))


def test_leeway_is_configurable() -> None:
    assert refused(token(claims(exp=START - 10)), leeway=0) == "token expired"


def test_not_yet_valid() -> None:
    assert refused(token(claims(nbf=START + 120))) == "token not yet valid"


def test_not_yet_valid_within_leeway_passes() -> None:
    accepted(token(claims(nbf=START + 10)))


def test_missing_exp() -> None:
    assert refused(token(claims(exp=None))) == "missing exp"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", str(int(START + 300))),
        ("exp", True),
        ("exp", None),
        ("exp", [START + 300]),
        ("exp", 10**400),
        ("nbf", "0"),
        ("iat", "0"),
        ("sub", 42),
        ("jti", 7),
        ("aud", 1),
        ("aud", [AUDIENCE, 2]),
    ],
)
def test_claim_types_are_checked(claim: str, value: Any) -> None:
    payload = claims()
    payload[claim] = value
    assert refused(token(payload)) == f"invalid {claim} claim"


def test_float_times_pass() -> None:
    accepted(token(claims(exp=START + 300.5, nbf=START - 0.5, iat=START - 0.25)))


@pytest.mark.parametrize("literal", ["1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_exp_is_refused(literal: str) -> None:
    payload = json.dumps(claims()).replace(str(START + 300), literal)
    assert literal in payload
    header = json.dumps({"alg": "RS256", "kid": "rsa"})
    reason = refused(raw_token(header, payload))
    assert reason in {"malformed token", "invalid exp claim"}


# -- issuer and audience -----------------------------------------------------


def test_wrong_issuer() -> None:
    assert refused(token(claims(iss="https://evil.example"))) == "invalid issuer"


def test_missing_issuer() -> None:
    assert refused(token(claims(iss=None))) == "missing iss"


def test_wrong_audience() -> None:
    assert refused(token(claims(aud="someone-else"))) == "invalid audience"


def test_audience_list_with_one_match_passes() -> None:
    accepted(token(claims(aud=["a", AUDIENCE])))
    accepted(token(claims(aud="b")), audiences=("a", "b"))


def test_no_aud_when_audiences_required() -> None:
    assert refused(token(claims(aud=None))) == "missing aud"
    assert refused(token(claims(aud=[]))) == "missing aud"


@pytest.mark.parametrize("audiences", [None, ()])
def test_no_audiences_configured_skips_the_check(audiences: tuple[str, ...] | None) -> None:
    accepted(token(claims(aud=None)), audiences=audiences)
    accepted(token(claims(aud="anything")), audiences=audiences)


def test_providers_are_picked_by_issuer() -> None:
    other = Provider(
        "https://other.example", None, KeySet.from_jwks({"keys": [ec_jwk("other-ec")]})
    )
    v = Verifier([Provider(ISSUER, (AUDIENCE,), KEYS), other], now=Clock())
    mine = v.verify(bearer(token()))
    assert isinstance(mine, Claims) and mine.provider.issuer == ISSUER
    theirs = v.verify(
        bearer(token(claims(iss="https://other.example"), alg="ES256", kid="other-ec", key=EC_KEY))
    )
    assert isinstance(theirs, Claims) and theirs.provider is other
    # A key of one issuer does not verify tokens that claim another issuer.
    crossed = token(claims(iss="https://other.example"))
    assert v.verify(bearer(crossed)) == Failure(
        "unknown key id", refresh_issuer="https://other.example"
    )


# -- keys and algorithms -----------------------------------------------------


def test_unknown_kid_asks_for_a_refresh() -> None:
    result = check(token(kid="rotated"))
    assert result == Failure("unknown key id", refresh_issuer=ISSUER)


def test_missing_kid() -> None:
    assert refused(token(kid=None)) == "missing key id"


def test_kid_path_traversal_is_just_an_unknown_kid() -> None:
    assert refused(token(kid="../../etc/passwd")) == "unknown key id"
    assert refused(token(kid="RSA")) == "unknown key id"


def test_kid_is_compared_exactly() -> None:
    keys = KeySet.from_jwks({"keys": [rsa_jwk("../../etc/passwd")]})
    accepted(token(kid="../../etc/passwd"), keys=keys)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(alg: str) -> None:
    header = json.dumps({"alg": alg, "kid": "rsa"})
    tok = raw_token(header, json.dumps(claims()), b"")
    assert refused(tok) == "algorithm not allowed"


def test_hs256_signed_with_the_rsa_public_key_as_secret() -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(pem, f"{header}.{body}".encode(), "sha256").digest()
    assert refused(f"{header}.{body}.{b64(mac)}") == "algorithm not allowed"
    assert refused(f"{header}.{body}.{b64(mac)}", audiences=None) == "algorithm not allowed"


def test_rs512_token_against_rs256_key() -> None:
    assert refused(token(alg="RS512")) == "algorithm not allowed"


def test_es256_token_against_rsa_key() -> None:
    assert refused(token(alg="ES256", key=EC_KEY)) == "algorithm not allowed"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_key_without_alg_allows_the_rsa_family(alg: str) -> None:
    assert KEYS.algorithms("rsa-any") == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    accepted(token(alg=alg, kid="rsa-any"))


def test_ps256_signed_with_another_key_is_refused() -> None:
    assert refused(token(alg="PS256", kid="rsa-any", key=OTHER_RSA_KEY)) == "invalid signature"


def test_ec_token_passes() -> None:
    assert KEYS.algorithms("ec") == {"ES256"}
    accepted(token(alg="ES256", kid="ec", key=EC_KEY))
    accepted(token(alg="ES384", kid="ec384", key=EC384_KEY))
    assert refused(token(alg="ES384", kid="ec", key=EC384_KEY)) == "algorithm not allowed"


def test_eddsa_token_passes() -> None:
    assert KEYS.algorithms("ed") == {"EdDSA"}
    accepted(token(alg="EdDSA", kid="ed", key=ED_KEY))


def test_token_signed_by_python_jose_passes() -> None:
    pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    accepted(jose_jwt.encode(claims(), pem.decode(), algorithm="RS256", headers={"kid": "rsa"}))


@pytest.mark.parametrize(
    ("alg", "kid", "key"),
    [("RS256", "rsa", RSA_KEY), ("ES256", "ec", EC_KEY), ("EdDSA", "ed", ED_KEY)],
)
def test_tampered_payload(alg: str, kid: str, key: Any) -> None:
    header, _, sig = token(alg=alg, kid=kid, key=key).split(".")
    forged = b64(json.dumps(claims(sub="root")).encode())
    assert refused(f"{header}.{forged}.{sig}") == "invalid signature"


def test_signature_of_another_key() -> None:
    assert refused(token(key=OTHER_RSA_KEY)) == "invalid signature"


def test_at_hash_claim_does_not_break_verification() -> None:
    accepted(token(claims(at_hash="abc")))


# -- headers -----------------------------------------------------------------


def test_crit_header() -> None:
    assert refused(token(crit=["exp"])) == "unsupported crit header"
    assert refused(token(crit=["b64"], b64=False)) == "unsupported crit header"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.example/jwks.json"),
        ("x5u", "https://evil.example/cert.pem"),
        ("jwk", {"kty": "oct", "k": "c2VjcmV0"}),
    ],
)
def test_key_carrying_headers(name: str, value: Any) -> None:
    assert refused(token(**{name: value})) == "jku/x5u/jwk headers are not allowed"


def test_header_nested_1100_deep(caplog: pytest.LogCaptureFixture) -> None:
    deep = '{"alg":"RS256","kid":"rsa","x":' + "[" * 1100 + "]" * 1100 + "}"
    assert refused(raw_token(deep, json.dumps(claims()))) == "malformed token"
    assert not caplog.records  # refused by the depth check, not a caught RecursionError


def test_payload_nested_1100_deep(caplog: pytest.LogCaptureFixture) -> None:
    header = json.dumps({"alg": "RS256", "kid": "rsa"})
    deep = json.dumps(claims())[:-1] + ', "x": ' + "[" * 1100 + "]" * 1100 + "}"
    assert refused(raw_token(header, deep)) == "malformed token"
    assert not caplog.records


def test_nesting_within_the_limit_and_brackets_in_strings_pass() -> None:
    nested: Any = "leaf"
    for _ in range(30):
        nested = [nested]
    c = accepted(token(claims(groups=nested, note="[[[[" * 20 + '"\\"{{{' * 20)))
    assert c.payload["note"].startswith("[[[[")


def test_duplicate_header_names_are_malformed() -> None:
    header = '{"alg":"RS256","kid":"rsa","alg":"none"}'
    assert refused(raw_token(header, json.dumps(claims()))) == "malformed token"


def test_jwe_shaped_token() -> None:
    assert refused("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d") == "encrypted tokens (JWE) are not supported"
    jwe_header = json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "rsa"})
    tok = raw_token(jwe_header, json.dumps(claims()))
    assert refused(tok) == "encrypted tokens (JWE) are not supported"


@pytest.mark.parametrize(
    "tok",
    ["abc", "a.b", "a.b.c.d", "a..c", ".b.c", "a.b+c.d", "a=.b.c", "!!!.b.c", "YQ.YQ.YQ"],
)
def test_malformed_tokens(tok: str) -> None:
    assert refused(tok) == "malformed token"


def test_token_too_large() -> None:
    big = token(claims(padding="x" * 8192))
    assert len(big) > 8192
    assert refused(big) == "token too large"


def test_token_just_under_the_limit_passes() -> None:
    tok = token(claims(padding="x" * 5600))
    assert 7000 < len(tok) <= 8192
    accepted(tok)


# -- key sets ----------------------------------------------------------------


def test_key_with_use_enc_is_skipped() -> None:
    keys = KeySet.from_jwks({"keys": [rsa_jwk("enc-key", use="enc"), rsa_jwk("sig-key")]})
    assert keys.kids == ("sig-key",)
    assert [(s.kid, s.reason) for s in keys.skipped] == [("enc-key", "use is 'enc', not 'sig'")]
    assert refused(token(kid="enc-key"), keys=keys) == "unknown key id"
    accepted(token(kid="sig-key"), keys=keys)


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ({k: v for k, v in rsa_jwk("x").items() if k != "kid"}, "missing kid"),
        ({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, "HMAC (oct) keys are refused"),
        (rsa_jwk("x", alg="HS256"), "alg 'HS256' does not fit this RSA key"),
        (rsa_jwk("x", alg="RSA-OAEP"), "alg 'RSA-OAEP' does not fit this RSA key"),
        (ec_jwk("x", alg="ES384"), "alg 'ES384' does not fit this EC key"),
        (ed_jwk("x", alg="ES256"), "alg 'ES256' does not fit this OKP key"),
        (rsa_jwk("x", key_ops=["encrypt"]), "key_ops does not include 'verify'"),
        ({**ec_jwk("x"), "crv": "P-521"}, "unsupported EC curve 'P-521' (supported: P-256, P-384)"),
        ({**ed_jwk("x"), "crv": "Ed448"}, "unsupported OKP curve 'Ed448' (supported: Ed25519)"),
        ({"kty": "XYZ", "kid": "x"}, "unsupported kty 'XYZ' (supported: RSA, EC, OKP)"),
        ("not an object", "not a JSON object"),
    ],
)
def test_unusable_keys_are_skipped_with_a_reason(jwk: Any, reason: str) -> None:
    keys = KeySet.from_jwks({"keys": [jwk]})
    assert len(keys) == 0
    assert [s.reason for s in keys.skipped] == [reason]


def test_invalid_key_material_is_skipped() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    bad_point = {**ec_jwk("bad-point"), "y": ec_jwk("x")["x"]}
    keys = KeySet.from_jwks(
        {"keys": [rsa_jwk("small", small), bad_point, {**ed_jwk("short"), "x": "AAAA"}]}
    )
    assert len(keys) == 0
    assert [s.kid for s in keys.skipped] == ["small", "bad-point", "short"]
    assert "2048" in keys.skipped[0].reason


def test_duplicate_kid_keeps_the_first() -> None:
    keys = KeySet.from_jwks({"keys": [rsa_jwk("k"), ec_jwk("k")]})
    assert keys.algorithms("k") == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert [s.reason for s in keys.skipped] == ["duplicate kid"]


@pytest.mark.parametrize(
    "document", ["not json", "[]", '{"keys": 1}', "{}", b"\xff", '{"keys":' + "[" * 2000]
)
def test_invalid_jwks_documents_raise(document: str | bytes) -> None:
    with pytest.raises(JwksError):
        KeySet.from_jwks(document)


def test_empty_key_set_fails_closed() -> None:
    assert refused(token(), keys=KeySet()) == "unknown key id"


# -- the cache ---------------------------------------------------------------


def test_second_verify_is_a_cache_hit() -> None:
    v = verifier()
    tok = token()
    first = v.verify(bearer(tok))
    assert isinstance(first, Claims)
    assert v.verify(bearer(tok)) is first
    stats = v.statistics()
    assert (stats.hits, stats.misses, stats.size) == (1, 1, 1)


def test_failures_are_not_cached() -> None:
    v = verifier()
    tok = token(key=OTHER_RSA_KEY)
    assert v.verify(bearer(tok)) == v.verify(bearer(tok)) == Failure("invalid signature")
    assert (v.statistics().hits, v.statistics().size) == (0, 0)


def test_no_cache_hit_after_exp() -> None:
    clock = Clock()
    v = verifier(now=clock)
    tok = token(claims(exp=START + 60))
    assert isinstance(v.verify(bearer(tok)), Claims)
    clock.t = START + 59
    assert isinstance(v.verify(bearer(tok)), Claims)
    assert v.statistics().hits == 1
    clock.t = START + 61  # past exp, within leeway: verified again, not from the cache
    assert isinstance(v.verify(bearer(tok)), Claims)
    assert v.statistics().hits == 1
    assert v.statistics().size == 0
    clock.t = START + 100
    assert v.verify(bearer(tok)) == Failure("token expired")


def test_cache_is_cleared_when_keys_change() -> None:
    v = verifier()
    tok = token()
    assert isinstance(v.verify(bearer(tok)), Claims)
    v.replace_keys(ISSUER, KeySet.from_jwks({"keys": [rsa_jwk("new", OTHER_RSA_KEY)]}))
    stats = v.statistics()
    assert (stats.size, stats.generation) == (0, 1)
    assert v.verify(bearer(tok)) == Failure("unknown key id", refresh_issuer=ISSUER)
    assert isinstance(v.verify(bearer(token(kid="new", key=OTHER_RSA_KEY))), Claims)
    with pytest.raises(KeyError):
        v.replace_keys("https://unknown.example", KEYS)


def test_cache_is_a_bounded_lru() -> None:
    v = verifier(cache_size=2)
    a, b, c = (token(claims(sub=s)) for s in "abc")
    for tok in (a, b, a, c):  # c evicts b, the least recently used
        assert isinstance(v.verify(bearer(tok)), Claims)
    assert v.statistics().size == 2
    v.verify(bearer(a))
    v.verify(bearer(b))
    stats = v.statistics()
    assert (stats.hits, stats.misses) == (2, 4)


def test_cache_can_be_turned_off() -> None:
    v = verifier(cache_size=0)
    tok = token()
    assert isinstance(v.verify(bearer(tok)), Claims)
    assert isinstance(v.verify(bearer(tok)), Claims)
    assert (v.statistics().hits, v.statistics().size) == (0, 0)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        verifier(leeway=-1)
    with pytest.raises(ValueError):
        verifier(max_token_bytes=0)


# -- modes -------------------------------------------------------------------

VALID = accepted(token())
MISSING = Failure("no bearer token found")
BAD = Failure("invalid signature")


@pytest.mark.parametrize(
    ("mode", "result", "expected"),
    [
        ("strict", VALID, Allow(VALID)),
        ("strict", MISSING, Deny("no bearer token found")),
        ("strict", BAD, Deny("invalid signature")),
        ("optional", VALID, Allow(VALID)),
        ("optional", MISSING, Allow(None)),
        ("optional", BAD, Deny("invalid signature")),
        ("permissive", VALID, Allow(VALID)),
        ("permissive", MISSING, Allow(None)),
        ("permissive", BAD, Allow(None)),
    ],
)
def test_modes(mode: Any, result: Claims | Failure, expected: Allow | Deny) -> None:
    assert decide(mode, result) == expected


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        decide("lenient", MISSING)  # type: ignore[arg-type]


# -- never raises ------------------------------------------------------------

FUZZ = verifier()


def fuzz(values: list[bytes]) -> Claims | Failure:
    # Past the catch-all that ``verify`` puts around it: the planned checks
    # alone must turn any input into a result.
    return FUZZ._verify(values)


# Every reason the verifier gives: fixed texts, never a piece of the token.
REASONS = {
    "no bearer token found",
    "multiple authorization headers",
    "token too large",
    "malformed token",
    "missing key id",
    "unknown key id",
    "algorithm not allowed",
    "invalid signature",
    "token expired",
    "token not yet valid",
    "missing iss",
    "invalid issuer",
    "invalid audience",
    "missing aud",
    "missing exp",
    "invalid claims",
    "unsupported crit header",
    "jku/x5u/jwk headers are not allowed",
    "encrypted tokens (JWE) are not supported",
    *(f"invalid {name} claim" for name in ("exp", "nbf", "iat", "aud", "sub", "jti")),
}
SEGMENT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(st.lists(st.binary(max_size=300), max_size=3))
def test_random_header_bytes_never_raise(values: list[bytes]) -> None:
    result = fuzz(values)
    assert isinstance(result, Failure) and result.reason in REASONS


@given(st.text(max_size=300))
def test_random_bearer_text_never_raises(text: str) -> None:
    result = fuzz([f"Bearer {text}".encode()])
    assert isinstance(result, Failure)
    assert result.reason in REASONS


@given(st.lists(SEGMENT, min_size=1, max_size=6), st.sampled_from([None, "rsa", "ec", "ed"]))
def test_random_segments_never_raise(segments: list[str], kid: str | None) -> None:
    header = b64(json.dumps({"alg": "RS256", "kid": kid}).encode())
    for tok in (".".join(segments), ".".join([header, *segments[:2]])):
        result = fuzz(bearer(tok))
        assert isinstance(result, Failure) and result.reason in REASONS


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists, max_leaves=8))
def test_random_claim_values_never_raise(value: Any) -> None:
    for name in ("exp", "nbf", "iat", "aud", "iss", "sub"):
        payload = claims()
        payload[name] = value
        result = fuzz(bearer(token(payload)))
        assert isinstance(result, Claims) or result.reason in REASONS
