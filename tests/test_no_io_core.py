"""The pure layers must not import trio (STYLE.md, habit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agentgw"
PURE = ("wire", "mcp", "policy", "config")


def pure_modules() -> list[str]:
    found = ["agentgw.routing"]
    for sub in PURE:
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join(parts))
    return found


# agentgw/__init__.py imports the Gateway (and trio): stand in an empty
# package so that only the pure modules' own imports run.
SCRIPT = """
import importlib, sys, types
package = types.ModuleType("agentgw")
package.__path__ = [sys.argv[1]]
sys.modules["agentgw"] = package
for name in sys.argv[2:]:
    importlib.import_module(name)
    if "trio" in sys.modules:
        sys.exit(f"importing {name} imported trio")
"""


def test_pure_modules_do_not_import_trio() -> None:
    modules = pure_modules()
    assert {"agentgw.wire.sse", "agentgw.mcp.merge", "agentgw.config.model"} <= set(modules)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(PACKAGE), *modules],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
