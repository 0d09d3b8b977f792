"""Hot reload without sockets: what may change, what carries over, the watcher."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from agentgw.app import Compiled, compile_config, prepare
from agentgw.config import config_from_dict
from agentgw.errors import ConfigError
from agentgw.reload import (
    SESSION_KEY_ENV,
    ConfigSource,
    ConfigWatcher,
    file_state,
    fixed_changes,
    keep_fixed,
)

KEY_A = "aa" * 32
KEY_B = "bb" * 32
LIMIT = {"maxTokens": 2, "tokensPerFill": 1, "fillInterval": "60s"}


def target(name: str, *args: str) -> dict[str, Any]:
    return {"name": name, "stdio": {"cmd": "server", "args": list(args)}}


def route(name: str, *targets: dict[str, Any], **backend: Any) -> dict[str, Any]:
    return {
        "name": name,
        "matches": [{"path": {"pathPrefix": f"/{name}"}}],
        "backends": [{"mcp": {"targets": list(targets), **backend}}],
    }


def config(*routes: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "binds": [{"port": 3000, "listeners": [{"routes": list(routes)}]}],
        "config": {"session": {"key": KEY_A}, **settings},
    }


def mcp_routes(compiled: Compiled) -> dict[str, Any]:
    """The compiled MCP route of each named route."""
    (cb,) = compiled.binds
    out = {}
    for r in cb.bind.listeners[0].routes:
        (mcp,) = cb.routes[id(r)].mcp.values()
        out[r.name] = mcp
    return out


# ---------------------------------------------------------------- what may change


def test_fixed_changes_names_the_keys_read_at_start_up_only_never_their_values() -> None:
    running = config_from_dict(config(route("a", target("t"))))
    changed = config(route("a", target("t")), statsAddr="127.0.0.1:9999")
    changed["config"]["session"]["key"] = KEY_B
    changed["frontendPolicies"] = {
        "tracing": {"host": "collector:4317", "protocol": "http"},
        "tls": {"handshakeTimeout": "3s"},  # reloadable: not named
    }
    changes = fixed_changes(running, config_from_dict(changed))
    assert sorted(changes) == [
        "config.session.key",
        "config.statsAddr",
        "frontendPolicies.tracing.host",
        "frontendPolicies.tracing.protocol",
    ]
    assert not any(KEY_B in c for c in changes)
    assert fixed_changes(running, running) == []


def test_keep_fixed_puts_back_the_running_settings_and_keeps_the_rest() -> None:
    running = config_from_dict(config(route("a", target("t"))))
    new_doc = config(route("a", target("t")), route("b", target("u")), statsAddr="off")
    new_doc["config"]["session"]["key"] = KEY_B
    new_doc["frontendPolicies"] = {"tls": {"handshakeTimeout": "3s"}}
    kept = keep_fixed(config_from_dict(new_doc), running)
    assert kept.config == running.config
    assert kept.frontend_policies.tls.handshake_timeout == 3
    assert len(kept.binds[0].listeners[0].routes) == 2


def test_prepare_on_a_reload_warns_about_fixed_keys_and_keeps_their_values() -> None:
    running = compile_config(config_from_dict(config(route("a", target("t")))))
    new_doc = config(route("a", target("t")))
    new_doc["config"]["session"]["key"] = KEY_B
    new_doc["config"]["http"] = {"maxConnections": 7}
    compiled = prepare(config_from_dict(new_doc), running)
    assert sorted(compiled.warnings) == ["config.http.maxConnections", "config.session.key"]
    assert compiled.config.config == running.config.config
    assert prepare(config_from_dict(config(route("a", target("t")))), running).warnings == []


def test_prepare_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    doc = config(route("a", target("t")))
    doc["binds"][0]["listeners"][0]["routes"][0]["bogus"] = 1
    doc["binds"][0]["listeners"][0]["routes"].append(
        {"name": "p", "backends": [{"host": "no-port"}]}
    )
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        prepare(ConfigSource(file=str(path)))
    assert info.value.errors == [
        "binds[0].listeners[0].routes[0].bogus: unknown key",
        "binds[0].listeners[0].routes[1].backends[0].host: "
        "expected host:port with a port 1..65535, got 'no-port'",
    ]
    path.write_text("binds: [\n  {port: 1\n")
    with pytest.raises(ConfigError) as info:
        prepare(ConfigSource(file=str(path)))
    (error,) = info.value.errors
    assert error.startswith(f"{path}:3:")


# ---------------------------------------------------------------- the source


def test_a_source_reads_a_file_inline_text_or_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SESSION_KEY_ENV, raising=False)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(route("a", target("t")))))
    from_file = ConfigSource(file=str(path)).load()
    assert from_file.binds[0].port == 3000
    inline = ConfigSource(inline=json.dumps(config(route("b", target("t"))))).load()
    assert inline.binds[0].listeners[0].routes[0].name == "b"
    assert ConfigSource().load().mcp is not None  # the built-in default
    assert ConfigSource(file=str(path), log_format="json").load().config.logging.format == "json"
    # SESSION_KEY replaces the file's key every time the file is read.
    monkeypatch.setenv(SESSION_KEY_ENV, KEY_B)
    loaded = ConfigSource(file=str(path)).load()
    assert loaded.config.session is not None
    assert loaded.config.session.key == KEY_B


# ---------------------------------------------------------------- what carries over


def test_an_unchanged_mcp_route_compiles_to_the_running_one() -> None:
    doc = config(route("a", target("t", "1")), route("b", target("u")))
    running = compile_config(config_from_dict(doc))
    again = compile_config(config_from_dict(doc), running)
    old, new = mcp_routes(running), mcp_routes(again)
    assert new["a"] is old["a"] and new["b"] is old["b"]

    changed = config(route("a", target("t", "2")), route("b", target("u")))
    after = mcp_routes(compile_config(config_from_dict(changed), again))
    assert after["a"] is not old["a"]  # a changed target: new sessions get the new one
    assert after["a"].targets[0].stdio is not None
    assert after["a"].targets[0].stdio.args == ("2",)
    assert after["b"] is old["b"]


@pytest.mark.parametrize(
    "change",
    [
        {"prefixMode": "always"},
        {"failureMode": "failOpen"},
        {"statefulMode": "stateless"},
    ],
)
def test_any_change_to_an_mcp_backend_makes_a_new_route(change: dict[str, Any]) -> None:
    running = compile_config(config_from_dict(config(route("a", target("t")))))
    changed = compile_config(config_from_dict(config(route("a", target("t"), **change))), running)
    assert mcp_routes(changed)["a"] is not mcp_routes(running)["a"]


def test_two_equal_routes_never_share_one_running_route() -> None:
    doc = config(route("a", target("t")), {**route("a", target("t")), "name": "b"})
    doc["binds"][0]["listeners"][0]["routes"][1]["matches"] = [{"path": {"pathPrefix": "/b"}}]
    running = compile_config(config_from_dict(doc))
    again = mcp_routes(compile_config(config_from_dict(doc), running))
    assert again["a"] is not again["b"]
    assert {id(r) for r in again.values()} == {id(r) for r in mcp_routes(running).values()}


def test_rate_limits_keep_their_buckets_while_they_stay_where_they_are() -> None:
    limited = route("a", target("t"), rateLimits=[{"tool": "echo", **LIMIT}])
    doc = config(limited)
    doc["binds"][0]["listeners"][0]["policies"] = {"localRateLimit": [LIMIT]}
    running = compile_config(config_from_dict(doc))
    again = compile_config(config_from_dict(doc), running)
    assert list(again.security.limiters.values()) == list(running.security.limiters.values())
    assert mcp_routes(again)["a"].rate_limits is mcp_routes(running)["a"].rate_limits
    assert again.security.mcp_limits == running.security.mcp_limits  # still counted
    # The same MCP route at another place: its limits' metric label moves.
    moved = config(route("z", target("other")), limited)
    after = compile_config(config_from_dict(moved), again)
    assert mcp_routes(after)["a"] is not mcp_routes(again)["a"]
    # Without rate limits, a route that moves is the same route.
    first = compile_config(config_from_dict(config(route("a", target("t")))))
    shifted = config(route("z", target("o")), route("a", target("t")))
    kept = mcp_routes(compile_config(config_from_dict(shifted), first))["a"]
    assert kept is mcp_routes(first)["a"]


# ---------------------------------------------------------------- the file


def test_file_state_sees_edits_renames_and_configmap_swaps(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    assert file_state(str(path)) is None
    path.write_text("a: 1\n")
    first = file_state(str(path))
    assert first is not None and file_state(str(path)) == first
    path.write_text("a: 22\n")  # in place
    second = file_state(str(path))
    assert second is not None and second != first
    tmp = tmp_path / "c.yaml.tmp"
    tmp.write_text("a: 22\n")
    os.replace(tmp, path)  # an editor's save: same size, another inode
    assert file_state(str(path)) not in (first, second)

    # A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..<stamp>.
    volume = tmp_path / "volume"
    volume.mkdir()
    for stamp, text in (("..2024_1", "x: 1\n"), ("..2024_2", "x: 1\n")):
        (volume / stamp).mkdir()
        (volume / stamp / "config.yaml").write_text(text)
    os.symlink("..2024_1", volume / "..data")
    os.symlink("..data/config.yaml", volume / "config.yaml")
    watched = str(volume / "config.yaml")
    before = file_state(watched)
    os.symlink("..2024_2", volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")  # kubelet's atomic swap
    after = file_state(watched)
    assert before is not None and after is not None
    assert after != before
    assert after.target.endswith("..2024_2/config.yaml")


async def test_the_watcher_reloads_once_per_change_and_when_asked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("one\n")
    watcher = ConfigWatcher(str(path))
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append(path.read_text() if path.exists() else "<missing>")

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve, reload)
        await trio.sleep(10)
        assert reloads == []  # nothing changed
        path.write_text("two\n")
        await trio.sleep(3)
        assert reloads == ["two\n"]
        await trio.sleep(10)
        assert reloads == ["two\n"]
        watcher.request()  # SIGHUP: reload whether or not it changed
        await trio.sleep(0.5)
        assert reloads == ["two\n", "two\n"]
        with caplog.at_level(logging.WARNING, logger="agentgw.reload"):
            path.unlink()
            await trio.sleep(10)
        assert reloads == ["two\n", "two\n"]  # a missing file is not a config
        assert [r.message for r in caplog.records].count(
            f"config file {path} is missing: keeping the running config"
        ) == 1
        path.write_text("three\n")
        await trio.sleep(3)
        assert reloads == ["two\n", "two\n", "three\n"]
        nursery.cancel_scope.cancel()


async def test_the_watcher_waits_for_a_file_that_is_still_being_written(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("start\n")
    watcher = ConfigWatcher(str(path), interval=1.0, settle=0.2)
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append(path.read_text())

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve, reload)
        await trio.sleep(0.95)
        with path.open("a") as f:
            for i in range(5):  # a slow writer: one line every 0.1 s
                f.write(f"line {i}\n")
                f.flush()
                await trio.sleep(0.1)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert reloads == ["start\n" + "".join(f"line {i}\n" for i in range(5))]
