"""agentgateway's naming of federated tools, prompts and resources.

How this works (agentgateway ``crates/agentgateway/src/mcp/handler.rs`` and
``apps.rs``):

* Tool and prompt names become ``<target>_<name>``; a call is routed by
  splitting at the first ``_``. Target names cannot contain ``_`` or ``+``
  (config validation), so the first separator is always the gateway's and a
  tool name may itself contain ``_``.
* Resource URIs and URI templates that have a scheme become
  ``<target>+<uri>`` (``svc+memo:x``, ``svc+svn+ssh://h/r``); scheme-less
  ones are left alone. ``ui://`` URIs (MCP Apps) keep their scheme and carry
  the target in the authority: ``ui://<target>+<rest>``.
* ``prefixMode`` (default ``conditional``): with ``conditional`` names are
  prefixed only when the backend has more than one target, with ``always``
  even for one, with ``never`` not at all (then, with several targets, a
  call's name names no target and is refused as unknown). URIs follow the
  same rule except under ``never`` with several targets: they are still
  prefixed, so that reads can be routed.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Literal

PrefixMode = Literal["conditional", "always", "never"]

NAME_SEPARATOR = "_"
URI_SEPARATOR = "+"

_UI_SCHEME = "ui://"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_AUTHORITY_END = re.compile(r"[/?#]")

# list method -> (items key, field renamed, field is a URI)
LIST_FIELDS: dict[str, tuple[str, str, bool]] = {
    "tools/list": ("tools", "name", False),
    "prompts/list": ("prompts", "name", False),
    "resources/list": ("resources", "uri", True),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", True),
}


def should_prefix(mode: PrefixMode | None, n_targets: int, *, uris: bool = False) -> bool:
    """Whether clients see target prefixes.

    Args:
        mode: the backend's ``prefixMode``; None is ``conditional``.
        n_targets: how many targets the backend has.
        uris: decide for resource URIs rather than tool and prompt names.
    """
    if mode == "always":
        return True
    if mode == "never" and not uris:
        return False
    return n_targets != 1


def prefix_name(target: str, name: str) -> str:
    """``<target>_<name>``."""
    return f"{target}{NAME_SEPARATOR}{name}"


def split_name(name: str, targets: Collection[str], prefix: bool = True) -> tuple[str, str] | None:
    """The target and upstream name a client-visible name stands for.

    Args:
        name: the name the client sent.
        targets: the backend's target names.
        prefix: whether names are prefixed (``should_prefix``).

    Returns:
        ``(target, name)``, or None when the name has no known target's
        prefix, or when names are not prefixed and there are several
        targets (the owner must then be found by listing).
    """
    if not prefix:
        if len(targets) == 1:
            return next(iter(targets)), name
        return None
    target, sep, rest = name.partition(NAME_SEPARATOR)
    if sep and rest and target in targets:
        return target, rest
    return None


def _ui_rest(uri: str) -> str | None:
    if uri[: len(_UI_SCHEME)].lower() == _UI_SCHEME:
        return uri[len(_UI_SCHEME) :]
    return None


def prefix_uri(target: str, uri: str) -> str:
    """``<target>+<uri>``, ``ui://<target>+<rest>``, or ``uri`` unchanged
    when it has no scheme."""
    rest = _ui_rest(uri)
    if rest is not None:
        return f"{_UI_SCHEME}{target}{URI_SEPARATOR}{rest}"
    if _SCHEME.match(uri):
        return f"{target}{URI_SEPARATOR}{uri}"
    return uri


def split_uri(uri: str, targets: Collection[str], prefix: bool = True) -> tuple[str, str] | None:
    """The target and upstream URI a client-visible URI stands for.

    Args:
        uri: the URI the client sent.
        targets: the backend's target names.
        prefix: whether URIs are prefixed (``should_prefix(..., uris=True)``).

    Returns:
        ``(target, uri)``, or None when no known target can be read from it.
    """
    if not prefix:
        if len(targets) == 1:
            return next(iter(targets)), uri
        return None
    rest = _ui_rest(uri)
    if rest is not None:
        end = _AUTHORITY_END.search(rest)
        authority = rest[: end.start()] if end else rest
        target, sep, _ = authority.partition(URI_SEPARATOR)
        if not sep or target not in targets:
            return None
        return target, _UI_SCHEME + rest[len(target) + 1 :]
    target, sep, original = uri.partition(URI_SEPARATOR)
    # A ui:// resource is only ever addressed as ui://<target>+...
    if not sep or target not in targets or _ui_rest(original) is not None:
        return None
    return target, original


def rewrite_list_result(
    method: str, result: dict[str, Any], target: str, prefix: bool
) -> dict[str, Any]:
    """Prefix the names or URIs of one target's list result.

    Renames ``tools[].name``, ``prompts[].name``, ``resources[].uri`` or
    ``resourceTemplates[].uriTemplate``; everything else, and any item that
    is not an object with a string there, is kept as it is. The input is not
    modified.

    Raises:
        ValueError: ``method`` is not one of ``LIST_FIELDS``.
    """
    try:
        key, field, is_uri = LIST_FIELDS[method]
    except KeyError:
        raise ValueError(f"not a list method: {method!r}")
    items = result.get(key)
    if not prefix or not isinstance(items, list):
        return dict(result)
    rename = prefix_uri if is_uri else prefix_name
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(field), str):
            item = {**item, field: rename(target, item[field])}
        out.append(item)
    return {**result, key: out}
