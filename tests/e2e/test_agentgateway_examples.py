"""Configs of our own for each of agentgateway's MCP examples
(``examples/mcp-*/config*.yaml`` in its repository), each exercising the same
feature: ``agentgw --validate-only`` accepts it, or refuses it with the
reason docs/configuration.md gives."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "tests" / "configs" / "agentgateway-examples"
DOCS = ROOT / "docs" / "configuration.md"

# File -> the errors agentgw gives ([] when it loads).
EXPECTED: dict[str, list[str]] = {
    "mcp-basic.yaml": [],
    "mcp-multiplex.yaml": [],
    "mcp-apps.yaml": [],
    "mcp-apps-multiplex.yaml": [],
    "mcp-authorization.yaml": [],
    "mcp-authentication.yaml": [],
    "mcp-openapi.yaml": [
        "binds[0].listeners[0].routes[0].backends[0].mcp.targets[0].openapi:"
        " not supported by agentgw"
    ],
    "mcp-telemetry.yaml": [],
    "mcp-tls.yaml": [],
}


def test_every_config_has_an_expectation() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


def _write_certificate(directory: Path) -> None:
    """A self-signed certificate and its key, for the HTTPS listener."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_validate_only(name: str, tmp_path: Path) -> None:
    # Files a config names (jwks.json, cert.pem) are read from the working
    # directory, as agentgateway reads them.
    shutil.copytree(CONFIGS, tmp_path, dirs_exist_ok=True)
    _write_certificate(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "agentgw", "--validate-only", "-f", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = EXPECTED[name]
    if not expected:
        assert (run.returncode, run.stdout.strip()) == (0, "configuration is valid"), run.stderr
        return
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert lines[0] == "invalid configuration:"
    assert [line.strip() for line in lines[1:]] == expected


def test_docs_table_lists_every_config() -> None:
    # The docs table says, for each example, whether it loads, and why not.
    text = DOCS.read_text()
    section = text.split("## agentgateway's MCP examples", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w-]+\.yaml)` \| (\w+)", section, re.MULTILINE))
    assert rows == {
        name: ("loads" if not errors else "refused") for name, errors in EXPECTED.items()
    }
