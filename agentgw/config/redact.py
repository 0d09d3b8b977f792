"""The running config as a document with every secret taken out (no I/O).

``redacted_document`` unstructures a ``Config`` (camelCase keys, defaults
left out) and replaces with ``"<redacted>"``, as agentgateway's config dump
does:

* the value of any key whose name ends in key, secret, password, passphrase,
  token or credentials (``session.key``, ``clientSecret``, a stdio target's
  ``GITHUB_TOKEN``, backendTLS ``key``...), whatever it holds;
* the value of a header named in ``sensitive`` (authorization,
  proxy-authorization, cookie, set-cookie, and ``config.sensitiveHeaders``)
  wherever headers are configured;
* inline JWKS documents, every value of ``config.tracing.headers`` (collector
  credentials) and every value of a stdio target's ``env``;
* the password in a URL's user info (``http://user:<redacted>@host``).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Any, Final

from agentgw.config.converter import unstructure_config
from agentgw.config.model import Config

REDACTED: Final = "<redacted>"
ALWAYS_SENSITIVE: Final = ("authorization", "proxy-authorization", "cookie", "set-cookie")
_SECRET_NAME = re.compile(r"(key|secret|password|passphrase|token|credentials)$")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
# Maps whose every value is a secret, by the key that holds them.
_ALL_VALUES_SECRET: Final = {("tracing", "headers"), ("stdio", "env")}
# Names that look secret and are not: an MCP rate limit's CEL key.
_NOT_SECRET: Final = {("rateLimits", "key")}


def redacted_document(config: Config) -> dict[str, Any]:
    """``config`` as a JSON-ready document without its secrets."""
    sensitive = frozenset(h.lower() for h in (*ALWAYS_SENSITIVE, *config.config.sensitive_headers))
    doc = redact(unstructure_config(config), sensitive)
    assert isinstance(doc, dict)
    return doc


def is_secret_name(name: str) -> bool:
    return _SECRET_NAME.search(_NOT_ALNUM.sub("", name.lower())) is not None


def redact(value: Any, sensitive: Iterable[str], parent: str = "") -> Any:
    """A copy of ``value`` (dicts, lists, scalars) with secrets replaced."""
    sensitive = frozenset(sensitive)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if (parent, name) in _NOT_SECRET:
                out[name] = item
            elif (
                is_secret_name(name)
                or name.lower() in sensitive
                or (parent, name) in _ALL_VALUES_SECRET
                or (parent == "jwks" and name == "inline")
            ):
                out[name] = _redact_all(item) if (parent, name) in _ALL_VALUES_SECRET else REDACTED
            else:
                out[name] = redact(item, sensitive, name)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, sensitive, parent) for item in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return _redact_url(value)
    return value


def _redact_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): REDACTED for k in value}
    return REDACTED


def _redact_url(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
