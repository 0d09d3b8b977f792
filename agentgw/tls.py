"""TLS on both sides: the contexts, built once when a config is compiled,
and the handshakes.

How this works:

* ``TlsCompiler`` turns ``backendTLS`` blocks into ``ClientTLS`` and HTTPS
  listeners into ``ServerTLS``, reading every file once and naming the field
  path of any file it cannot read or parse. Equal ``backendTLS`` blocks share
  one context. ``ClientTLS`` is hashed by identity: it is part of the
  upstream pool's key, so two routes with different TLS settings never share
  a connection. Without ``root`` the trust is ``ssl.create_default_context()``
  (the system store, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
* ``open_tls`` runs the client handshake before any request byte is
  written. A certificate that cannot be verified, for any reason, is
  ``UpstreamUnavailable`` with the reason in words as its detail; there is no
  fallback to plaintext. ``subjectAltNames`` are checked after the handshake
  (still before any request byte), as agentgateway does: the certificate
  must chain to the roots and carry one of the names.
* ``accept_tls`` runs the server handshake in the connection's own task,
  under the handshake timeout. The certificate is chosen by SNI among the
  bind's HTTPS listeners (agentgateway's order: exact hostname, longest
  ``*.`` wildcard, a listener without hostname; no match refuses the
  handshake). A plaintext HTTP request gets a short 400; garbage, a failed
  or a stalled handshake cost that connection and a debug line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agentgw.config.model import BackendTLS, ListenerTLS
from agentgw.errors import UpstreamUnavailable
from agentgw.wire.tls import ConnectionTLS, PeerCertificate, looks_like_http

logger = logging.getLogger(__name__)

MAX_PEM_BYTES = 10 << 20
HTTP_ONLY = ["http/1.1"]
_VERSIONS = {"TLS_V1_2": ssl.TLSVersion.TLSv1_2, "TLS_V1_3": ssl.TLSVersion.TLSv1_3}
PLAINTEXT_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 35\r\nconnection: close\r\n\r\nplain HTTP request to an HTTPS port\n"
)


@attrs.frozen(eq=False)
class ClientTLS:
    """How to speak TLS to an upstream. ``hostname`` overrides the name sent
    as SNI and verified; ``subject_alt_names`` replace the name check."""

    context: ssl.SSLContext = attrs.field(repr=False)
    hostname: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    label: str = "system trust"  # for repr


@attrs.frozen(eq=False)
class ServerTLS:
    """The HTTPS listeners of one bind: a context per listener, in listener
    order (None for a listener that is not HTTPS)."""

    hostnames: tuple[str, ...]
    contexts: tuple[ssl.SSLContext | None, ...] = attrs.field(repr=False)
    handshake_timeout: float = 15.0

    @property
    def first(self) -> ssl.SSLContext:
        return next(c for c in self.contexts if c is not None)

    def listener_for(self, server_name: str | None) -> int | None:
        """The listener whose certificate answers ``server_name`` (SNI)."""
        name = (server_name or "").lower()
        https = [(i, h) for i, h in enumerate(self.hostnames) if self.contexts[i] is not None]
        for i, hostname in https:
            if hostname == name:
                return i
        wildcards = [(len(h), i) for i, h in https if h.startswith("*") and name.endswith(h[1:])]
        if wildcards:
            return min(wildcards, key=lambda w: (-w[0], w[1]))[1]
        return next((i for i, hostname in https if not hostname), None)

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        index = self.listener_for(server_name)
        if index is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        context = self.contexts[index]
        if context is not conn.context:
            assert context is not None
            conn.context = context
        return None


# ---------------------------------------------------------------- compiling


def default_client_tls() -> ClientTLS:
    """The system's trust store (or ``SSL_CERT_FILE``/``SSL_CERT_DIR``)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(HTTP_ONLY)
    return ClientTLS(context)


@attrs.define(eq=False)
class TlsCompiler:
    """Builds every TLS context of a config once; problems go to ``errors``
    as ``"<field path>: <problem>"``."""

    errors: list[str]
    _default: ClientTLS | None = None
    _clients: dict[BackendTLS, ClientTLS] = attrs.field(factory=dict)

    @property
    def has_default(self) -> bool:
        return self._default is not None

    def default(self) -> ClientTLS:
        if self._default is None:
            self._default = default_client_tls()
        return self._default

    def client(self, cfg: BackendTLS | None, path: str) -> ClientTLS | None:
        """The context for ``cfg`` (the default trust when None); None if
        it cannot be built (the problem is in ``errors``)."""
        if cfg is None:
            return self.default()
        if cfg in self._clients:
            return self._clients[cfg]
        before = len(self.errors)
        tls = self._build_client(cfg, path)
        if len(self.errors) > before:
            return None
        self._clients[cfg] = tls
        return tls

    def _build_client(self, cfg: BackendTLS, path: str) -> ClientTLS:
        if cfg.root is None:
            context = ssl.create_default_context()
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._load_roots(context, cfg.root, f"{path}.root")
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert is not None and cfg.key is not None:
            self._load_chain(context, cfg.cert, cfg.key, path)
        check_names = not (cfg.insecure or cfg.insecure_host)
        if cfg.insecure or cfg.insecure_host or cfg.subject_alt_names is not None:
            context.check_hostname = False
        if cfg.insecure:
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(list(cfg.alpn) if cfg.alpn is not None else HTTP_ONLY)
        label = "insecure" if cfg.insecure else f"roots from {cfg.root or 'system trust'}"
        return ClientTLS(
            context,
            hostname=cfg.hostname,
            subject_alt_names=tuple(cfg.subject_alt_names or ()) if check_names else (),
            label=label,
        )

    def server(
        self, listeners: Sequence[ListenerTLS | None], hostnames: Sequence[str], path: str
    ) -> ServerTLS | None:
        """The HTTPS listeners of one bind (``path`` is the bind's)."""
        contexts: list[ssl.SSLContext | None] = []
        before = len(self.errors)
        for i, cfg in enumerate(listeners):
            if cfg is None:
                contexts.append(None)
                continue
            at = f"{path}.listeners[{i}].tls"
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
            context.minimum_version = _VERSIONS[cfg.min_tls_version or "TLS_V1_2"]
            if cfg.max_tls_version is not None:
                context.maximum_version = _VERSIONS[cfg.max_tls_version]
            self._load_chain(context, cfg.cert, cfg.key, at)
            if cfg.root is not None:
                self._load_roots(context, cfg.root, f"{at}.root")
                context.verify_mode = ssl.CERT_REQUIRED
            context.set_alpn_protocols(HTTP_ONLY)
            contexts.append(context)
        # SNI can switch the certificate, not the rest of the handshake: the
        # listeners of one bind must agree on client certificates and versions.
        shared = {(c.root, c.min_tls_version, c.max_tls_version) for c in listeners if c}
        if len(shared) > 1:
            self.errors.append(
                f"{path}.listeners: HTTPS listeners on one bind must have the same tls.root, "
                "minTLSVersion and maxTLSVersion (only the certificate is chosen by SNI)"
            )
        if len(self.errors) > before or not any(contexts):
            return None
        tls = ServerTLS(tuple(h.lower() for h in hostnames), tuple(contexts))
        for each in contexts:
            if each is not None:
                each.sni_callback = tls._pick
        return tls

    def _read(self, file: str, at: str) -> bytes | None:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            self.errors.append(f"{at}: cannot read file {file!r}: {exc.strerror or exc}")
            return None
        if len(data) > MAX_PEM_BYTES:
            self.errors.append(f"{at}: file {file!r} is larger than {MAX_PEM_BYTES} bytes")
            return None
        return data

    def _load_roots(self, context: ssl.SSLContext, file: str, at: str) -> None:
        data = self._read(file, at)
        if data is None:
            return
        try:
            certs = x509.load_pem_x509_certificates(data)
            context.load_verify_locations(cadata=data.decode("ascii", "replace"))
        except (ValueError, ssl.SSLError):
            self.errors.append(f"{at}: {file!r} is not a PEM certificate bundle")
            return
        if not certs:  # pragma: no cover - cryptography raises for an empty bundle
            self.errors.append(f"{at}: {file!r} holds no certificate")

    def _load_chain(self, context: ssl.SSLContext, cert: str, key: str, at: str) -> None:
        cert_data, key_data = self._read(cert, f"{at}.cert"), self._read(key, f"{at}.key")
        if cert_data is None or key_data is None:
            return
        try:
            x509.load_pem_x509_certificates(cert_data)
        except ValueError:
            self.errors.append(f"{at}.cert: {cert!r} is not a PEM certificate chain")
            return
        try:
            serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            self.errors.append(f"{at}.key: {key!r} is encrypted (agentgw needs it unencrypted)")
            return
        except ValueError:
            self.errors.append(f"{at}.key: {key!r} is not a PEM private key")
            return
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(f"{at}.key: {key!r} does not match the certificate ({_why(exc)})")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc).split("(_ssl.c", 1)[0].strip() or type(exc).__name__


def describe(exc: BaseException | None) -> str:
    """A TLS failure in words, for the log."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return _why(exc)
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return describe(exc.__cause__)
    if isinstance(exc, OSError | trio.BrokenResourceError):
        return str(exc) or "connection lost"
    return "connection closed during the handshake"


# ---------------------------------------------------------------- client side


async def open_tls(
    stream: trio.SocketStream, tls: ClientTLS, host: str, port: int
) -> trio.SSLStream[trio.SocketStream]:
    """The handshake over ``stream``; the caller bounds it in time.

    Raises:
        UpstreamUnavailable: the handshake failed or the certificate cannot
            be verified (the reason is the error's detail).
    """
    name = tls.hostname or host
    ssl_stream = trio.SSLStream(stream, tls.context, server_hostname=name, https_compatible=True)
    where = f"{host}:{port}"
    try:
        await ssl_stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise UpstreamUnavailable(
            "upstream unavailable", detail=f"{where}: TLS handshake failed: {describe(exc)}"
        ) from None
    if tls.subject_alt_names:
        names = _peer_names(ssl_stream.getpeercert() or {})
        if not any(_name_matches(want, names) for want in tls.subject_alt_names):
            raise UpstreamUnavailable(
                "upstream unavailable",
                detail=f"{where}: TLS handshake failed: certificate verify failed: "
                f"none of subjectAltNames {list(tls.subject_alt_names)} is in the certificate "
                f"({', '.join(n for _, n in names) or 'no names'})",
            )
    return ssl_stream


def _peer_names(cert: dict[str, object]) -> list[tuple[str, str]]:
    entries = cert.get("subjectAltName") or ()
    return [(str(kind), str(value)) for kind, value in entries]  # type: ignore[attr-defined]


def _name_matches(want: str, names: list[tuple[str, str]]) -> bool:
    want = want.strip()
    if "://" in want:
        return ("URI", want) in names
    try:
        ip = ipaddress.ip_address(want)
    except ValueError:
        ip = None
    for kind, value in names:
        if ip is not None and kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) == ip:
                    return True
            except ValueError:
                continue
        elif ip is None and kind == "DNS" and _dns_matches(value, want):
            return True
    return False


def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


# ---------------------------------------------------------------- server side


async def _refuse_plaintext(stream: trio.SocketStream) -> None:
    """Answer 400 and close gracefully: the request is still unread, and
    closing over unread bytes would reset the connection before the client
    reads the answer."""
    try:
        await stream.send_all(PLAINTEXT_ANSWER)
        await stream.send_eof()
        with trio.move_on_after(0.5):
            total = 0
            while total < 1 << 20 and (data := await stream.receive_some(65536)):
                total += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def accept_tls(
    stream: trio.SocketStream, tls: ServerTLS, client: str
) -> tuple[trio.SSLStream[trio.SocketStream], ConnectionTLS] | None:
    """Run the server handshake on an accepted connection, within
    ``tls.handshake_timeout``. None when the connection is over: the client
    spoke plaintext (it got a 400), sent garbage, failed the handshake or
    stalled. Closing ``stream`` is the caller's."""
    with trio.move_on_after(tls.handshake_timeout) as scope:
        try:
            first = await stream.socket.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            logger.debug("TLS connection from %s failed: %s", client, exc)
            return None
        if not first:
            logger.debug("TLS connection from %s closed before the handshake", client)
            return None
        if looks_like_http(first):
            logger.debug("plain HTTP from %s on an HTTPS port: refused", client)
            await _refuse_plaintext(stream)
            return None
        ssl_stream = trio.SSLStream(stream, tls.first, server_side=True, https_compatible=True)
        try:
            await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("TLS handshake from %s failed: %s", client, describe(exc))
            return None
    if scope.cancelled_caught:
        logger.debug("TLS handshake from %s timed out", client)
        return None
    context = ssl_stream.context
    listener = next(i for i, c in enumerate(tls.contexts) if c is context)
    der = ssl_stream.getpeercert(binary_form=True)
    peer = None
    if der:
        try:
            peer = PeerCertificate.from_der(der)
        except ValueError as exc:  # verified by OpenSSL, unreadable to cryptography
            logger.warning("client certificate from %s cannot be read: %s", client, exc)
    return ssl_stream, ConnectionTLS(listener, peer)
