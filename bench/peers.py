"""The peers the `mcp` and `http` scenarios compare agentgw with: install them, start them.

How this works: each peer is pinned to one exact version and installed the
first time a run needs it, into bench/.peers/ (not in git): FastMCP and
mcp-proxy each in a venv of their own (they pin different MCP SDKs, neither of
them agentgw's), supergateway under bench/.peers/node with npm. A peer whose
installed version is the pinned one is not installed again. nginx is the
Debian package, installed with apt-get when it is missing and we are root.
Every failure, to install or to start, is a `StartError` naming the peer, so
the scenario reports it as a start failure of that system alone.

Each `start_*` starts one peer on a free port on 127.0.0.1, pinned to `cpu`,
registers its stop on the stack, and returns it once it answers HTTP.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.systems import Service, StartError, free_port, start_service
from bench.wrk import apt_install, can_apt_install

BENCH = Path(__file__).resolve().parent
PEERS_DIR = BENCH / ".peers"
FASTMCP_VERSION = "4.1.2"
MCP_PROXY_VERSION = "0.13.0"
SUPERGATEWAY_VERSION = "4.0.0"
FASTMCP_LAUNCHER = BENCH / "peer_fastmcp.py"
INSTALL_TIMEOUT_S = 600

# How the FastMCP proxy is configured: see bench/peer_fastmcp.py.
FASTMCP_SESSION = "reuse"
FASTMCP_JSON_RESPONSE = True

NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(stack: ExitStack, upstream_port: int, cpu: int | None) -> Service:
    """nginx passing every request through to 127.0.0.1:`upstream_port`."""
    nginx = ensure_nginx()
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    stack.callback(shutil.rmtree, prefix, ignore_errors=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(prefix=prefix, port=port, upstream_port=upstream_port))
    argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
    service = start_service("nginx", argv, port=port, cpu=cpu)
    stack.callback(service.stop)
    return service


def ensure_nginx() -> str:
    """The path of nginx, installing the Debian package when it is missing and we are root."""
    found = _which_sbin("nginx")
    if found:
        return found
    if not can_apt_install():
        raise StartError(
            "nginx failed to start: it is not installed: run `sudo apt-get install -y nginx`"
        )
    print("nginx not found: installing it with apt-get", flush=True)
    if not apt_install("nginx") or not (found := _which_sbin("nginx")):
        raise StartError("nginx failed to start: `apt-get install -y nginx` failed")
    return found


def nginx_version() -> str:
    found = _which_sbin("nginx")
    if found is None:
        return "?"
    done = subprocess.run([found, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def _which_sbin(name: str) -> str | None:
    # A user's PATH may lack /usr/sbin, where Debian puts nginx.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def start_fastmcp(stack: ExitStack, upstream_url: str, cpu: int | None) -> Service:
    """FastMCP's proxy of `upstream_url`, configured as FASTMCP_SESSION and
    FASTMCP_JSON_RESPONSE say (bench/peer_fastmcp.py)."""
    venv = _python_peer("fastmcp", "fastmcp", FASTMCP_VERSION)
    port = free_port()
    argv = [
        str(venv / "bin" / "python"),
        str(FASTMCP_LAUNCHER),
        "--upstream",
        upstream_url,
        "--port",
        str(port),
        "--session",
        FASTMCP_SESSION,
    ]
    if FASTMCP_JSON_RESPONSE:
        argv.append("--json-response")
    service = start_service("fastmcp", argv, port=port, cpu=cpu, ready_timeout_s=60)
    stack.callback(service.stop)
    return service


def fastmcp_description() -> str:
    session = (
        "one upstream session reused for every request (a connected `fastmcp.Client(url, "
        'mode="legacy")` passed to `create_proxy`)'
        if FASTMCP_SESSION == "reuse"
        else 'a new upstream session per request (`create_proxy(url, mode="legacy")`, '
        "FastMCP's default)"
    )
    answers = "application/json answers" if FASTMCP_JSON_RESPONSE else "SSE answers"
    return f"FastMCP {FASTMCP_VERSION}: {session}; {answers}; uvicorn log level warning"


def start_mcp_proxy(
    stack: ExitStack, stdio_command: list[str], cpu: int | None, *, upstream_marker: str
) -> Service:
    """mcp-proxy serving Streamable HTTP at /mcp in front of one stdio server.

    Args:
        upstream_marker: a string of the stdio server's command line, to leave its
            CPU out of the proxy's (see `Service.cost_excludes`).
    """
    venv = _python_peer("mcp-proxy", "mcp-proxy", MCP_PROXY_VERSION)
    port = free_port()
    argv = [
        str(venv / "bin" / "mcp-proxy"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        "--",
        *stdio_command,
    ]
    service = start_service(
        "mcp-proxy", argv, port=port, cpu=cpu, ready_timeout_s=60, cost_excludes=(upstream_marker,)
    )
    stack.callback(service.stop)
    return service


def start_supergateway(
    stack: ExitStack, stdio_command: list[str], cpu: int | None, *, upstream_marker: str
) -> Service:
    """supergateway serving stateful Streamable HTTP at /mcp in front of one stdio
    server (`upstream_marker` as for `start_mcp_proxy`)."""
    script = _supergateway()
    port = free_port()
    argv = [
        _node(),
        str(script),
        "--stdio",
        shlex.join(stdio_command),
        "--outputTransport",
        "streamableHttp",
        "--port",
        str(port),
        "--stateful",
        "--logLevel",
        "none",
    ]
    service = start_service(
        "supergateway", argv, port=port, cpu=cpu, cost_excludes=(upstream_marker,)
    )
    stack.callback(service.stop)
    return service


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise StartError("supergateway failed to start: node is not on PATH")
    return node


def _supergateway() -> Path:
    prefix = PEERS_DIR / "node"
    package = prefix / "node_modules" / "supergateway"
    if _npm_version(package) != SUPERGATEWAY_VERSION:
        npm = shutil.which("npm")
        if npm is None:
            raise StartError("supergateway failed to start: npm is not on PATH to install it")
        spec = f"supergateway@{SUPERGATEWAY_VERSION}"
        _install(
            "supergateway",
            spec,
            [npm, "install", "--prefix", str(prefix), spec, "--no-audit", "--no-fund"],
        )
        if _npm_version(package) != SUPERGATEWAY_VERSION:
            raise StartError(f"supergateway failed to start: {spec} is not in {package} after npm")
    return package / "dist" / "index.js"


def _npm_version(package: Path) -> str | None:
    try:
        return str(json.loads((package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _python_peer(name: str, package: str, version: str) -> Path:
    """The venv bench/.peers/<name> with `package`==`version` in it, made if missing."""
    venv = PEERS_DIR / name
    if _has_distribution(venv, package, version):
        return venv
    python = venv / "bin" / "python"
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        _install(name, f"a venv for {name}", [base, "-m", "venv", "--clear", str(venv)])
    spec = f"{package}=={version}"
    _install(name, spec, [str(python), "-m", "pip", "install", "-q", "--no-input", spec])
    if not _has_distribution(venv, package, version):
        raise StartError(f"{name} failed to start: {spec} is not in {venv} after pip install")
    return venv


def _has_distribution(venv: Path, package: str, version: str) -> bool:
    dist = f"{package.replace('-', '_')}-{version}.dist-info"
    return any(venv.glob(f"lib/python3*/site-packages/{dist}"))


def _install(name: str, what: str, argv: list[str]) -> None:
    print(f"{name}: installing {what} into {PEERS_DIR} ...", flush=True)
    started = time.monotonic()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError(f"{name} failed to start: could not install {what}: {exc}") from None
    if done.returncode != 0:
        # pip's warnings come first; the error is at the end.
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise StartError(
            f"{name} failed to start: could not install {what} "
            f"(`{shlex.join(argv)}` exited with {done.returncode}): {tail}"
        )
    print(f"{name}: installed {what} in {time.monotonic() - started:.0f} s", flush=True)
