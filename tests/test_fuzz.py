"""Property fuzzing of the pure parts: whatever the input, each raises only
its documented error type, and where two parsers read the same bytes (our
raw head checks and h11), they agree on what they both accept.

``AGENTGW_FUZZ_EXAMPLES`` sets the examples per test (default 200); the long
run (``python -m tests.fuzz.run``) raises it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import h11
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentgw.config.load import config_from_dict, parse_config
from agentgw.errors import ClientError, ConfigError, UpstreamError
from agentgw.policy import authz
from agentgw.policy.jwt import Claims, Failure, JwksError, KeySet
from agentgw.wire.http import (
    HeadLimits,
    check_request_head,
    check_request_line_length,
    check_response_head,
    check_response_head_start,
    find_head_end,
    is_valid_host,
)
from agentgw.wire.jsonrpc import JsonRpcError, is_notification, is_request, parse_messages
from agentgw.wire.sse import SSEDecoder, SSEError
from tests.test_jwt import AUDIENCE, ISSUER, JWKS, RSA_KEY, b64, signature, verifier

EXAMPLES = int(os.environ.get("AGENTGW_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = HeadLimits(max_request_line=512, max_head=4096, max_header_line=256, max_headers=20)

# ---------------------------------------------------------------- raw heads

METHODS = [b"GET", b"POST"] * 4 + [b"OPTIONS", b"CONNECT", b"G T", b"", b"\x00"]
TARGETS = [
    b"/",
    b"/mcp?x=1",
    b"/",
    b"/a/b",
    b"*",
    b"http://gw.test/x",
    b"HTTP://gw.test:80",
    b"http://u@gw.test/",
    b"https://[::1]:3000/a",
    b"gw.test:443",
    b"ftp://x/",
    b"/a b",
    b"/\x80",
]
VERSIONS = [b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 "]
NAMES = [
    b"Host",
    b"host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"X_User",
    b"X-User",
    b"Connection",
    b"Upgrade",
    b"Authorization",
] * 3 + [b" Host", b"Bad Name", b""]
VALUES = [
    b"gw.test",
    b"",
    b"a b",
    b"[::1]:80",
    b"a:99999",
    b"0",
    b"5",
    b"+5",
    b"5, 5",
    b"chunked",
    b"gzip, chunked",
    b"Chunked",
    b"a\x00b",
    b"a\rb",
    b"\x80\xff",
    b" padded ",
]
SEPARATORS = [b"\r\n"] * 20 + [b"\n", b"\r", b"\r\n "]


def pick(options: list[bytes]) -> st.SearchStrategy[bytes]:
    """Mostly one of ``options``, now and then random bytes."""
    return st.integers(0, 9).flatmap(
        lambda i: st.binary(max_size=40) if i == 9 else st.sampled_from(options)
    )


@st.composite
def heads(draw: st.DrawFn, first_line: st.SearchStrategy[bytes]) -> bytes:
    """A head built from likely parts, then perhaps mutated byte by byte;
    always cut as ``find_head_end`` cuts it."""
    lines = [draw(first_line)]
    if draw(st.integers(0, 9)) < 8:
        lines.append(b"Host: " + draw(pick([b"gw.test", b"a:80", b"[::1]:3000", b"127.0.0.1"])))
    for _ in range(draw(st.integers(0, 25))):
        name = draw(pick(NAMES))
        value = draw(pick(VALUES) | st.builds(lambda n: b"v" * n, st.integers(0, 300)))
        lines.append(name + draw(st.sampled_from([b": ", b":", b" : "])) + value)
    raw = bytearray(b"".join(line + draw(st.sampled_from(SEPARATORS)) for line in lines))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[at]
    raw += b"\r\n\r\n"
    return bytes(raw[: find_head_end(raw)])


request_lines = st.builds(
    lambda m, t, v: m + b" " + t + b" " + v, pick(METHODS), pick(TARGETS), pick(VERSIONS)
)
status_lines = pick(
    [b"HTTP/1.1 200 OK", b"HTTP/1.0 204", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Switching"]
)


def h11_request(head: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMITS.max_head)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event
    return event


@FUZZ
@given(heads(request_lines))
def test_request_heads_raise_only_client_errors(head: bytes) -> None:
    try:
        check_request_line_length(head, LIMITS)
        checked = check_request_head(head, LIMITS)
    except ClientError as exc:
        assert exc.status in (400, 414, 431, 505) and exc.reason
        event(f"refused: {exc.reason}")
        return
    request = h11_request(head)
    if request is None:
        event("h11 refuses")
        return  # the connection answers 400
    event("accepted")
    # What both accept, both read alike: the framing, the one Host.
    lengths = [v for n, v in request.headers if n == b"content-length"]
    encodings = [v for n, v in request.headers if n == b"transfer-encoding"]
    assert checked.chunked == bool(encodings)
    assert checked.content_length == (int(lengths[0]) if lengths else None)
    hosts = [v for n, v in request.headers if n == b"host"]
    assert len(hosts) <= 1 and all(is_valid_host(h) for h in hosts)
    assert checked.target == request.target and checked.method == request.method
    assert checked.origin_target.startswith((b"/", b"*"))


@FUZZ
@given(heads(status_lines))
def test_response_heads_raise_only_upstream_errors(head: bytes) -> None:
    try:
        check_response_head(head, LIMITS)
    except UpstreamError as exc:
        assert exc.reason == "upstream protocol error" and exc.status == 502
        event("refused")
        return
    event("accepted")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    try:
        answer = conn.next_event()
    except h11.RemoteProtocolError:
        return  # the pool maps it to the same 502
    assert isinstance(answer, h11.Response | h11.InformationalResponse)
    names = [n for n, _ in answer.headers]
    assert not (b"content-length" in names and b"transfer-encoding" in names)


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20))
def test_response_head_start_raises_only_upstream_errors(data: bytes, cuts: list[int]) -> None:
    buf = bytearray()
    for size in [*cuts, len(data)]:
        buf += data[:size]
        data = data[size:]
        try:
            check_response_head_start(buf, LIMITS)
        except UpstreamError as exc:
            assert exc.reason == "upstream protocol error"
            return


# ---------------------------------------------------------------- SSE

sse_lines = st.lists(
    st.sampled_from(
        [b"data: x", b"data:", b"event: e", b"id: 7", b"id: a\x00b", b"retry: 10", b"retry: x"]
    )
    | st.sampled_from([b":comment", b"", b"\xef\xbb\xbf", b"data: \xff\xfe", b"field"])
    | st.binary(max_size=20),
    max_size=30,
)


@FUZZ
@given(sse_lines, st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=1), st.data())
def test_sse_decoder_raises_only_sse_errors_and_any_split_gives_the_same_events(
    lines: list[bytes], ends: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    whole = SSEDecoder(max_event_bytes=200)
    try:
        expected = whole.feed(stream)
    except SSEError:
        expected = None
    split = SSEDecoder(max_event_bytes=200)
    got: list[Any] = []
    rest = stream
    try:
        while rest:
            size = data.draw(st.integers(1, max(1, len(rest))))
            got += split.feed(rest[:size])
            rest = rest[size:]
    except SSEError as exc:
        assert expected is None, exc
        return
    if expected is not None:
        assert got == expected
        assert split.last_event_id == whole.last_event_id


# ---------------------------------------------------------------- JSON-RPC

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
rpc_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": st.integers() | st.text(max_size=5) | st.none() | st.booleans() | st.floats(),
        "method": st.sampled_from(["tools/call", "initialize"]) | json_scalars,
        "params": json_values,
        "result": json_values,
        "error": json_values
        | st.fixed_dictionaries({"code": st.integers(), "message": st.text(max_size=5)}),
    },
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        rpc_like.map(lambda m: json.dumps(m).encode()),
        st.lists(rpc_like, max_size=4).map(lambda m: json.dumps(m).encode()),
        st.integers(1, 200).map(lambda n: b"[" * n + b"]" * n),
        st.integers(4000, 5000).map(lambda n: b"1" * n),
        st.sampled_from([b"NaN", b'{"a": Infinity}', b'"\\ud800"', b"\xff", b"", b"[]"]),
    )
)
def test_json_rpc_reader_raises_only_json_rpc_errors(body: bytes) -> None:
    try:
        messages, _ = parse_messages(body)
    except JsonRpcError as exc:
        assert exc.status == 400 and exc.message
        return
    assert messages and all(isinstance(m, dict) for m in messages)
    for message in messages:
        assert message["jsonrpc"] == "2.0"
        assert is_request(message) or is_notification(message) or "id" in message


# ---------------------------------------------------------------- JWT

VERIFIER = verifier()
ALGS = ["RS256", "RS512", "PS256", "ES256", "EdDSA", "HS256", "none", "NONE", ""]
header_objects = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(ALGS) | json_scalars,
        "kid": st.sampled_from(["rsa", "rsa-any", "ec", "ed", "nope"]) | json_scalars,
        "typ": json_values,
        "crit": json_values,
        "jku": json_values,
        "enc": json_values,
    },
)
claim_objects = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.just(ISSUER) | json_values,
        "aud": st.just(AUDIENCE) | st.lists(st.sampled_from([AUDIENCE, "x"])) | json_values,
        "exp": st.just(time.time() + 300) | json_values | st.integers(),
        "nbf": json_values | st.floats(),
        "iat": json_values,
        "sub": json_values,
        "jti": json_values,
    },
)


@FUZZ
@given(header_objects, claim_objects, st.booleans(), st.binary(max_size=80))
def test_jwt_header_and_claims_never_raise(
    header: dict[str, Any], payload: dict[str, Any], sign: bool, junk: bytes
) -> None:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if sign:
        sig = b64(signature("RS256", RSA_KEY, signing_input.encode()))
    else:
        sig = b64(junk)
    result = VERIFIER._verify([f"Bearer {signing_input}.{sig}".encode()])
    assert isinstance(result, Claims | Failure)
    if isinstance(result, Claims):
        assert sign and header.get("alg") in ("RS256",) and result.iss == ISSUER


jwk_entries = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "x"]) | json_scalars,
        "kid": st.sampled_from(["a", "b"]) | json_scalars,
        "use": st.sampled_from(["sig", "enc"]) | json_scalars,
        "key_ops": json_values,
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]) | json_scalars,
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "X25519"]) | json_scalars,
        "n": st.sampled_from([JWKS["keys"][0]["n"], "AQAB", "", "!!"]) | json_scalars,
        "e": st.sampled_from(["AQAB", "AA", "Aw", ""]) | json_scalars,
        "x": st.binary(max_size=66).map(b64) | json_scalars,
        "y": st.binary(max_size=66).map(b64) | json_scalars,
        "k": st.binary(max_size=32).map(b64),
    },
)


@FUZZ
@given(
    st.one_of(
        st.fixed_dictionaries({"keys": st.lists(jwk_entries | json_values, max_size=4)}),
        json_values,
        st.binary(max_size=100),
        st.sampled_from([b"\xff", "[" * 100 + "]" * 100, '{"keys": [], "keys": []}']),
    )
)
def test_jwks_documents_raise_only_jwks_errors(document: Any) -> None:
    if isinstance(document, dict | list) and not isinstance(document, dict):
        document = json.dumps(document)
    try:
        keys = KeySet.from_jwks(document)
    except JwksError:
        return
    assert len(keys) + len(keys.skipped) >= 0
    for kid in keys.kids:
        assert keys.algorithms(kid)
        assert not keys.algorithms(kid) & {"HS256", "HS384", "HS512", "none"}


# ---------------------------------------------------------------- CEL

RULES = authz.compile_rules(
    [
        'request.headers["x-user"] == "admin"',
        {"deny": 'request.path.startsWith("/admin")'},
        {"require": 'request.method != "TRACE"'},
        'jwt.sub == "alice" || source.address == "127.0.0.1"',
        'request.host.endsWith(".test") && source.port > 0',
        "size(request.headers) < 50",
    ],
    path="fuzz",
)
text = st.text(st.characters(codec=None), max_size=30)


@FUZZ
@given(
    text,
    text,
    text,
    st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=6),
    text,
    st.integers(-(2**70), 2**70),
    st.none() | st.dictionaries(st.text(max_size=5), json_values | st.integers(), max_size=5),
)
def test_cel_request_inputs_never_raise(
    method: str,
    path: str,
    host: str,
    headers: list[tuple[bytes, bytes]],
    address: str,
    port: int,
    claims: dict[str, Any] | None,
) -> None:
    port = port if -(2**63) <= port < 2**63 else 0
    variables = authz.http_variables(method, path, host, headers, address, port, claims)
    assert isinstance(RULES.evaluate(variables), authz.Allow | authz.Deny)


@FUZZ
@given(st.text(max_size=60) | st.sampled_from(["(" * 200, "a." * 300, "'\\u", "1 +", "!" * 50]))
def test_cel_expressions_compile_or_are_config_errors(expression: str) -> None:
    try:
        ruleset = authz.compile_rules([expression], path="r")
    except ConfigError as exc:
        assert exc.errors and exc.errors[0].startswith("r")
        return
    assert isinstance(ruleset.evaluate({}), authz.Allow | authz.Deny)


# ---------------------------------------------------------------- config

BASE = {
    "binds": [
        {
            "port": 3000,
            "listeners": [
                {
                    "routes": [
                        {
                            "matches": [{"path": {"pathPrefix": "/mcp"}}],
                            "policies": {"timeout": {"requestTimeout": "1s"}},
                            "backends": [{"host": "127.0.0.1:9000"}],
                        }
                    ]
                }
            ],
        }
    ],
    "config": {"http": {"maxHeaders": 100, "maxHeaderLineBytes": "8KiB"}},
}
KEYS = ["binds", "listeners", "routes", "backends", "policies", "config", "http", "mcp"]
KEYS += ["host", "port", "matches", "path", "jwtAuth", "maxHeaders", "allowUnderscoreHeaders"]


@st.composite
def mutated_configs(draw: st.DrawFn) -> object:
    doc: Any = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        node, key = doc, None
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        value = draw(json_values | st.sampled_from(["1s", "-1", "64KiB", "", "0", True]))
        if isinstance(node, dict):
            node[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = value
        elif isinstance(node, list):
            node.append(value)
    return doc


@FUZZ
@given(mutated_configs() | json_values)
def test_config_converter_raises_only_config_errors(doc: object) -> None:
    try:
        config_from_dict(doc)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)


@FUZZ
@given(
    st.text(max_size=200)
    | mutated_configs().map(lambda d: yaml.safe_dump(d))
    | st.sampled_from(["&a [*a]", "a: &a\n  b: *a", "!!python/object:os.system x", "{" * 500])
)
def test_config_text_raises_only_config_errors(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.errors


def test_fuzz_examples_setting_is_sane() -> None:
    assert EXAMPLES >= 1
    with pytest.raises(ClientError):
        check_request_head(b"\r\n\r\n", LIMITS)
