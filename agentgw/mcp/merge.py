"""Merging the answers of a fan-out to several targets (no I/O).

How list pagination works across targets: agentgateway forwards the
client's cursor to every target and drops every ``nextCursor``, so only the
first page of each target is ever seen. agentgw keeps paging. The cursor it
gives clients is opaque: base64url of ``{"v": 1, "c": {target: cursor}}``,
where a target's value is the cursor to send it next, or null once it has no
more pages. The first list call queries every target without a cursor
(``targets_to_query(None, ...)``); a call with a federated cursor queries
only the targets still pending, each with its own cursor, and targets that
are done are not asked again. So a client paging to the end sees every item
of every target once, in target order page by page. A target that fails
under ``failOpen`` is skipped and counts as done for the rest of that
listing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from agentgw._version import __version__
from agentgw.errors import UpstreamError
from agentgw.mcp import names, versions

FailureMode = Literal["failClosed", "failOpen"]

CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 65536

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

GATEWAY_INSTRUCTIONS = (
    "This server is a gateway in front of several MCP servers: it routes each request"
    " to the server that owns it and merges their answers."
)


class MergeError(UpstreamError):
    """Targets of a fan-out failed and the failure mode says to fail (502).

    Attributes:
        errors: what went wrong, by target name.
    """

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"target {t!r}: {e}" for t, e in self.errors.items())
        super().__init__(detail or "no targets answered")


def apply_failure_mode(
    errors: Mapping[str, str], failure_mode: FailureMode | None, *, any_ok: bool
) -> None:
    """Decide whether failed targets fail the whole request.

    ``failClosed`` (the default, None) fails on any error; ``failOpen``
    skips failed targets and fails only when no target answered.

    Raises:
        MergeError: naming the failed targets.
    """
    if errors and (failure_mode != "failOpen" or not any_ok):
        raise MergeError(errors)


# ---------------------------------------------------------------- initialize


def _merge_into(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if key not in into:
            into[key] = _copy(value)
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge_into(into[key], value)
        elif isinstance(into[key], bool) and isinstance(value, bool):
            into[key] = into[key] or value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def merge_capabilities(capabilities: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Deep union of capability objects: nested objects merge, ``true``
    wins over ``false``, otherwise the first target's value stays."""
    merged: dict[str, Any] = {}
    for caps in capabilities:
        _merge_into(merged, caps)
    return merged


def merge_initialize(
    results: Mapping[str, Mapping[str, Any]],
    *,
    client_version: str | None = None,
    multiplexing: bool | None = None,
) -> dict[str, Any]:
    """One ``initialize`` result for the client out of each target's.

    Args:
        results: each target's ``InitializeResult``, in target order.
        client_version: the version the client asked for; the answer is
            never newer.
        multiplexing: whether the backend has several targets; by default,
            whether ``results`` has several. A single target's result is
            returned as it is.

    Returns:
        The lowest protocol version, the union of capabilities, agentgw as
        ``serverInfo`` and the targets' instructions, each under its target
        name.

    Raises:
        MergeError: a target's result is not an initialize result.
        ValueError: ``results`` is empty, or several results without
            ``multiplexing``.
    """
    if not results:
        raise ValueError("no initialize results to merge")
    if multiplexing is None:
        multiplexing = len(results) > 1
    bad = {
        target: "invalid initialize result"
        for target, result in results.items()
        if not (
            isinstance(result, Mapping)
            and isinstance(result.get("protocolVersion"), str)
            and isinstance(result.get("capabilities", {}), Mapping)
        )
    }
    if bad:
        raise MergeError(bad)
    if not multiplexing:
        if len(results) != 1:
            raise ValueError("several initialize results for one target")
        single: dict[str, Any] = _copy(dict(next(iter(results.values()))))
        return single
    candidates = [str(result["protocolVersion"]) for result in results.values()]
    if client_version in versions.KNOWN_VERSIONS:
        candidates.append(client_version)
    instructions = GATEWAY_INSTRUCTIONS
    for target, result in results.items():
        text = result.get("instructions")
        if isinstance(text, str) and text:
            instructions += f"\n\n[{target}]\n{text}"
    return {
        "protocolVersion": versions.lowest(candidates),
        "capabilities": merge_capabilities(r.get("capabilities", {}) for r in results.values()),
        "serverInfo": {"name": "agentgw", "version": __version__},
        "instructions": instructions,
    }


# ---------------------------------------------------------------- cursors


def encode_cursor(state: Mapping[str, str | None]) -> str:
    """The federated cursor for ``state``: target -> next cursor, None when
    done."""
    doc = {"v": CURSOR_VERSION, "c": dict(state)}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> dict[str, str | None]:
    """Read a federated cursor.

    Returns:
        target -> next cursor, None for targets that are done.

    Raises:
        ValueError: not a cursor agentgw could have issued (bad encoding,
            other version, wrong shape, too long, nothing left to list).
    """
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("invalid cursor")
    if not _BASE64URL.fullmatch(cursor):
        raise ValueError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        raise ValueError("invalid cursor")
    if not isinstance(doc, dict) or doc.get("v") != CURSOR_VERSION or set(doc) != {"v", "c"}:
        raise ValueError("invalid cursor")
    state = doc["c"]
    if not isinstance(state, dict) or not all(
        v is None or isinstance(v, str) for v in state.values()
    ):
        raise ValueError("invalid cursor")
    if all(v is None for v in state.values()):
        raise ValueError("invalid cursor: nothing left to list")
    return state


def next_cursor(pages: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The cursor to give the client after ``pages`` (this round's result of
    each target queried), or None when every one of them is done."""
    state: dict[str, str | None] = {}
    for target, page in pages.items():
        value = page.get("nextCursor")
        state[target] = value if isinstance(value, str) else None
    if all(v is None for v in state.values()):
        return None
    return encode_cursor(state)


def targets_to_query(cursor: str | None, targets: Sequence[str]) -> dict[str, str | None]:
    """Which targets a list call asks, each with the cursor to send it.

    Args:
        cursor: the client's cursor, None on the first call.
        targets: the backend's targets, in order.

    Returns:
        target -> upstream cursor (None: send no cursor). Every target on
        the first call; with a cursor, only the targets still pending that
        the backend still has.

    Raises:
        ValueError: ``cursor`` is not a valid federated cursor.
    """
    if cursor is None:
        return dict.fromkeys(targets)
    state = decode_cursor(cursor)
    return {t: state[t] for t in targets if isinstance(state.get(t), str)}


# ---------------------------------------------------------------- lists


def _page_problem(page: object, key: str, field: str) -> str | None:
    if not isinstance(page, Mapping):
        return "list result is not an object"
    items = page.get(key)
    if not isinstance(items, list):
        return f"list result has no {key!r} array"
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get(field), str):
            return f"{key} item without a string {field!r}"
    cursor = page.get("nextCursor")
    if cursor is not None and not isinstance(cursor, str):
        return "nextCursor is not a string"
    return None


def merge_list(
    method: str,
    pages: Mapping[str, Mapping[str, Any]],
    prefix: bool,
    *,
    errors: Mapping[str, str] | None = None,
    failure_mode: FailureMode | None = None,
    drop_duplicates: bool = False,
) -> dict[str, Any]:
    """One list result out of each target's page.

    Args:
        method: ``tools/list``, ``prompts/list``, ``resources/list`` or
            ``resources/templates/list``.
        pages: each answering target's result, in target order.
        prefix: whether to prefix names or URIs (``names.should_prefix``).
        errors: targets that failed, with why.
        failure_mode: ``failClosed`` (default) or ``failOpen``. A malformed
            page counts as a failure of its target.
        drop_duplicates: drop names listed more than once, as agentgateway
            does for tools and prompts under ``prefixMode: never`` with
            several targets (a call could not be routed). Only the names of
            this round's pages are compared.

    Returns:
        ``{<items key>: [...]}`` with a federated ``nextCursor`` while any
        target has more.

    Raises:
        MergeError: a target failed under ``failClosed``, or every target
            failed.
        ValueError: ``method`` is not a list method.
    """
    try:
        key, field, _ = names.LIST_FIELDS[method]
    except KeyError:
        raise ValueError(f"not a list method: {method!r}")
    failed = dict(errors or {})
    good: dict[str, Mapping[str, Any]] = {}
    for target, page in pages.items():
        problem = _page_problem(page, key, field)
        if problem is None:
            good[target] = page
        else:
            failed[target] = problem
    apply_failure_mode(failed, failure_mode, any_ok=bool(good))
    items: list[dict[str, Any]] = []
    for target, page in good.items():
        items += names.rewrite_list_result(method, dict(page), target, prefix)[key]
    if drop_duplicates:
        counts = Counter(item[field] for item in items)
        items = [item for item in items if counts[item[field]] == 1]
    result: dict[str, Any] = {key: items}
    cursor = next_cursor(good)
    if cursor is not None:
        result["nextCursor"] = cursor
    return result
