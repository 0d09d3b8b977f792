"""deploy/: the Dockerfile and the Kubernetes manifests point at what the gateway serves.

Ports, paths and defaults are read from agentgw's code, never repeated here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentgw.cli import SESSION_KEY_ENV, with_session_key_from_env
from agentgw.config.load import effective_binds, load_config, parse_config
from agentgw.config.model import Config
from agentgw.errors import ConfigError
from agentgw.server import management
from agentgw.server.management import LIVE_PATH, METRICS_PATHS, READY_PATH

DEPLOY = Path(__file__).parents[1] / "deploy"
K8S = DEPLOY / "k8s"


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s, by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") and doc["kind"] != "Kustomization":
                assert doc["kind"] not in out, f"two {doc['kind']} objects"
                out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def config(k8s: dict[str, dict[str, Any]]) -> Config:
    # The ConfigMap's file is a config agentgw accepts.
    return parse_config(k8s["ConfigMap"]["data"]["config.yaml"], source="configmap.yaml")


def addresses(config: Config) -> dict[str, management.ManagementAddress]:
    return {a.name: a for a in management.resolve(config.config)}


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def port_named(c: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(port)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(listed) == sorted(files)


def test_probes_hit_the_readiness_servers_paths(k8s: dict[str, Any], config: Config) -> None:
    c = container(k8s)
    readiness = addresses(config)["readiness"]
    assert readiness.host == "0.0.0.0"  # the kubelet probes the pod's IP
    assert port_named(c, c["readinessProbe"]["httpGet"]["port"]) == readiness.port
    assert c["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert c["startupProbe"]["httpGet"]["path"] == READY_PATH
    assert port_named(c, c["livenessProbe"]["httpGet"]["port"]) == readiness.port
    assert c["livenessProbe"]["httpGet"]["path"] == LIVE_PATH


def test_container_ports_are_the_configs(k8s: dict[str, Any], config: Config) -> None:
    c = container(k8s)
    found = addresses(config)
    assert port_named(c, "metrics") == found["stats"].port
    assert port_named(c, "admin") == found["admin"].port
    (bind,) = effective_binds(config)
    assert port_named(c, "http") == bind.port
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == found["stats"].port
    assert annotations["prometheus.io/path"] in METRICS_PATHS


def test_the_service_reaches_traffic_stats_and_admin(k8s: dict[str, Any]) -> None:
    service, c = k8s["Service"], container(k8s)
    names = {p["name"] for p in c["ports"]}
    targets = {p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http", "metrics", "admin"} and targets <= names
    assert service["spec"]["selector"] == k8s["Deployment"]["spec"]["selector"]["matchLabels"]


def test_the_grace_period_covers_pre_stop_and_the_drain(
    k8s: dict[str, Any], config: Config
) -> None:
    c = container(k8s)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + config.config.connection_termination_deadline + 1


def test_the_session_key_comes_from_the_secret(k8s: dict[str, Any]) -> None:
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    (env,) = [e for e in container(k8s)["env"] if e["name"] == SESSION_KEY_ENV]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_the_config_is_mounted_as_a_directory(k8s: dict[str, Any]) -> None:
    # A subPath mount never sees the ConfigMap's updates.
    c = container(k8s)
    args = c["args"]
    path = Path(args[args.index("-f") + 1])
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert "subPath" not in mount and Path(mount["mountPath"]) == path.parent
    volumes = k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "config"]
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]


def test_pdb_and_hpa_point_at_the_deployment(k8s: dict[str, Any]) -> None:
    labels = k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] > k8s["PodDisruptionBudget"]["spec"]["minAvailable"]
    assert "cpu" in container(k8s)["resources"]["requests"]  # the HPA needs it


def test_the_pod_runs_as_nobody_in_particular(k8s: dict[str, Any]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container(k8s)["securityContext"]["allowPrivilegeEscalation"] is False


def test_dockerfile_is_slim_non_root_and_checks_readiness() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b.endswith("-slim") for b in bases)
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert user not in ("root", "0")
    readiness = management.resolve(load_config(DEPLOY / "config.yaml").config)[0]
    assert readiness.name == "readiness"
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.M | re.S)
    assert healthcheck is not None
    assert f"127.0.0.1:{readiness.port}{READY_PATH}" in healthcheck.group(1)
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", text, re.M)[0].split()}
    defaults = {management.parse_address(a)[1] for a in management.DEFAULTS.values()}
    (bind,) = effective_binds(load_config(DEPLOY / "config.yaml"))
    assert exposed == defaults | {bind.port}
    assert bind.address == "0.0.0.0"  # reachable from outside the container


def test_session_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config("mcp: {targets: [{name: a, stdio: {cmd: x}}]}")
    monkeypatch.delenv(SESSION_KEY_ENV, raising=False)
    assert with_session_key_from_env(config) is config
    monkeypatch.setenv(SESSION_KEY_ENV, "cd" * 32 + "\n")
    session = with_session_key_from_env(config).config.session
    assert session is not None and session.key == "cd" * 32
    monkeypatch.setenv(SESSION_KEY_ENV, "REPLACE-WITH-64-HEX-DIGITS")
    with pytest.raises(ConfigError) as info:
        with_session_key_from_env(config)
    (error,) = info.value.errors
    assert error.startswith("SESSION_KEY: expected 32 bytes")
    assert "REPLACE" not in error  # never echoes the value
