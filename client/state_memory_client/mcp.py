"""An MCP server for the State Memory Service (DESIGN §13): LLM hosts (desktop apps, IDEs, agent
frameworks) reach the shared state through tools and subscribable resources.

    sms-mcp                                  # stdio, for a host that starts it
    sms-mcp --http --port 8000               # streamable HTTP on http://127.0.0.1:8000/mcp

It talks to a running service over HTTP with `StateMemoryClient`, never to the database: the
API key's tenants and scopes, the actor it names, the policies and the rate limits are enforced
by the service, in one place, for this server as for every other client; the server holds no
credentials but the key it is given. Configuration: `SMS_URL` (default http://127.0.0.1:8080),
`SMS_API_KEY`, and optional defaults `SMS_TENANT`, `SMS_FSA` (then tools may leave them out) and
`SMS_ACTOR` (the actor its writes are logged as), or the options of the same names. Over HTTP,
whoever reaches the port acts with that key: it listens on loopback unless told otherwise.

Tools: `read_slice`, `apply_delta`, `changes_since`, `read_history`, `comment_on_task`,
`heartbeat`. A refusal of the service (a version conflict, a failed `$expect`, a policy, bad
input) is a tool error whose text names what happened and carries the service's problem as JSON,
with the current version and values, so the model can read again and retry.

Resources: `sms://{tenant}/{fsa}/summary` (the whole state's summary, text) and
`sms://{tenant}/{fsa}/slice/{spec}` (a slice with its summary, JSON; the spec URL-encoded). A
subscribed client is told (`notifications/resources/updated`) when a delta touches what the
resource covers: each watched resource follows the service's change feed, filtered by its slice
on the service, through one subscription however many clients watch it, ended when the last one
leaves and at shutdown. Handshake-era clients subscribe with `resources/subscribe` (and get the
version of the change in the notification's `_meta["sms/version"]`); 2026-07-28 clients with
`subscriptions/listen`.
"""

import argparse
import inspect
import ipaddress
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

try:
    import anyio
    import anyio.abc
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
    from mcp.server.mcpserver import Context, MCPServer, ResourceSecurity
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
    from mcp.shared.exceptions import MCPError
    from mcp.shared.uri_template import UriTemplate
    from mcp.types import (
        INTERNAL_ERROR,
        INVALID_PARAMS,
        EmptyResult,
        ResourceUpdatedNotification,
        ResourceUpdatedNotificationParams,
        SubscribeRequestParams,
        SubscriptionsListenRequestParams,
        ToolAnnotations,
        UnsubscribeRequestParams,
    )
    from pydantic import BaseModel, Field
    from pydantic import ValidationError as ParamsError
    from pydantic_core import PydanticUndefined
except ImportError as missing:  # the SDK is an extra of this package
    raise ImportError(
        f"the MCP server needs the MCP SDK ({missing}): pip install 'state-memory-client[mcp]'"
    ) from missing

from state_memory_client import __version__
from state_memory_client.client import (
    ConflictError,
    NotFoundError,
    PolicyViolationError,
    ServiceUnavailableError,
    StateMemoryClient,
    StateMemoryError,
    ValidationError,
)

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
SUMMARY_URI = "sms://{tenant}/{fsa}/summary"
SLICE_URI = "sms://{tenant}/{fsa}/slice/{spec}"
FEED_RETRY_SECONDS = 5  # before following a feed again when the service stayed away through the client's retries
VERSION_META_KEY = "sms/version"  # in a handshake-era notification's _meta: the version of the change
_SUBSCRIPTIONS = "sms.subscriptions"  # a handshake-era connection's {uri: unwatch}, in its state

SLICE_GRAMMAR = (
    "A slice spec names part of the state: `task:DESIGN_*` selects the members of `tasks` whose key matches "
    "the glob (`*` and `?`, case-insensitive); the aliases are `task` (tasks), `metric` (metrics), `agent` "
    "(agents_online) and `resource` (resources), and a collection's own name works too (`tasks:*`); a dotted "
    "path selects one value or, with `*`, one field of every member (`resources.inventory`, "
    "`tasks.*.status`); a top-level key alone selects it whole (`metrics`); commas join several specs "
    "(`task:DESIGN_*,metric:ctr*`)."
)
DELTA_GRAMMAR = (
    "A delta maps dotted paths to new values (missing objects are created; `\\.` is a literal dot): "
    '{"tasks.T1.status": "DONE"}. An object of operators changes a value in place, without lost updates '
    'when agents write at once: {"$inc": n}, {"$max": n}, {"$min": n}, {"$add": [items]} (a set), '
    '{"$remove": [items]}, {"$push": item}, {"$merge": {...}} (deep merge; null removes a key), '
    '{"$unset": true}, {"$set": {...}} (an object literally). Example: {"tasks.DESIGN_001.status": '
    '"IN_PROGRESS", "metrics.ctr": {"$inc": 0.2}}.'
)
INSTRUCTIONS = f"""\
A shared, versioned JSON state that many agents work on at once, one per (tenant, fsa): tasks,
metrics, resources, agents. Every change makes a new version.

Read small: read_slice gives the part you work on with a short summary and its version, instead
of the whole state. Write small: apply_delta sends only the paths you change; pass the version
you read as expected_version (or preconditions as expect) when your change depends on what you
read. A refused write applies nothing; its error gives the current version and values: read
again, decide, retry. changes_since tells you what others did since a version you saw.

{SLICE_GRAMMAR}
"""


@dataclass(frozen=True)
class Config:
    """Where the service is, the key to use, and the defaults tools fall back on."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    tenant: str | None = None
    fsa: str | None = None
    actor: str | None = None


# ---------------------------------------------------------------- resources and what they cover

_SUMMARY_TEMPLATE = UriTemplate.parse(SUMMARY_URI)
_SLICE_TEMPLATE = UriTemplate.parse(SLICE_URI)


@dataclass(frozen=True)
class Covered:
    """What a resource covers: a state's slice, or (spec None) the whole state."""

    tenant: str
    fsa: str
    spec: str | None = None

    @classmethod
    def of(cls, uri: str) -> "Covered":
        """What the resource at `uri` covers; MCPError (invalid params) when it is none of ours."""
        if (found := _SLICE_TEMPLATE.match(uri)) is not None:
            return cls(str(found["tenant"]), str(found["fsa"]), str(found["spec"]))
        if (found := _SUMMARY_TEMPLATE.match(uri)) is not None:
            return cls(str(found["tenant"]), str(found["fsa"]))
        raise MCPError(INVALID_PARAMS, f"{uri!r} is no resource of this server: {SUMMARY_URI} or {SLICE_URI}")

    async def read(self, client: StateMemoryClient) -> tuple[int, str]:
        """The resource's version and text: the summary, or the slice as JSON. MCPError when the
        service refuses (a state of a tenant the key does not name, a spec that does not parse)."""
        with _service_errors_as(_protocol_error):
            if self.spec is None:
                summary = await client.get_summary(self.tenant, self.fsa)
                return summary.version, summary.summary
            view = await client.get_slice(self.tenant, self.fsa, self.spec)
        content = {"version": view.version, "summary": view.summary, "slice": view.slice}
        content |= {"total": view.total, "truncated": view.truncated}
        return view.version, json.dumps(content)


# A watcher is told the resource's URI and the version of each change that touches it.
Notify = Callable[[str, int], Awaitable[None]]


@dataclass
class _Feed:
    watchers: dict[object, Notify] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class ResourceFeeds:
    """One change-feed subscription per watched resource URI, shared by all of its watchers,
    filtered by the resource's slice on the service, and ended when the last watcher leaves (or
    when `tasks`, the task group the feeds run in, is cancelled at shutdown)."""

    def __init__(self, client: StateMemoryClient, tasks: anyio.abc.TaskGroup) -> None:
        self._client = client
        self._tasks = tasks
        self._feeds: dict[str, _Feed] = {}

    @property
    def followed(self) -> frozenset[str]:
        """The URIs whose feed is open."""
        return frozenset(self._feeds)

    async def watch(self, uri: str, notify: Notify) -> Callable[[], None]:
        """Calls `notify` for every change after now that touches the resource at `uri`, until the
        returned function is called. MCPError when `uri` is none of ours or the service refuses it."""
        feed = self._feeds.get(uri)
        if feed is None:
            covered = Covered.of(uri)
            version, _ = await covered.read(self._client)  # checks access and spec before the feed starts
            feed = self._feeds.get(uri)  # another watcher may have opened it meanwhile
            if feed is None:
                feed = self._feeds[uri] = _Feed()
                self._tasks.start_soon(self._follow, uri, covered, version, feed)
        token = object()
        feed.watchers[token] = notify

        def unwatch() -> None:
            feed.watchers.pop(token, None)
            if not feed.watchers:
                self._close(uri, feed)

        return unwatch

    def _close(self, uri: str, feed: _Feed) -> None:
        feed.scope.cancel()
        if self._feeds.get(uri) is feed:
            del self._feeds[uri]

    async def _follow(self, uri: str, covered: Covered, since: int, feed: _Feed) -> None:
        with feed.scope:
            while True:
                changes = self._client.subscribe(covered.tenant, covered.fsa, since=since, slice=covered.spec)
                try:
                    async with aclosing(changes):
                        async for change in changes:
                            since = change["version"]
                            await self._tell(uri, since, feed)
                except ServiceUnavailableError as error:  # away through the client's retries: a restart, say
                    logger.warning(
                        "following %s again in %s s, from version %s: %s", uri, FEED_RETRY_SECONDS, since, error
                    )
                    await anyio.sleep(FEED_RETRY_SECONDS)
                except StateMemoryError as error:  # refused for good (the key was revoked, say)
                    logger.warning("no longer following %s: %s", uri, error)
                    break
        self._close(uri, feed)

    async def _tell(self, uri: str, version: int, feed: _Feed) -> None:
        # distinct callables: every 2026-era listen stream shares one (the bus fans it out), told once
        for notify in {*feed.watchers.values()}:
            try:
                await notify(uri, version)
            except Exception:  # a watcher that cannot be told (its connection went away) is dropped
                logger.warning("dropped a watcher of %s that could not be told", uri, exc_info=True)
                for token in [token for token, given in feed.watchers.items() if given == notify]:
                    del feed.watchers[token]
        if not feed.watchers:
            self._close(uri, feed)


# ---------------------------------------------------------------- the service's refusals, for MCP


@contextmanager
def _service_errors_as(convert: Callable[[StateMemoryError], Exception]) -> Iterator[None]:
    try:
        yield
    except StateMemoryError as error:
        raise convert(error) from error


def _explained(error: StateMemoryError) -> str:
    """What the service refused and what to do about it, then its problem as JSON."""
    if isinstance(error, ConflictError) and error.current_version is not None:
        headline = (
            f"Conflict, nothing was applied: {error.detail}. The state is at version {error.current_version}"
            + (f"; the current values are {json.dumps(error.current)}" if error.current is not None else "")
            + ". Read again, then retry with expected_version set to the version you read, if your change still"
            " applies."
        )
    elif isinstance(error, PolicyViolationError):
        headline = f"A policy refused the delta, nothing was applied: {error.detail}. Change the values it names."
    elif isinstance(error, NotFoundError):
        headline = f"Not found: {error.detail}."
    elif isinstance(error, ServiceUnavailableError):
        headline = f"The service is unavailable, nothing was done: {error.detail}. Try again later."
    else:
        headline = f"The service refused, nothing was done: {error.detail}."
    return f"{headline}\nProblem: {json.dumps(error.body)}" if isinstance(error.body, dict) else headline


def _tool_error(error: StateMemoryError) -> ToolError:
    return ToolError(_explained(error))


def _protocol_error(error: StateMemoryError) -> MCPError:
    code = INVALID_PARAMS if isinstance(error, NotFoundError | ValidationError) else INTERNAL_ERROR
    return MCPError(code, _explained(error))


# ---------------------------------------------------------------- the server


@dataclass(frozen=True)
class Backend:
    """What the tools and subscriptions share while the server runs."""

    client: StateMemoryClient
    feeds: ResourceFeeds
    bus: InMemorySubscriptionBus

    async def publish(self, uri: str, version: int) -> None:
        """Tells the 2026-era listen streams that name `uri` (the version is not part of their events)."""
        await self.bus.publish(ResourceUpdated(uri=uri))


def _backend(ctx: Context) -> Backend:
    return ctx.request_context.lifespan_context


class SliceRead(BaseModel):
    """A slice of the state with its summary."""

    version: int = Field(description="The state's version when read; pass it to apply_delta as expected_version")
    summary: str = Field(description="Compact text of the slice: what matched, how much was cut, one line per entry")
    slice: dict[str, Any] = Field(description="The matching entries, nested as in the state (slice.tasks.T1...)")
    total: int = Field(description="How many entries matched in all")
    truncated: bool = Field(description="Whether k cut the entries returned")


class DeltaApplied(BaseModel):
    """An applied delta."""

    version: int = Field(description="The state's new version")
    changed: list[str] = Field(description="The paths the delta changed")
    delta_id: str = Field(description="The delta's id in the log")


class ChangesDigest(BaseModel):
    """What changed since a version."""

    since: int = Field(description="The version the digest starts after")
    version: int = Field(description="The state's current version; pass it to the next changes_since")
    deltas: int = Field(description="How many deltas changed what was asked about")
    digest: str = Field(description="Who changed what, each changed path once with its old and new value")


def _required_unless(default: str | None, description: str) -> Any:
    """A str parameter that defaults to `default` when one is configured, else that the caller must give."""
    return Annotated[str, Field(description=description, default=PydanticUndefined if default is None else default)]


def create_server(config: Config) -> MCPServer:
    """The MCP server, on the service at `config.url`; run it with `.run()` (stdio) or
    `.run("streamable-http", …)`."""
    bus = InMemorySubscriptionBus()

    @asynccontextmanager
    async def running(_: MCPServer) -> AsyncIterator[Backend]:
        # numbers as float: tool and resource results go out as JSON
        async with (
            StateMemoryClient(config.url, api_key=config.api_key, numbers="float") as client,
            anyio.create_task_group() as feeds,
        ):
            try:
                yield Backend(client, ResourceFeeds(client, feeds), bus)
            finally:
                feeds.cancel_scope.cancel()

    server = MCPServer(
        "state-memory",
        title="State Memory",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=running,
        subscriptions=bus,
        # template values go to the service (which checks them) in encoded URLs, never to a file system
        resource_security=ResourceSecurity(reject_path_traversal=False, reject_absolute_paths=False),
    )
    _add_tools(server, config)
    _add_resources(server)
    _serve_subscriptions(server)
    return server


def _described(decorator: Callable[..., Any], *args: Any, **options: Any) -> Callable[[Any], Any]:
    """`decorator(*args, **options)` (server.tool, server.resource) with the function's docstring as
    the description, dedented: the SDK takes `__doc__` as it is, indented before Python 3.13."""

    def apply(fn: Any) -> Any:
        return decorator(*args, description=inspect.cleandoc(fn.__doc__ or ""), **options)(fn)

    return apply


def _add_tools(server: MCPServer, config: Config) -> None:
    Tenant = _required_unless(config.tenant, "The tenant whose state to use")
    Fsa = _required_unless(config.fsa, "The state (fsa id) within the tenant")
    Agent = _required_unless(config.actor, "The agent's name, as it appears in agents_online")
    Spec = Annotated[str, Field(description=SLICE_GRAMMAR, examples=["task:DESIGN_*", "metric:*,resources.cash"])]
    reading = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @_described(server.tool, annotations=reading)
    async def read_slice(
        spec: Spec,
        tenant: Tenant,
        fsa: Fsa,
        ctx: Context,
        k: Annotated[int | None, Field(ge=1, description="At most this many entries per spec")] = None,
        order: Annotated[
            Literal["key", "recent"] | None,
            Field(description="Which entries come first when k cuts: by key (default) or most recently changed"),
        ] = None,
        where: Annotated[
            str | None,
            Field(description='Keep only entries whose value matches this SQL/JSON path predicate: @.status == "OPEN"'),
        ] = None,
        max_tokens: Annotated[int | None, Field(description="Token budget of the summary")] = None,
    ) -> SliceRead:
        """Read the part of the shared state you work on, with a short summary of it and the
        state's version. Use it before deciding or writing, instead of reading everything; read
        again after a conflict. Returns the summary (read it first), the slice (the matching
        entries, nested as in the state), how many matched, and the version to pass to apply_delta
        as expected_version."""
        with _service_errors_as(_tool_error):
            view = await _backend(ctx).client.get_slice(
                tenant, fsa, spec, k=k, order=order, where=where, max_tokens=max_tokens
            )
        return SliceRead(
            version=view.version, summary=view.summary, slice=view.slice, total=view.total, truncated=view.truncated
        )

    @_described(
        server.tool, annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=False)
    )
    async def apply_delta(
        delta: Annotated[dict[str, Any], Field(description=DELTA_GRAMMAR)],
        tenant: Tenant,
        fsa: Fsa,
        ctx: Context,
        expected_version: Annotated[
            int | None,
            Field(ge=0, description="Apply only if the state is still at this version (the one you read)"),
        ] = None,
        expect: Annotated[
            dict[str, Any] | None,
            Field(
                description='Apply only if these paths hold these values now: {"tasks.T1.status": "REVIEW"}; '
                '{"path": {"$exists": false}} for a path that must not exist'
            ),
        ] = None,
    ) -> DeltaApplied:
        """Change the shared state: set the paths you change and nothing else; other agents'
        concurrent changes to other paths, and operators like $inc, merge without loss. Guard a
        change that depends on what you read with expected_version or expect. Returns the new
        version. When the state moved on, a precondition fails or a policy refuses, nothing is
        applied and the error gives the current version and values: read again, then retry."""
        if expect is not None:
            if "$expect" in delta:
                raise ToolError("give the preconditions once: in expect or as the delta's $expect, not both")
            delta = {**delta, "$expect": expect}
        with _service_errors_as(_tool_error):
            result = await _backend(ctx).client.apply_delta(
                tenant, fsa, delta, actor=config.actor, expected_version=expected_version
            )
        return DeltaApplied(version=result.version, changed=result.changed, delta_id=result.delta_id)

    @_described(server.tool, annotations=reading)
    async def changes_since(
        version: Annotated[int, Field(ge=0, description="A version you saw (from read_slice or an earlier call)")],
        tenant: Tenant,
        fsa: Fsa,
        ctx: Context,
        slice: Annotated[str | None, Field(description="Only changes touching this slice spec")] = None,
        max_tokens: Annotated[int | None, Field(description="Token budget of the digest")] = None,
    ) -> ChangesDigest:
        """What others changed since a version you saw: who, in which lineages, and each changed
        path once with its old and new value, as a short digest. Use it when you come back to a
        state, instead of reading it all again. Returns the digest and the current version."""
        with _service_errors_as(_tool_error):
            body = await _backend(ctx).client.changes_since(tenant, fsa, version, slice=slice, max_tokens=max_tokens)
        return ChangesDigest(since=body["since"], version=body["version"], deltas=body["deltas"], digest=body["digest"])

    @_described(server.tool, annotations=reading)
    async def read_history(
        path: Annotated[str, Field(description="A dotted path: tasks.T1.status, metrics.ctr")],
        tenant: Tenant,
        fsa: Fsa,
        ctx: Context,
        limit: Annotated[int | None, Field(ge=1, description="At most this many changes (default 100)")] = None,
    ) -> dict[str, Any]:
        """Who changed one path, when, from what to what, newest first. Use it to learn why a
        value is what it is before you change it. Returns {"path", "changes": [{"version",
        "actor", "lineage_id", "created_at", "old", "new"}]} (old/new left out where the path did
        not exist)."""
        with _service_errors_as(_tool_error):
            changes = await _backend(ctx).client.history(tenant, fsa, path, limit=limit)
        return {"path": path, "changes": changes}

    @_described(
        server.tool, annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False)
    )
    async def comment_on_task(
        task: Annotated[str, Field(description="The task's key in tasks, e.g. DESIGN_001")],
        body: Annotated[str, Field(description="The comment, in markdown")],
        tenant: Tenant,
        fsa: Fsa,
        ctx: Context,
        is_blocker: Annotated[bool, Field(description="Whether the comment blocks the task")] = False,
    ) -> dict[str, Any]:
        """Leave a comment on a task for the other agents and people (the task must exist): a
        question, a finding, or a blocker. Returns the comment as stored (comment_id, author,
        created_at)."""
        with _service_errors_as(_tool_error):
            return await _backend(ctx).client.comment_on_task(
                tenant, fsa, task, body, actor=config.actor, is_blocker=is_blocker
            )

    @_described(
        server.tool, annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)
    )
    async def heartbeat(tenant: Tenant, fsa: Fsa, agent: Agent, ctx: Context) -> dict[str, Any]:
        """Tell the other agents you are alive and working on this state: records
        agents_online.<agent> as seen now. Returns the agent, the timestamp recorded and the
        state's version."""
        with _service_errors_as(_tool_error):
            seen = await _backend(ctx).client.heartbeat(tenant, fsa, agent)
        return {"agent": seen["agent"], "timestamp": seen["timestamp"], "version": seen["version"]}


def _add_resources(server: MCPServer) -> None:
    @_described(server.resource, SUMMARY_URI, name="state-summary", title="State summary", mime_type="text/plain")
    async def state_summary(tenant: str, fsa: str, ctx: Context) -> str:
        """A compact, LLM-ready summary of a whole state, with its version. Subscribe to it to be
        told when the state changes."""
        return (await Covered(tenant, fsa).read(_backend(ctx).client))[1]

    @_described(server.resource, SLICE_URI, name="state-slice", title="State slice", mime_type="application/json")
    async def state_slice(tenant: str, fsa: str, spec: str, ctx: Context) -> str:
        """A slice of a state (the spec URL-encoded: sms://acme/launch/slice/task%3ADESIGN_%2A) as
        JSON: version, summary, slice, total, truncated. Subscribe to it to be told when a delta
        touches it."""
        return (await Covered(tenant, fsa, spec).read(_backend(ctx).client))[1]


def _serve_subscriptions(server: MCPServer) -> None:
    """Resource subscriptions in both protocol eras, each watched resource on its feed."""

    async def follow_listened_resources(ctx: ServerRequestContext[Backend], call_next: CallNext) -> HandlerResult:
        # a 2026-era listen stream: its resources are watched while the stream is open
        if ctx.method != "subscriptions/listen":
            return await call_next(ctx)
        try:
            wanted = SubscriptionsListenRequestParams.model_validate(ctx.params or {}, by_name=False)
        except ParamsError:
            return await call_next(ctx)  # which refuses it
        backend = ctx.lifespan_context
        async with AsyncExitStack() as watching:
            for uri in wanted.notifications.resource_subscriptions or ():
                watching.callback(await backend.feeds.watch(uri, backend.publish))
            return await call_next(ctx)

    server.middleware.append(follow_listened_resources)

    # Handshake-era `resources/subscribe` is a handler of the low-level server, which MCPServer
    # does not register (nor give handlers their connection): its subscriptions live in the
    # connection's state and end with its exit stack, the SDK's place for per-connection cleanup.
    async def subscribe(ctx: ServerRequestContext[Backend], params: SubscribeRequestParams) -> EmptyResult:
        connection = ctx.session._connection
        watched: dict[str, Callable[[], None]] | None = connection.state.get(_SUBSCRIPTIONS)
        if watched is None:
            watched = connection.state[_SUBSCRIPTIONS] = {}
            connection.exit_stack.callback(_unwatch_all, watched)
        session = ctx.session

        async def notify(uri: str, version: int) -> None:
            updated = ResourceUpdatedNotificationParams(uri=uri, _meta={VERSION_META_KEY: version})
            await session.send_notification(ResourceUpdatedNotification(params=updated))

        unwatch = await ctx.lifespan_context.feeds.watch(params.uri, notify)
        earlier = watched.get(params.uri)
        watched[params.uri] = unwatch
        if earlier is not None:  # subscribing again replaces the earlier subscription (and revives an ended feed)
            earlier()
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Backend], params: UnsubscribeRequestParams) -> EmptyResult:
        watched = ctx.session._connection.state.get(_SUBSCRIPTIONS, {})
        if (unwatch := watched.pop(params.uri, None)) is not None:
            unwatch()
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def _unwatch_all(watched: dict[str, Callable[[], None]]) -> None:
    while watched:
        watched.popitem()[1]()


# ---------------------------------------------------------------- command line


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    """`sms-mcp` (and `sms mcp`): serve MCP on stdio, or on streamable HTTP with --http."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="sms-mcp",
        description="An MCP server for the State Memory Service: tools and subscribable resources for LLM hosts, "
        "on a running service (over HTTP, with its API key: the service enforces tenants, scopes, policies and "
        "rate limits). Serves stdio unless --http is given.",
    )
    parser.add_argument("--url", default=env.get("SMS_URL") or DEFAULT_URL, help="the service (SMS_URL; %(default)s)")
    parser.add_argument("--api-key", default=env.get("SMS_API_KEY") or None, help="its API key (SMS_API_KEY)")
    parser.add_argument("--tenant", default=env.get("SMS_TENANT") or None, help="default tenant (SMS_TENANT)")
    parser.add_argument("--fsa", default=env.get("SMS_FSA") or None, help="default state (SMS_FSA)")
    parser.add_argument("--actor", default=env.get("SMS_ACTOR") or None, help="who writes, for the log (SMS_ACTOR)")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at http://HOST:PORT/mcp")
    parser.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="with --http: the port to listen on (%(default)s)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    config = Config(url=args.url, api_key=args.api_key, tenant=args.tenant, fsa=args.fsa, actor=args.actor)
    server = create_server(config)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    if not args.http:
        server.run("stdio")
        return
    if not _is_loopback(args.host):
        logger.warning("listening on %s: whoever reaches it acts on the service with this server's API key", args.host)
    server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
