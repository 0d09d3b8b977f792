"""`python -m agentgw` with the JWT token cache off, for scenario `mcp-auth`.

agentgw has no config key for the size of its verified-token cache yet; the
size is `agentgw.policy.jwt.Verifier(cache_size=...)`, and `0` turns it off.
The attrs default of that field is bound when the class is defined, so
assigning `DEFAULT_CACHE_SIZE = 0` would change nothing. Instead this wraps
`Verifier.__init__` so that every verifier the gateway builds gets
`cache_size=0`, then runs agentgw's own `main()` with the same arguments.
Each verifier built prints `bench: JWT token cache off`, which the harness
checks for before it loads the gateway.

Run it from the repository's root: `python -m bench.agentgw_nocache -c CONFIG`.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from agentgw.policy import jwt

MARKER = "bench: JWT token cache off"


def _patch_verifier() -> None:
    init = jwt.Verifier.__init__

    @functools.wraps(init)
    def init_without_cache(self: jwt.Verifier, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "cache_size": 0})
        print(f"{MARKER} ({self!r})", flush=True)

    jwt.Verifier.__init__ = init_without_cache  # type: ignore[method-assign]


if __name__ == "__main__":
    _patch_verifier()
    from agentgw.cli import main

    sys.exit(main(sys.argv[1:]))
