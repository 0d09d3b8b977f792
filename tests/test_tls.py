"""TLS settings compiled from config (every file problem names its field
path), the client certificate as CEL sees it, and the small pure helpers."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from agentgw import Gateway
from agentgw.config.converter import unstructure_config
from agentgw.config.load import config_from_dict, parse_config
from agentgw.errors import ConfigError
from agentgw.policy import authz
from agentgw.tls import ServerTLS, _name_matches, describe
from agentgw.wire.tls import (
    ConnectionTLS,
    PeerCertificate,
    decode_connection,
    encode_connection,
    looks_like_http,
)
from tests.tls_support import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def errors_of(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Gateway(config_from_dict(config))
    return caught.value.errors


def one_route(route: dict[str, Any], **listener: Any) -> dict[str, Any]:
    return {
        "binds": [
            {
                "port": 0,
                "listeners": [{"name": "l", "routes": [{"name": "r", **route}], **listener}],
            }
        ]
    }


R = "binds[0].listeners[0].routes[0]"


def test_backend_tls_files_are_checked_with_their_paths(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = pki.files(pki.issue("client.example"))
    _, other_key = pki.files(pki.issue("other.example"))
    missing = str(tmp_path / "missing.pem")
    config = one_route(
        {
            "policies": {"backendTLS": {"root": missing}},
            "backends": [
                {"host": "a:1", "policies": {"backendTLS": {"root": str(garbage)}}},
                {
                    "mcp": {
                        "targets": [
                            {
                                "name": "t",
                                "mcp": {"host": "https://t.example/mcp"},
                                "policies": {"backendTLS": {"cert": cert, "key": other_key}},
                            },
                            {
                                "name": "u",
                                "mcp": {"host": "https://u.example/mcp"},
                                "policies": {"backendTLS": {"cert": str(garbage), "key": key}},
                            },
                        ]
                    }
                },
                {"host": "c:1"},  # gets the route's backendTLS
            ],
        }
    )
    assert errors_of(config) == [
        f"{R}.backends[0].policies.backendTLS.root: '{garbage}' is not a PEM certificate bundle",
        f"{R}.backends[1].mcp.targets[0].policies.backendTLS.key: '{other_key}' does not match"
        " the certificate (key values mismatch)",
        f"{R}.backends[1].mcp.targets[1].policies.backendTLS.cert: '{garbage}' is not a PEM"
        " certificate chain",
        f"{R}.policies.backendTLS.root: cannot read file '{missing}': No such file or directory",
    ]


def test_listener_tls_files_are_checked_with_their_paths(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.files(pki.issue("localhost"))
    encrypted = tmp_path / "encrypted.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    config = one_route(
        {"backends": [{"host": "a:1"}]},
        protocol="HTTPS",
        tls={"cert": cert, "key": str(encrypted), "root": str(tmp_path / "nope.pem")},
    )
    assert errors_of(config) == [
        f"binds[0].listeners[0].tls.key: '{encrypted}' is encrypted (agentgw needs it unencrypted)",
        f"binds[0].listeners[0].tls.root: cannot read file '{tmp_path / 'nope.pem'}':"
        " No such file or directory",
    ]
    del key


def test_bind_rules_for_https_listeners(pki: Pki) -> None:
    cert, key = pki.files(pki.issue("localhost"))
    root = pki.ca_file
    tls = {"cert": cert, "key": key}
    route = {"name": "r", "backends": [{"host": "a:1"}]}
    config = {
        "binds": [
            {
                "port": 0,
                "listeners": [
                    {"name": "a", "protocol": "HTTPS", "tls": tls, "routes": [route]},
                    {"name": "b", "hostname": "b", "routes": [route]},
                ],
            },
            {
                "port": 0,
                "listeners": [
                    {"name": "c", "protocol": "HTTPS", "tls": tls, "routes": [route]},
                    {
                        "name": "d",
                        "hostname": "d",
                        "protocol": "HTTPS",
                        "tls": {**tls, "root": root},
                        "routes": [route],
                    },
                ],
            },
            {
                "port": 0,
                "listeners": [
                    {
                        "name": "e",
                        "routes": [
                            {
                                "name": "ws",
                                "policies": {"backendTLS": {"hostname": "x"}},
                                "backends": [
                                    {
                                        "mcp": {
                                            "targets": [
                                                {"name": "w", "websocket": {"host": "wss://w/"}}
                                            ]
                                        }
                                    }
                                ],
                            }
                        ],
                    }
                ],
            },
        ]
    }
    assert errors_of(config) == [
        "binds[0].listeners[1].protocol: a bind serves HTTP or HTTPS listeners, not both"
        " (put them on two ports)",
        "binds[1].listeners: HTTPS listeners on one bind must have the same tls.root,"
        " minTLSVersion and maxTLSVersion (only the certificate is chosen by SNI)",
        "binds[2].listeners[0].routes[0].policies.backendTLS: hostname and subjectAltNames are"
        " not supported by agentgw for websocket targets"
        " (binds[2].listeners[0].routes[0].backends[0].mcp.targets[0])",
    ]


def test_validate_only_reports_a_missing_certificate(tmp_path: Path) -> None:
    config = one_route(
        {"backends": [{"host": "a:1"}]},
        protocol="HTTPS",
        tls={"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentgw", "--validate-only", "-c", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "binds[0].listeners[0].tls.cert: cannot read file" in proc.stderr
    assert "binds[0].listeners[0].tls.key: cannot read file" in proc.stderr


def test_contexts_are_built_once_per_distinct_settings(pki: Pki) -> None:
    same = {"root": pki.ca_file}
    config = {
        "binds": [
            {
                "port": 0,
                "listeners": [
                    {
                        "routes": [
                            {"name": "a", "backends": [{"host": "a:1"}]},
                            {
                                "name": "b",
                                "policies": {"backendTLS": same},
                                "backends": [{"host": "b:1"}, {"host": "c:1"}],
                            },
                            {
                                "name": "c",
                                "backends": [
                                    {"host": "d:1", "policies": {"backendTLS": dict(same)}},
                                    {"host": "e:1", "policies": {"backendTLS": {}}},
                                ],
                            },
                        ]
                    }
                ],
            }
        ]
    }
    gw = Gateway(config_from_dict(config))
    routes = list(gw._binds[0].routes.values())
    origins = [o for r in routes for o in r.origins.values()]
    a, b, c, d, e = (o.tls for o in origins)
    assert a is None  # plain: a host backend speaks TLS only with backendTLS
    assert b is c is d  # equal settings, one context
    assert e is not None and e is not b
    assert b is not None and b.context.verify_mode is ssl.CERT_REQUIRED
    assert b.context.check_hostname
    assert gw.pool.tls is None  # nothing in this config needs the system store


def test_backend_tls_choices() -> None:
    def client(**tls: Any) -> Any:
        config = one_route({"backends": [{"host": "a:1", "policies": {"backendTLS": tls}}]})
        gw = Gateway(config_from_dict(config))
        return next(iter(gw._binds[0].routes.values())).origins[0].tls

    insecure = client(insecure=True)
    assert insecure.context.verify_mode is ssl.CERT_NONE and not insecure.context.check_hostname
    loose = client(insecureHost=True, subjectAltNames=["x"])
    assert loose.context.verify_mode is ssl.CERT_REQUIRED and not loose.context.check_hostname
    assert loose.subject_alt_names == ()  # insecureHost: no name check at all
    pinned = client(subjectAltNames=["backend.internal"], hostname="sni.example")
    assert not pinned.context.check_hostname
    assert pinned.subject_alt_names == ("backend.internal",)
    assert pinned.hostname == "sni.example"


# ---------------------------------------------------------------- SNI


def test_listener_for_server_name() -> None:
    contexts = (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),) * 5
    tls = ServerTLS(("a.example", "*.example", "*.b.example", "", "*"), contexts)
    assert tls.listener_for("a.example") == 0
    assert tls.listener_for("A.Example") == 0
    assert tls.listener_for("x.b.example") == 2  # the longest wildcard
    assert tls.listener_for("x.example") == 1
    assert tls.listener_for("other.test") == 4  # "*" matches any name
    assert tls.listener_for(None) == 3  # no SNI: the listener without hostname
    without_star = ServerTLS(("a.example", "", "*.x"), contexts[:3])
    assert without_star.listener_for(None) == 1
    assert without_star.listener_for("other.test") == 1
    only_named = ServerTLS(("a.example", "b.example", "c"), (contexts[0], contexts[0], None))
    assert only_named.listener_for("c") is None  # listener 2 is not HTTPS
    assert only_named.listener_for("z") is None


def test_subject_alt_name_matching() -> None:
    names = [("DNS", "backend.internal"), ("DNS", "*.svc.example"), ("IP Address", "10.0.0.1")]
    names.append(("URI", "spiffe://td/ns/a/sa/b"))
    assert _name_matches("backend.internal", names)
    assert _name_matches("Backend.Internal.", names)
    assert _name_matches("api.svc.example", names)
    assert not _name_matches("a.b.svc.example", names)  # one label only
    assert not _name_matches("svc.example", names)
    assert _name_matches("10.0.0.1", names)
    assert not _name_matches("10.0.0.2", names)
    assert _name_matches("spiffe://td/ns/a/sa/b", names)
    assert not _name_matches("spiffe://td/ns/a/sa/c", names)


def test_describe_tls_failures() -> None:
    err = ssl.SSLCertVerificationError(1, "x")
    err.verify_message = "certificate has expired"
    assert describe(err) == "certificate verify failed: certificate has expired"
    broken = trio.BrokenResourceError()
    broken.__cause__ = err
    assert describe(broken) == "certificate verify failed: certificate has expired"
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1)")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert describe(alert) == "tlsv1 alert unknown ca"
    assert describe(None) == "connection closed during the handshake"


# ---------------------------------------------------------------- the client certificate


def test_peer_certificate_fields_and_cel(pki: Pki) -> None:
    leaf = pki.issue("alice.example", "10.1.2.3", common_name="alice")
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    peer = PeerCertificate.from_der(der)
    assert peer.subject_cn == "alice"
    assert peer.subject.startswith("O=trustme") and peer.subject.endswith(", CN=alice")
    assert ", OU=Testing cert #" in peer.subject
    assert peer.issuer.startswith("O=trustme") and ", OU=Testing CA #" in peer.issuer
    assert peer.subject_alt_names == ("alice.example", "10.1.2.3")
    assert peer.spiffe_id is None
    assert peer.pem.startswith("-----BEGIN CERTIFICATE-----")

    rules = authz.compile_rules(
        [
            'source.subjectCn == "alice" && "10.1.2.3" in source.subjectAltNames',
            {"deny": "has(source.spiffeId)"},
        ],
        path="rules",
    )
    with_cert = authz.http_variables("GET", "/", "h", [], "1.2.3.4", 5, None, peer)
    assert isinstance(rules.evaluate(with_cert), authz.Allow)
    without = authz.http_variables("GET", "/", "h", [], "1.2.3.4", 5, None)
    assert without["source"] == {"address": "1.2.3.4", "port": 5}
    assert isinstance(rules.evaluate(without), authz.Deny)


def test_connection_facts_travel_between_workers(pki: Pki) -> None:
    leaf = pki.issue("alice.example", common_name="alice")
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    facts = ConnectionTLS(2, PeerCertificate.from_der(der))
    assert decode_connection(encode_connection(facts)) == facts
    assert decode_connection(encode_connection(ConnectionTLS(0))) == ConnectionTLS(0)
    for bad in (b"", b"x;", b"1", b"1;not base64!", b"1;" + b"QUJD"):
        with pytest.raises(ValueError):
            decode_connection(bad)


def test_first_bytes_on_a_tls_port() -> None:
    assert looks_like_http(b"G")
    assert looks_like_http(b"POST")
    assert not looks_like_http(b"\x16")
    assert not looks_like_http(b"g")
    assert not looks_like_http(b"")


# ---------------------------------------------------------------- the keys


def keys_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text))
    return caught.value.errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            binds:
            - listeners:
              - protocol: HTTPS
              - tls: {cert: c, key: k}
              - protocol: HTTPS
                tls:
                  key: k
                  minTLSVersion: TLS_V1_3
                  maxTlsVersion: TLS_V1_2
                  cipherSuites: []
              - protocol: HTTPS
                tls: {cert: c, key: k, minTlsVersion: TLS_V1_1, minTLSVersion: TLS_V1_2}
            """,
            [
                "binds[0].listeners[0].tls: required with protocol HTTPS",
                "binds[0].listeners[1].tls: only valid with protocol HTTPS",
                "binds[0].listeners[2].tls.minTLSVersion: minTLSVersion is above maxTLSVersion",
                "binds[0].listeners[2].tls.cipherSuites: not supported by agentgw",
                "binds[0].listeners[2].tls.cert: required",
                "binds[0].listeners[3].tls.minTlsVersion: expected minTLSVersion or"
                " minTlsVersion, not both",
            ],
        ),
        (
            """
            binds:
            - listeners:
              - routes:
                - policies:
                    backendTLS:
                      cert: c
                      alpn: [h2, http/1.1]
                      insecure: "yes"
                      spiffe: {}
                  backends:
                  - host: a:1
                    policies: {backendTLS: {key: k, subjectAltNames: [""], keyExchangeGroups: []}}
                  - host: b:1
                    policies: {backendTLS: {subjectAltNames: []}}
            """,
            [
                "binds[0].listeners[0].routes[0].policies.backendTLS.alpn[0]: agentgw speaks"
                " HTTP/1.1 only: expected http/1.1, got 'h2'",
                "binds[0].listeners[0].routes[0].policies.backendTLS.insecure: expected true or"
                " false, got 'yes'",
                "binds[0].listeners[0].routes[0].policies.backendTLS.spiffe: not supported by"
                " agentgw",
                "binds[0].listeners[0].routes[0].policies.backendTLS.key: required with cert (a"
                " client certificate needs both)",
                "binds[0].listeners[0].routes[0].backends[0].policies.backendTLS.subjectAltNames[0]:"
                " expected a name, got ''",
                "binds[0].listeners[0].routes[0].backends[0].policies.backendTLS"
                ".keyExchangeGroups: not supported by agentgw",
                "binds[0].listeners[0].routes[0].backends[0].policies.backendTLS.cert: required"
                " with key (a client certificate needs both)",
                "binds[0].listeners[0].routes[0].backends[1].policies.backendTLS.subjectAltNames:"
                " expected at least one name",
            ],
        ),
        (
            """
            binds: [{listeners: []}]
            frontendPolicies:
              tls: {handshakeTimeout: 0, minVersion: TLS_V1_3}
              accessLog: {}
            """,
            [
                "frontendPolicies.tls.handshakeTimeout: expected a duration above zero, got 0",
                "frontendPolicies.tls.minVersion: not supported by agentgw",
                "frontendPolicies.accessLog: not supported by agentgw",
            ],
        ),
    ],
)
def test_tls_keys(text: str, expected: list[str]) -> None:
    assert keys_errors(text) == expected


def test_tls_keys_round_trip() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            binds:
            - listeners:
              - protocol: HTTPS
                tls: {cert: c.pem, key: k.pem, root: r.pem, minTlsVersion: TLS_V1_3}
                routes:
                - policies:
                    backendTLS: {root: ca.pem, hostname: h, insecureHost: true, alpn: [http/1.1]}
                  backends: [{host: "a:1"}]
            frontendPolicies: {tls: {handshakeTimeout: 5s}}
            """
        )
    )
    listener = config.binds[0].listeners[0]
    assert listener.tls is not None and listener.tls.min_tls_version == "TLS_V1_3"
    assert config.frontend_policies.tls.handshake_timeout == 5.0
    data = unstructure_config(config)
    assert data["binds"][0]["listeners"][0]["tls"]["minTLSVersion"] == "TLS_V1_3"
    route = data["binds"][0]["listeners"][0]["routes"][0]
    assert route["policies"]["backendTLS"]["insecureHost"] is True
    assert config_from_dict(data) == config
