"""The MCP server (state_memory_client.mcp, `sms mcp`) through the MCP SDK's own client, in process,
against the real service on a socket (`live_url`): the tools and their input schemas, the
service's refusals as tool errors, the resources, and resource subscriptions driven by the change
feed in both protocol eras; and `sms mcp` itself as a subprocess, over stdio and streamable HTTP."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anyio
import pytest
from helpers import ROOT, sms_env
from mcp import Client, StdioServerParameters
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate
from mcp.types import CallToolResult, ResourceUpdatedNotification, TextResourceContents

from state_memory_client import StateMemoryClient
from state_memory_client.mcp import SLICE_URI, SUMMARY_URI, VERSION_META_KEY, Config, ResourceFeeds, create_server

T, F = "acme", "launch"
ACTOR = "mcp-agent"
SEED = {
    "tasks": {
        "DESIGN_001": {"status": "OPEN", "team": "design"},
        "DESIGN_002": {"status": "OPEN", "team": "design"},
        "IMPL_001": {"status": "OPEN", "team": "impl"},
    },
    "metrics": {"ctr": 0.1},
}
TOOLS = {"read_slice", "apply_delta", "changes_since", "read_history", "comment_on_task", "heartbeat"}
DEADLINE = 30.0  # seconds to wait for a notification that must come


def slice_uri(spec: str, tenant: str = T, fsa: str = F) -> str:
    return UriTemplate.parse(SLICE_URI).expand({"tenant": tenant, "fsa": fsa, "spec": spec})


SUMMARY = UriTemplate.parse(SUMMARY_URI).expand({"tenant": T, "fsa": F})
DESIGN = slice_uri("task:DESIGN_*")


@pytest.fixture
async def sms(live_url: str) -> AsyncIterator[StateMemoryClient]:
    """Another client of the service: a plain StateMemoryClient."""
    async with StateMemoryClient(live_url) as client:
        yield client


@pytest.fixture
async def seeded(sms: StateMemoryClient) -> StateMemoryClient:
    await sms.replace_state(T, F, SEED)  # version 1
    return sms


@pytest.fixture
def server(live_url: str):
    return create_server(Config(url=live_url, tenant=T, fsa=F, actor=ACTOR))


def structured(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def refusal(result: CallToolResult) -> tuple[str, dict[str, Any]]:
    """A tool error's text and the service's problem it carries."""
    assert result.is_error, result.structured_content
    text = result.content[0].text
    headline, _, problem = text.partition("\nProblem: ")
    return headline, json.loads(problem)


async def version_of(sms: StateMemoryClient) -> int:
    return (await sms.get_state(T, F)).version


# ---------------------------------------------------------------- tools


async def test_tools_are_listed_with_their_input_schemas(server, live_url):
    async with Client(server) as mcp:
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and "\n    " not in tool.description, tool.name  # dedented, for a model

        read = tools["read_slice"]
        schema = read.input_schema["properties"]
        assert read.input_schema["required"] == ["spec"]  # tenant and fsa default to the configured ones
        assert "`task:DESIGN_*`" in schema["spec"]["description"] and "comma" in schema["spec"]["description"]
        assert (schema["tenant"]["default"], schema["fsa"]["default"]) == (T, F)
        assert {"type": "integer", "minimum": 1} in schema["k"]["anyOf"]
        assert {"enum": ["key", "recent"], "type": "string"} in schema["order"]["anyOf"]
        assert {"where", "max_tokens"} <= set(schema)
        assert set(read.output_schema["required"]) == {"version", "summary", "slice", "total", "truncated"}
        assert read.annotations.read_only_hint is True

        write = tools["apply_delta"]
        schema = write.input_schema["properties"]
        assert write.input_schema["required"] == ["delta"]
        assert schema["delta"]["type"] == "object" and "$inc" in schema["delta"]["description"]
        assert {"type": "integer", "minimum": 0} in schema["expected_version"]["anyOf"]
        assert {"type": "object", "additionalProperties": True} in schema["expect"]["anyOf"]
        assert write.annotations.read_only_hint is not True
        assert set(write.output_schema["required"]) == {"version", "changed", "delta_id"}

        assert tools["changes_since"].input_schema["required"] == ["version"]
        assert tools["read_history"].input_schema["required"] == ["path"]
        assert tools["comment_on_task"].input_schema["required"] == ["task", "body"]
        assert "required" not in tools["heartbeat"].input_schema  # the agent defaults to the actor

        async with Client(create_server(Config(url=live_url))) as bare:  # no defaults configured
            tools = {tool.name: tool for tool in (await bare.list_tools()).tools}
            assert tools["read_slice"].input_schema["required"] == ["spec", "tenant", "fsa"]
            assert tools["heartbeat"].input_schema["required"] == ["tenant", "fsa", "agent"]
            missing = await bare.call_tool("read_slice", {"spec": "task:*"})
            assert missing.is_error and "tenant" in missing.content[0].text
            given = structured(await bare.call_tool("read_slice", {"spec": "task:*", "tenant": T, "fsa": F}))
            assert (given["version"], given["slice"]) == (0, {})  # a state never written reads as {} at version 0


async def test_read_a_slice_and_apply_a_delta(seeded, server):
    async with Client(server) as mcp:
        read = structured(await mcp.call_tool("read_slice", {"spec": "task:DESIGN_*", "k": 1}))
        assert (read["version"], read["total"], read["truncated"]) == (1, 2, True)
        assert read["slice"] == {"tasks": {"DESIGN_001": {"status": "OPEN", "team": "design"}}}
        assert "DESIGN_001" in read["summary"]

        delta = {"tasks.DESIGN_001.status": "DONE", "metrics.ctr": {"$inc": 0.2}}
        applied = structured(await mcp.call_tool("apply_delta", {"delta": delta, "expected_version": read["version"]}))
        assert applied["version"] == 2 and sorted(applied["changed"]) == ["metrics.ctr", "tasks.DESIGN_001.status"]
        state = (await seeded.get_state(T, F)).state
        assert state["tasks"]["DESIGN_001"]["status"] == "DONE" and state["metrics"]["ctr"] == Decimal("0.3")
        [logged] = await seeded.deltas(T, F, since=1)
        assert (logged["actor"], logged["delta_id"]) == (ACTOR, applied["delta_id"])

        other = structured(await mcp.call_tool("read_slice", {"spec": "metric:*", "tenant": T, "fsa": "other"}))
        assert (other["version"], other["slice"]) == (0, {})  # a state other than the default one


async def test_a_stale_expected_version_is_a_tool_error_with_the_current_version(seeded, server):
    async with Client(server) as mcp:
        await seeded.apply_delta(T, F, {"tasks.DESIGN_001.status": "IN_PROGRESS"})  # version 2
        result = await mcp.call_tool(
            "apply_delta", {"delta": {"tasks.DESIGN_001.status": "DONE"}, "expected_version": 1}
        )
        headline, problem = refusal(result)
        assert "nothing was applied" in headline and "at version 2" in headline and "expected_version" in headline
        assert problem["type"] == "urn:sms:problem:version-conflict"
        assert (problem["current_version"], problem["current"]) == (2, {"tasks.DESIGN_001.status": "IN_PROGRESS"})
        assert await version_of(seeded) == 2


async def test_a_failing_expect_is_a_tool_error_with_the_current_values(seeded, server):
    async with Client(server) as mcp:
        delta = {"tasks.DESIGN_001.status": "DONE"}
        result = await mcp.call_tool("apply_delta", {"delta": delta, "expect": {"tasks.DESIGN_001.status": "REVIEW"}})
        headline, problem = refusal(result)
        assert '"tasks.DESIGN_001.status": "OPEN"' in headline
        assert problem["type"] == "urn:sms:problem:expectation-failed"
        assert (problem["current_version"], problem["current"]) == (1, {"tasks.DESIGN_001.status": "OPEN"})

        both = {**delta, "$expect": {"tasks.DESIGN_001.status": "OPEN"}}
        twice = await mcp.call_tool("apply_delta", {"delta": both, "expect": {"tasks.DESIGN_001.status": "OPEN"}})
        assert twice.is_error and "not both" in twice.content[0].text
        assert await version_of(seeded) == 1

        holds = {"delta": delta, "expect": {"tasks.DESIGN_001.status": "OPEN"}}
        assert structured(await mcp.call_tool("apply_delta", holds))["version"] == 2


async def test_a_policy_refusal_is_a_tool_error(seeded, server):
    async with Client(server) as mcp:
        await seeded.set_policies(T, F, [{"path": "metrics.ctr", "max": 1}])
        headline, problem = refusal(await mcp.call_tool("apply_delta", {"delta": {"metrics.ctr": {"$inc": 5}}}))
        assert "A policy refused the delta, nothing was applied" in headline
        assert problem["type"] == "urn:sms:problem:policy-violation"
        assert [(v["path"], v["rule"]) for v in problem["violations"]] == [("metrics.ctr", "max")]
        state = await seeded.get_state(T, F)
        assert (state.version, state.state["metrics"]["ctr"]) == (1, Decimal("0.1"))


async def test_bad_input_is_a_tool_error_that_changes_nothing(seeded, server):
    async with Client(server) as mcp:
        _, problem = refusal(await mcp.call_tool("apply_delta", {"delta": {"tasks.DESIGN_001.status": {"$inc": 1}}}))
        assert (problem["type"], problem["path"]) == ("urn:sms:problem:type-mismatch", "tasks.DESIGN_001.status")
        below = await mcp.call_tool("read_slice", {"spec": "task:*", "k": 0})  # refused by the schema
        assert below.is_error and "k" in below.content[0].text
        oldest = await mcp.call_tool("read_slice", {"spec": "task:DESIGN_*", "order": "oldest"})
        assert oldest.is_error and "order" in oldest.content[0].text
        _, problem = refusal(await mcp.call_tool("read_slice", {"spec": "task:"}))
        assert problem["type"] == "urn:sms:problem:invalid-slice" and '"task:"' in problem["detail"]
        _, problem = refusal(await mcp.call_tool("read_slice", {"spec": "task:*", "where": "@.status == "}))
        assert problem["status"] in (400, 422)
        assert await version_of(seeded) == 1


async def test_changes_history_comments_and_heartbeats(seeded, server):
    async with Client(server) as mcp:
        await mcp.call_tool("apply_delta", {"delta": {"tasks.DESIGN_001.status": "DONE"}})  # version 2

        changes = structured(await mcp.call_tool("changes_since", {"version": 1}))
        assert (changes["since"], changes["version"], changes["deltas"]) == (1, 2, 1)
        assert "DESIGN_001" in changes["digest"] and ACTOR in changes["digest"]
        elsewhere = structured(await mcp.call_tool("changes_since", {"version": 1, "slice": "metric:*"}))
        assert (elsewhere["version"], elsewhere["deltas"]) == (2, 0)
        _, problem = refusal(await mcp.call_tool("changes_since", {"version": 9}))  # beyond the state's version
        assert (problem["status"], problem["current_version"]) == (404, 2)

        history = structured(await mcp.call_tool("read_history", {"path": "tasks.DESIGN_001.status"}))
        assert history["path"] == "tasks.DESIGN_001.status"
        assert [(c["version"], c["actor"], c.get("old"), c["new"]) for c in history["changes"]] == [
            (2, ACTOR, "OPEN", "DONE"),
            (1, None, None, "OPEN"),
        ]

        comment = {"task": "DESIGN_001", "body": "waiting for **copy**", "is_blocker": True}
        stored = structured(await mcp.call_tool("comment_on_task", comment))
        assert (stored["author"], stored["is_blocker"]) == (ACTOR, True)
        [listed] = await seeded.get_comments(T, F, "DESIGN_001")
        assert (listed["comment_id"], listed["body_md"]) == (stored["comment_id"], "waiting for **copy**")
        headline, problem = refusal(await mcp.call_tool("comment_on_task", {"task": "NOPE", "body": "hello?"}))
        assert "Not found: task NOPE" in headline and problem["status"] == 404

        seen = structured(await mcp.call_tool("heartbeat", {}))
        assert (seen["agent"], seen["version"]) == (ACTOR, 3)
        assert (await seeded.get_state(T, F)).state["agents_online"] == {ACTOR: seen["timestamp"]}


# ---------------------------------------------------------------- resources


async def test_resources_read_a_summary_and_a_slice(seeded, server):
    async with Client(server) as mcp:
        templates = {t.uri_template for t in (await mcp.list_resource_templates()).resource_templates}
        assert templates == {SUMMARY_URI, SLICE_URI}

        [summary] = (await mcp.read_resource(SUMMARY)).contents
        assert isinstance(summary, TextResourceContents) and summary.mime_type == "text/plain"
        assert f"{T}/{F}" in summary.text and "v1" in summary.text

        assert DESIGN == f"sms://{T}/{F}/slice/task%3ADESIGN_%2A"
        [view] = (await mcp.read_resource(DESIGN)).contents
        assert view.mime_type == "application/json"
        body = json.loads(view.text)
        assert (body["version"], body["total"], body["truncated"]) == (1, 2, False)
        assert set(body["slice"]["tasks"]) == {"DESIGN_001", "DESIGN_002"} and "DESIGN_002" in body["summary"]

        with pytest.raises(MCPError) as refused:
            await mcp.read_resource(slice_uri("task:"))
        assert '"task:"' in str(refused.value)


# ---------------------------------------------------------------- subscriptions


async def test_a_listened_slice_is_updated_by_another_clients_delta(seeded, server):
    """2026-07-28: subscriptions/listen."""
    async with Client(server) as mcp:
        async with mcp.listen(resource_subscriptions=[DESIGN]) as updates:
            await seeded.apply_delta(T, F, {"metrics.ctr": {"$inc": 1}})  # not in the slice
            await seeded.apply_delta(T, F, {"tasks.DESIGN_002.status": "DONE"}, actor="DesignBot")
            with anyio.fail_after(DEADLINE):
                assert await anext(updates) == ResourceUpdated(uri=DESIGN)
            [body] = (await mcp.read_resource(DESIGN)).contents
            assert json.loads(body.text)["slice"]["tasks"]["DESIGN_002"]["status"] == "DONE"

        with pytest.raises(MCPError):
            async with mcp.listen(resource_subscriptions=["https://example.com/x"]):
                pass


@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_a_subscribed_slice_is_updated_only_by_deltas_that_touch_it(seeded, server):
    """Handshake era: resources/subscribe; each notification names the version of its change."""
    told, hear = anyio.create_memory_object_stream[tuple[str, int]](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            await told.send((message.params.uri, message.params.meta[VERSION_META_KEY]))

    async def next_told(uri: str, seen: list[int]) -> int:
        """The next version told for `uri`; the others' go to `seen`."""
        with anyio.fail_after(DEADLINE):
            async for told_uri, version in hear:
                if told_uri == uri:
                    return version
                seen.append(version)
        raise AssertionError("the notifications ended")

    async with Client(server, mode="legacy", message_handler=on_message) as legacy:
        assert legacy.session.server_capabilities.resources.subscribe is True
        await legacy.subscribe_resource(DESIGN)
        await legacy.subscribe_resource(SUMMARY)
        elsewhere = await seeded.apply_delta(T, F, {"metrics.ctr": {"$inc": 1}})
        other_task = await seeded.apply_delta(T, F, {"tasks.IMPL_001.status": "DONE"})
        touching = await seeded.apply_delta(T, F, {"tasks.DESIGN_002.status": "DONE"})
        summaries: list[int] = []
        # the feed is in order: a notification for either earlier delta would have come first
        assert await next_told(DESIGN, summaries) == touching.version
        while len(summaries) < 3:
            summaries.append(await next_told(SUMMARY, []))
        assert summaries == [elsewhere.version, other_task.version, touching.version]  # the whole state: all

        await legacy.unsubscribe_resource(SUMMARY)
        await legacy.unsubscribe_resource(DESIGN)
        unheard = await seeded.apply_delta(T, F, {"tasks.DESIGN_001.status": "DONE"})
        await legacy.subscribe_resource(DESIGN)  # anew, from the version it reads now
        heard = await seeded.apply_delta(T, F, {"tasks.DESIGN_002.status": "OPEN"})
        others: list[int] = []
        assert await next_told(DESIGN, others) == heard.version > unheard.version
        assert others == []

        with pytest.raises(MCPError):
            await legacy.subscribe_resource("https://example.com/x")
        with pytest.raises(MCPError) as refused:
            await legacy.subscribe_resource(slice_uri("task:"))
        assert '"task:"' in str(refused.value)


async def test_a_feed_is_shared_by_its_watchers_and_ends_with_the_last(seeded, live_url):
    told: dict[str, list[int]] = {"a": [], "b": []}
    both = anyio.Event()

    def watcher(name: str):
        async def notify(uri: str, version: int) -> None:
            assert uri == DESIGN
            told[name].append(version)
            if told["a"] and told["b"]:
                both.set()

        return notify

    with anyio.fail_after(DEADLINE):  # the task group ends only once no feed runs in it
        async with StateMemoryClient(live_url, numbers="float") as client, anyio.create_task_group() as tasks:
            feeds = ResourceFeeds(client, tasks)
            leave_a = await feeds.watch(DESIGN, watcher("a"))
            leave_b = await feeds.watch(DESIGN, watcher("b"))
            assert feeds.followed == {DESIGN}
            change = await seeded.apply_delta(T, F, {"tasks.DESIGN_001.status": "DONE"})
            await both.wait()
            assert told == {"a": [change.version], "b": [change.version]}
            leave_a()
            assert feeds.followed == {DESIGN}
            leave_b()
            assert feeds.followed == frozenset()


# ---------------------------------------------------------------- sms mcp


async def test_sms_mcp_serves_stdio(seeded, live_url):
    env = sms_env() | {"SMS_URL": live_url, "SMS_TENANT": T, "SMS_FSA": F}
    command = StdioServerParameters(command=sys.executable, args=["-m", "app.cli", "mcp"], env=env, cwd=ROOT)
    async with Client(command) as stdio:
        assert {tool.name for tool in (await stdio.list_tools()).tools} == TOOLS
        read = structured(await stdio.call_tool("read_slice", {"spec": "task:DESIGN_*"}))
        assert (read["version"], read["total"]) == (1, 2)


async def test_sms_mcp_serves_streamable_http(seeded, live_url):
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = sms_env() | {"SMS_URL": live_url, "SMS_TENANT": T, "SMS_FSA": F}
    command = [sys.executable, "-m", "app.cli", "mcp", "--http", "--port", str(port)]
    async with await anyio.open_process(command, env=env, cwd=ROOT, stdout=None, stderr=None) as process:
        try:
            with anyio.fail_after(DEADLINE):
                while True:  # until it listens
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.1)
            async with Client(f"http://127.0.0.1:{port}/mcp") as http:
                read = structured(await http.call_tool("read_slice", {"spec": "task:DESIGN_*"}))
                assert (read["version"], read["total"]) == (1, 2)
        finally:
            process.terminate()
