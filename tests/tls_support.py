"""A test PKI (trustme) and TLS contexts for real TLS peers in the tests."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trustme

from tests.e2e.support import Client, Response


@attrs.define(eq=False)
class Pki:
    """A CA whose certificates and files live in ``directory``."""

    directory: Path
    ca: trustme.CA = attrs.field(factory=trustme.CA)
    _count: int = 0

    @property
    def ca_file(self) -> str:
        path = self.directory / f"ca-{id(self.ca)}.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def issue(
        self, *names: str, common_name: str | None = None, expired: bool = False
    ) -> trustme.LeafCert:
        kw: dict[str, object] = {}
        if expired:
            now = datetime.datetime.now(datetime.UTC)
            kw = {
                "not_before": now - datetime.timedelta(days=30),
                "not_after": now - datetime.timedelta(days=1),
            }
        return self.ca.issue_cert(*names, common_name=common_name, **kw)  # type: ignore[arg-type]

    def files(self, cert: trustme.LeafCert) -> tuple[str, str]:
        """(certificate chain file, key file) for ``cert``."""
        self._count += 1
        chain = self.directory / f"cert-{self._count}.pem"
        key = self.directory / f"key-{self._count}.pem"
        for blob in cert.cert_chain_pems:
            with open(chain, "ab") as f:
                f.write(blob.bytes())
        cert.private_key_pem.write_to_path(str(key))
        return str(chain), str(key)

    def server_context(
        self, cert: trustme.LeafCert, client_ca: Pki | None = None
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        if client_ca is not None:
            client_ca.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


@asynccontextmanager
async def open_tls_client(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> AsyncIterator[Client]:
    """One keep-alive HTTPS connection to 127.0.0.1:``port``."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_hostname, https_compatible=True)
    client = Client(stream)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await trio.aclose_forcefully(stream)


async def tls_request(
    port: int,
    context: ssl.SSLContext,
    method: str = "GET",
    path: str = "/",
    server_hostname: str = "localhost",
    **kw: Any,
) -> Response:
    kw.setdefault("host", server_hostname)
    async with open_tls_client(port, context, server_hostname) as client:
        return await client.request(method, path, **kw)
