"""What the gateway knows about one request once its policies passed.

``Gateway`` builds a ``RequestContext`` after routing and the policy
pipeline, and hands it to the MCP endpoint or the host proxy: the request,
the view the policies judged, who the token says the caller is, and the
route's policies. Nothing is attached to ``ServerRequest`` from above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from agentgw.observability.access_log import AccessRecord
from agentgw.policy import authz
from agentgw.policy.pipeline import (
    Identity,
    RequestView,
    RoutePolicies,
    request_variables,
    upstream_credentials,
)
from agentgw.server.connection import ServerRequest
from agentgw.wire.http import MCP_NOT_FORWARDED, Headers, forward_headers

# The client's headers for an upstream: one list, or one per target (when
# ``backendAuth: passthrough`` is set on some targets only).
UpstreamHeaders = Sequence[tuple[bytes, bytes]] | Callable[[str], Sequence[tuple[bytes, bytes]]]


@attrs.define(eq=False)
class RequestContext:
    """One request, with what the policies found out about it."""

    req: ServerRequest
    view: RequestView
    policies: RoutePolicies
    identity: Identity | None = None
    _variables: dict[str, object] | None = None

    @property
    def record(self) -> AccessRecord:
        return self.req.record

    @property
    def client(self) -> tuple[str, int]:
        return self.view.source

    @property
    def rules(self) -> authz.RuleSet | None:
        return self.policies.mcp_authorization

    def variables(self) -> dict[str, object]:
        """The CEL variables of the request (computed once)."""
        if self._variables is None:
            self._variables = request_variables(self.view, self.identity)
        return self._variables

    def allows(self, method: str, kind: authz.ResourceKind, name: str, target: str) -> bool:
        """Whether ``mcpAuthorization`` lets the caller use ``name``."""
        rules = self.rules
        if rules is None:
            return True
        variables = authz.mcp_variables(
            self.variables(), method=method, kind=kind, name=name, target=target
        )
        return isinstance(rules.evaluate(variables), authz.Allow)

    def upstream_headers(
        self, *, drop: frozenset[bytes] = frozenset(), keep_upgrade: bool = False
    ) -> Headers:
        """The client's headers as every upstream of this request gets them:
        the one header filter (``wire.http.forward_headers``), then the
        credential rule (a validated token is not passed on unless
        ``backendAuth: passthrough``)."""
        headers = forward_headers(
            self.req.headers,
            self.client[0],
            proto=self.view.scheme.encode(),
            drop=drop,
            keep_upgrade=keep_upgrade,
        )
        return upstream_credentials(self.policies, self.identity, headers)

    def mcp_headers(self, passthrough_targets: frozenset[str]) -> UpstreamHeaders:
        """The headers for MCP targets. With ``backendAuth: passthrough`` on
        some targets only, those get the caller's validated token back, the
        others do not."""
        headers = self.upstream_headers(drop=MCP_NOT_FORWARDED)
        identity = self.identity
        if identity is None or not passthrough_targets:
            return headers
        token = (b"authorization", b"Bearer " + identity.token.encode("latin-1"))
        with_token = [*(h for h in headers if h[0] != b"authorization"), token]
        return lambda target: with_token if target in passthrough_targets else headers


def with_routing(headers: UpstreamHeaders, method: str, name: str | None) -> UpstreamHeaders:
    """``headers`` with the 2026-07-28 routing headers of a request (the
    client's ``Mcp-Param-*`` headers are among ``headers`` already)."""
    extra = [(b"mcp-method", method.encode())]
    if name is not None:
        extra.append((b"mcp-name", name.encode("utf-8")))
    if callable(headers):
        base = headers
        return lambda target: [*base(target), *extra]
    return [*headers, *extra]
