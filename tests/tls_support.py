"""A test PKI (trustme) and TLS contexts for real TLS peers in the tests."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import attrs
import trustme


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
            now = datetime.datetime.now(datetime.timezone.utc)
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
