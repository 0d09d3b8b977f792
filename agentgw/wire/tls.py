"""A client's verified TLS certificate as CEL rules see it, and the first
bytes of a TLS port (no I/O).

agentgateway puts the peer certificate of an mTLS connection under
``source``: ``source.subject``, ``source.issuer``, ``source.subjectCn``,
``source.subjectAltNames``, ``source.spiffeId`` and ``source.certificate``.
Names are written as agentgateway writes them: ``O=Org, CN=alice``, the
attributes in the certificate's own order.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import ssl

import attrs
from cryptography import x509


@attrs.frozen
class PeerCertificate:
    """The certificate a client presented and the listener verified."""

    subject: str
    issuer: str
    subject_cn: str | None
    subject_alt_names: tuple[str, ...]
    der: bytes = attrs.field(repr=False)

    @property
    def spiffe_id(self) -> str | None:
        return next((n for n in self.subject_alt_names if n.startswith("spiffe://")), None)

    @property
    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.der)

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        """Raises ValueError for bytes that are not a DER certificate."""
        cert = x509.load_der_x509_certificate(der)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return cls(
            subject=_name(cert.subject),
            issuer=_name(cert.issuer),
            subject_cn=_text(cn[0].value) if cn else None,
            subject_alt_names=_alt_names(cert),
            der=der,
        )

    def cel_fields(self) -> dict[str, object]:
        """The ``source.*`` fields agentgateway adds for a client certificate."""
        fields: dict[str, object] = {
            "subject": self.subject,
            "issuer": self.issuer,
            "subjectAltNames": list(self.subject_alt_names),
            "certificate": self.pem,
        }
        if self.subject_cn is not None:
            fields["subjectCn"] = self.subject_cn
        if self.spiffe_id is not None:
            fields["spiffeId"] = self.spiffe_id
        return fields


@attrs.frozen
class ConnectionTLS:
    """What a client's TLS connection established: the listener whose
    certificate it got (by SNI) and its verified certificate, if any."""

    listener: int
    peer: PeerCertificate | None = None


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _name(name: x509.Name) -> str:
    return ", ".join(
        "+".join(f"{a.rfc4514_attribute_name}={_text(a.value)}" for a in rdn) for rdn in name.rdns
    )


def _alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    """URI, DNS and IP names, in the certificate's order (as agentgateway)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for name in ext.value:
        if isinstance(name, x509.UniformResourceIdentifier | x509.DNSName):
            out.append(name.value)
        elif isinstance(name, x509.IPAddress) and isinstance(
            name.value, ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            out.append(str(name.value))
    return tuple(out)


# ---------------------------------------------------------------- across workers


def encode_connection(tls: ConnectionTLS) -> bytes:
    """The TLS facts of a connection, for a header between workers:
    ``<listener index>;<base64 DER or nothing>``."""
    der = base64.b64encode(tls.peer.der) if tls.peer is not None else b""
    return b"%d;%s" % (tls.listener, der)


def decode_connection(value: bytes) -> ConnectionTLS:
    """Raises ValueError for a value ``encode_connection`` did not make."""
    index, sep, der = value.partition(b";")
    if not sep or not index.isdigit():
        raise ValueError("malformed TLS facts")
    if not der:
        return ConnectionTLS(int(index))
    try:
        return ConnectionTLS(
            int(index), PeerCertificate.from_der(base64.b64decode(der, validate=True))
        )
    except binascii.Error as exc:
        raise ValueError(f"malformed TLS facts: {exc}") from None


# ---------------------------------------------------------------- what arrives first


def looks_like_http(first: bytes) -> bool:
    """Whether the first bytes on a TLS port are a plaintext HTTP request
    (a method token) rather than a TLS record."""
    return bool(first) and first[:1].isalpha() and first[:1].isupper()
