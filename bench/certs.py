"""A certificate authority for one run, made with trustme: PEM files for the TLS
servers of bench/ (agentgw's HTTPS listener, the HTTPS upstream) and a client
context that trusts it."""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

# The servers listen on 127.0.0.1, and clients connect to it by address.
SERVER_NAMES = ("127.0.0.1", "localhost")
# What most public certificates use; only the handshakes depend on it, and a
# keep-alive connection has one.
KEY_TYPE = trustme.KeyType.ECDSA
KEY_DESCRIPTION = "ECDSA P-256"


@dataclass(frozen=True)
class Certs:
    """`ca`: the CA's certificate; `cert`: a server certificate for SERVER_NAMES
    (leaf first, then the chain) and `key` its private key; all PEM files."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA alone, hostname checks on."""
        return ssl.create_default_context(cafile=str(self.ca))


def describe() -> str:
    return (
        f"a CA made for the run with trustme, and a {KEY_DESCRIPTION} server certificate "
        f"for {', '.join(SERVER_NAMES)} that it signed"
    )


def make_certs(directory: Path | None = None) -> Certs:
    """Write a fresh CA and a server certificate into `directory` (a new temporary
    directory when None: the caller removes it)."""
    where = directory or Path(tempfile.mkdtemp(prefix="bench-certs-"))
    ca = trustme.CA(key_type=KEY_TYPE)
    issued = ca.issue_cert(*SERVER_NAMES, key_type=KEY_TYPE)
    certs = Certs(ca=where / "ca.pem", cert=where / "server.pem", key=where / "server-key.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    issued.private_key_pem.write_to_path(str(certs.key))
    with certs.cert.open("wb") as chain:
        for pem in issued.cert_chain_pems:
            chain.write(pem.bytes())
    return certs
