"""Session ids that carry the upstream sessions, sealed with AES-256-GCM.

How this works: the ``Mcp-Session-Id`` agentgw gives a client is the
session's state itself (each target's upstream session id, the protocol
version, a random ``sid``), as compact JSON, encrypted and authenticated:
``base64url(nonce || ciphertext || tag)`` without padding, with a random
96-bit nonce and the associated data ``b"agentgw-session-v1"``. Any gateway
holding the key can resume the session after a restart or on another
replica, as agentgateway does with its ``config.session.key``. Without a
configured key, a random per-process key is used and sessions end with the
process.

agentgateway's tokens are not interchangeable with these: it accepts a hex
key only, encodes with padded standard base64, uses no associated data, and
falls back to unencrypted base64 when no key is set.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import secrets
import time
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentgw.errors import SESSION_NOT_FOUND, ClientError

TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 4096
ASSOCIATED_DATA = b"agentgw-session-v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


class InvalidSession(ClientError):
    """The session id is not one this gateway issued, or no longer valid.

    404, so that an MCP client starts a new session (a session sealed with
    another process's random key is simply over).
    """

    status = 404
    code = SESSION_NOT_FOUND


def _new_sid() -> str:
    return secrets.token_urlsafe(16)


@attrs.frozen(kw_only=True)
class SessionState:
    """What a session id encodes.

    ``targets`` maps each target name to its upstream session id, or None
    for a target that gave none (stateless upstreams).
    """

    version: int = TOKEN_VERSION
    created: float = attrs.field(factory=time.time)
    targets: dict[str, str | None]
    protocol_version: str
    sid: str = attrs.field(factory=_new_sid)

    @classmethod
    def new(
        cls,
        *,
        targets: dict[str, str | None],
        protocol_version: str,
        sid: str | None = None,
        created: float | None = None,
    ) -> SessionState:
        """A state of the current version; ``sid`` random and ``created``
        now unless given."""
        return cls(
            targets=dict(targets),
            protocol_version=protocol_version,
            sid=_new_sid() if sid is None else sid,
            created=time.time() if created is None else created,
        )


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    if not _BASE64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None
    # Refuse non-canonical spellings (set padding bits) so a token has one form.
    return raw if _b64encode(raw) == text else None


def parse_key(text: str) -> bytes:
    """A 32-byte key from 64 hex digits or base64 (as ``config.session.key``).

    Raises:
        ValueError: neither form, or not 32 bytes.
    """
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("session key is neither 64 hex digits nor base64")
    if len(key) != KEY_BYTES:
        raise ValueError(f"session key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def _state_from(doc: Any) -> SessionState:
    if not isinstance(doc, dict) or set(doc) != {"v", "c", "t", "p", "s"}:
        raise InvalidSession("malformed session")
    version, created, targets = doc["v"], doc["c"], doc["t"]
    if type(version) is not int or version != TOKEN_VERSION:
        raise InvalidSession("unsupported session version")
    if (
        not isinstance(created, int | float)
        or isinstance(created, bool)
        or not math.isfinite(created)
        or not isinstance(targets, dict)
        or not all(v is None or isinstance(v, str) for v in targets.values())
        or not isinstance(doc["p"], str)
        or not isinstance(doc["s"], str)
    ):
        raise InvalidSession("malformed session")
    return SessionState(
        version=version,
        created=float(created),
        targets=dict(targets),
        protocol_version=doc["p"],
        sid=doc["s"],
    )


@attrs.define(eq=False, repr=False)
class SessionCodec:
    """Seals ``SessionState`` into session ids and opens them."""

    key: bytes = attrs.field(repr=False)
    _aead: AESGCM = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"session key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(self.key)

    def __repr__(self) -> str:
        return "<SessionCodec AES-256-GCM>"

    @classmethod
    def from_config(cls, key: str | None) -> SessionCodec:
        """The codec for ``config.session.key``, or a random per-process key.

        Raises:
            ValueError: the key is not 32 bytes as 64 hex digits or base64
                (the config converter checks this first).
        """
        return cls(os.urandom(KEY_BYTES) if key is None else parse_key(key))

    def encode(self, state: SessionState) -> str:
        """The session id for ``state``.

        Raises:
            ValueError: the id would be longer than ``MAX_TOKEN_CHARS``.
        """
        doc = {
            "v": state.version,
            "c": state.created,
            "t": state.targets,
            "p": state.protocol_version,
            "s": state.sid,
        }
        plain = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plain.encode("utf-8"), ASSOCIATED_DATA)
        token = _b64encode(nonce + sealed)
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"session id longer than {MAX_TOKEN_CHARS} characters")
        return token

    def decode(self, token: str) -> SessionState:
        """Open a session id.

        Raises:
            InvalidSession: forged, truncated, tampered, too long, of
                another version, or sealed with another key.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise InvalidSession("invalid session id")
        raw = _b64decode(token)
        if raw is None or len(raw) < NONCE_BYTES + TAG_BYTES:
            raise InvalidSession("invalid session id")
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ASSOCIATED_DATA)
        except InvalidTag:
            raise InvalidSession("invalid session id")
        try:
            doc = json.loads(plain.decode("utf-8"))
        except ValueError:
            raise InvalidSession("malformed session")
        return _state_from(doc)
