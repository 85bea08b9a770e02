"""The `sms` command: serve, migrate, keys, policies, listen, demo, bench, loadtest, --version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app import __version__, logs
from app.settings import COMPAT_CONTRACTS, Settings

if TYPE_CHECKING:
    from litestar import Litestar

    from app.db.embedded import EmbeddedPostgres

T = TypeVar("T")
log = logging.getLogger("app.cli")  # by name: run as `python -m app.cli`, __name__ is __main__


def database_url(settings: Settings) -> str:
    """SMS_DATABASE_URL when set; otherwise the embedded PostgreSQL, started on demand."""
    from app.db import embedded

    return embedded.database_url(settings.database_url, settings.data_dir)


def on_database(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Runs `work(db)` on a small pool of the database as its owner (the `sms` commands manage
    keys and policies of every tenant)."""
    from app.db.queries import Database

    async def run() -> T:
        db = await Database.connect(url, min_size=1, max_size=1)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; then end the SSE streams, let the requests in flight finish
    within the grace period, stop the embedded PostgreSQL (if it is ours) and exit 0."""
    from app.api.app import create_app
    from app.api.observability import export_traces
    from app.db import migrate
    from app.db.embedded import EmbeddedPostgres

    # until the server takes them over, a stop signal unwinds whatever has started, as Ctrl+C does
    signal.signal(signal.SIGTERM, _interrupt)
    embedded = None if settings.database_url else EmbeddedPostgres(settings.data_dir)
    try:
        url = embedded.start() if embedded else settings.database_url
        if settings.migrate_on_start and not args.no_migrate:
            migrate.upgrade(url)
        settings = replace(
            settings,
            host=args.host or settings.host,
            port=args.port or settings.port,
            insecure_no_auth=settings.insecure_no_auth or args.insecure_no_auth,
            compat=args.compat or settings.compat,
        )
        keys_exist = on_database(url, lambda db: db.keys_exist())
        if settings.auth == "required" or keys_exist:
            access = "API keys required"
        elif settings.insecure_no_auth:
            access = "WARNING: no API key exists and --insecure-no-auth is given: every client may do anything"
        elif not _is_loopback(settings.host):
            raise SystemExit(
                f"sms: refusing to listen on {settings.host} while no API key exists: anyone reaching the port "
                "could read and change every tenant's state. Make a key first (`sms keys create --tenant T "
                "--scopes admin`), or pass --insecure-no-auth."
            )
        else:
            access = (
                "protected mode: no API key exists, so only loopback clients are served (make one: sms keys create)"
            )
        if settings.tracing:
            export_traces()
        app = create_app(settings, url)
        where = "embedded PostgreSQL in " + str(settings.data_dir) if embedded else "SMS_DATABASE_URL"
        log.info(  # a log line, so that with SMS_LOG_FORMAT=json every line the service writes is JSON
            "State Memory Service %s on http://%s:%s (database: %s; %s%s)",
            __version__,
            settings.host,
            settings.port,
            where,
            access,
            "; the original second-generation wire contract" if settings.compat == "v2" else "",
        )
        database_lost = _serve_until_stopped(app, settings, embedded)
    except KeyboardInterrupt:
        return  # stopped while starting
    finally:
        if embedded is not None:
            # a second signal must not cut the stop of PostgreSQL short (pg_ctl inherits SIG_IGN too)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            embedded.stop()
    if database_lost:
        raise SystemExit("sms: stopped: the embedded PostgreSQL died and could not be restarted")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_until_stopped(app: Litestar, settings: Settings, embedded: EmbeddedPostgres | None) -> bool:
    """uvicorn until SIGTERM or SIGINT (then the drain, if SMS_DRAIN_SECONDS asks for one; a further
    SIGINT ends the drain, or else cuts the grace period short), with the
    embedded PostgreSQL, if any, restarted whenever it dies. True when it stopped because that
    failed."""
    import uvicorn

    from app.api.app import begin_shutdown
    from app.api.observability import begin_drain

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own raises the signal again after the shutdown, which kills the process
            # before it can stop PostgreSQL and exit 0: here a signal only starts the shutdown
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # first the drain: still serving, but no longer ready, until load balancers have seen it
            # (SMS_DRAIN_SECONDS). A second SIGINT ends it, and only a third cuts the grace period short.
            begin_drain(app.state)
            for _ in range(round(settings.drain_seconds * 10)):
                if self.force_exit:
                    self.force_exit = False
                    break
                await asyncio.sleep(0.1)
            begin_shutdown(app)  # else the SSE streams would take the whole grace period
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # uvicorn's lines go through the service's own logging (app.logs): format, redaction
        access_log=False,  # the service logs each request itself (app.api.observability)
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    server = Server(config)
    lost = threading.Event()

    def give_up() -> None:
        lost.set()
        server.should_exit = True

    if embedded is not None:
        embedded.supervise(on_give_up=give_up)
    server.run()
    return lost.is_set()


def run_bench(argv: list[str]) -> None:
    """`python -m bench ARGV`: the benchmarks live beside app/ in a checkout, not in the wheel."""
    checkout = Path(__file__).resolve().parents[1]  # app/ beside bench/, in a checkout (an editable install too)
    if (checkout / "bench" / "__main__.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        bench = importlib.import_module("bench.__main__")
    except ModuleNotFoundError:
        raise SystemExit(
            "sms: the benchmarks run from a checkout of the repository (its bench/ folder): cd into it and run "
            "`sms bench` or `python -m bench all` there"
        ) from None
    raise SystemExit(bench.main(argv))


def run_mcp(argv: list[str]) -> None:
    """`sms-mcp ARGV`: the client package's MCP server, which uses a running service over HTTP."""
    try:
        from state_memory_client.mcp import main as mcp_main
    except ImportError as missing:  # the SDK is an extra
        raise SystemExit(f"sms: {missing}") from None
    raise SystemExit(mcp_main(argv))


def run_keys(args: argparse.Namespace, settings: Settings) -> None:
    from app.domain.keys import NewKey, highest_scope, parse_duration

    url = database_url(settings)
    if args.action == "create":
        try:
            key = NewKey.make(
                args.tenant,
                highest_scope([scope.strip() for scope in args.scopes.split(",")]),
                actor=args.actor,
                aml_level=args.aml,
                expires_in=parse_duration(args.expires) if args.expires else None,
                rate_limit=args.rate,
                label=args.label,
            )
        except ValueError as exc:
            raise SystemExit(f"sms keys create: {exc}") from None
        record = on_database(url, lambda db: db.create_key(key))
        print(key.key, flush=True)  # alone on stdout, for KEY=$(sms keys create …)
        print(f"made {_describe(record)}\nThe key is shown this once: only its hash is kept.", file=sys.stderr)
    elif args.action == "list":
        for record in on_database(url, lambda db: db.list_keys()):
            print(_describe(record))
    else:
        record = on_database(url, lambda db: db.revoke_key(args.key_id))
        print(f"revoked {_describe(record)}")


def _describe(record: dict[str, Any]) -> str:
    """One line about a key record."""
    parts = [record["key_id"], "tenants " + ",".join(record["tenants"]), "scopes " + ",".join(record["scopes"])]
    for name in ("actor", "aml_level", "rate_limit", "label", "expires_at", "revoked_at"):
        if record.get(name) is not None:
            parts.append(f"{name.replace('_', ' ')} {record[name]}")
    return " · ".join(parts)


def run_policies(args: argparse.Namespace, settings: Settings) -> None:
    from app.domain.policies import PRESETS

    url = database_url(settings)
    if args.action in ("set", "apply-preset"):
        if args.action == "apply-preset":
            if args.source not in PRESETS:
                raise SystemExit(f"sms policies: no preset {args.source!r} (known: {', '.join(PRESETS)})")
            rules = PRESETS[args.source]
        else:
            text = sys.stdin.read() if args.source == "-" else open(args.source, encoding="utf-8").read()
            given = json.loads(text)
            rules = given["rules"] if isinstance(given, dict) and "rules" in given else given
        on_database(url, lambda db: db.set_policy(args.tenant, args.fsa, rules, args.actor))
    found = on_database(url, lambda db: db.policies(args.tenant, args.fsa))
    print(json.dumps(found, indent=2, ensure_ascii=False))


def run_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from app.db import migrate

    url = database_url(settings)
    migrate.upgrade(url, args.revision)
    print(f"migrated to {args.revision}")
    if args.citus:
        from urllib.parse import unquote, urlsplit

        import asyncpg

        from app.db import citus
        from app.db.queries import session_settings
        from app.db.roles import api_database_url

        role = unquote(urlsplit(settings.api_database_url or api_database_url(url)).username or "")
        wanted = session_settings(
            settings.notify, settings.snapshot_every, settings.limits.max_depth, settings.limits.max_key_length
        )

        async def distribute() -> dict[str, list[str]]:
            conn = await asyncpg.connect(url)
            try:
                return await citus.distribute(conn, role, wanted)
            finally:
                await conn.close()

        try:
            done = asyncio.run(distribute())
        except citus.NotCitus as error:
            raise SystemExit(f"sms migrate --citus: {error}") from None
        print(
            f"distributed by tenant: {len(done['distributed'])} tables, {len(done['reference'])} reference tables,"
            f" {len(done['functions'])} functions (already distributed: left as they were);"
            f" role {role}: {', '.join(done['settings'])}"
        )


def run_listen(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from app.feed import Feed, StatePurged

    tenant_id, _, fsa_id = args.target.partition("/")

    async def listen() -> None:
        async with Feed.connect(database_url(settings)) as feed:
            since = args.since if args.since is not None else None
            async for change in feed.subscribe(tenant_id, fsa_id or None, since=since, slice_spec=args.slice):
                sys.stdout.write(change.json.decode() + "\n")
                sys.stdout.flush()

    try:
        asyncio.run(listen())
    except KeyboardInterrupt:
        pass
    except StatePurged as purged:  # the state is gone: its feed has ended
        print(f"sms listen: {purged}", file=sys.stderr)


def run_demo(args: argparse.Namespace, settings: Settings) -> None:
    from app import demo

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    api_key = os.environ.get("SMS_API_KEY") or None
    report = demo.main(args.url, settings, api_key=api_key, tenant=args.tenant, fsa=args.fsa, rounds=args.rounds)
    print(demo.render(report), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="sms",
        description="State Memory Service: one shared, versioned JSON state per (tenant, fsa) for many "
        "LLM agents. With no SMS_DATABASE_URL it runs on an embedded PostgreSQL (data in SMS_DATA_DIR "
        "or the user's data directory).",
    )
    parser.add_argument("--version", action="version", version=f"sms {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the HTTP service (migrating the database first)")
    serve_cmd.add_argument("--host", help="address to listen on (default SMS_HOST or 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default SMS_PORT or 8080)")
    serve_cmd.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")
    serve_cmd.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="while no API key exists, serve every client, not only loopback ones (also SMS_INSECURE_NO_AUTH)",
    )
    serve_cmd.add_argument(
        "--compat",
        choices=COMPAT_CONTRACTS,
        help="v2: answer as the original second-generation service did (a flat GET /state, write refusals as "
        "200 with success false); also SMS_COMPAT",
    )
    serve_cmd.set_defaults(run=serve)

    keys_cmd = commands.add_parser("keys", help="make, list and revoke API keys (on the database, as its owner)")
    keys_actions = keys_cmd.add_subparsers(dest="action", required=True)
    create_cmd = keys_actions.add_parser(
        "create", help="make a key; it is printed once, alone on stdout", description="Make an API key."
    )
    create_cmd.add_argument("--tenant", action="append", required=True, help="a tenant it may touch (repeatable)")
    create_cmd.add_argument(
        "--scopes", default="read", help="read, write or admin, each allowing what the ones before allow (default read)"
    )
    create_cmd.add_argument("--actor", help="the actor every write made with it is logged as")
    create_cmd.add_argument("--aml", type=int, help="the highest AML level its requests may claim")
    create_cmd.add_argument("--expires", help="expire after this long: 30d, 12h, 15m, 2w")
    create_cmd.add_argument("--rate", type=float, help="requests per second (default SMS_RATE_LIMIT)")
    create_cmd.add_argument("--label", help="a note for `sms keys list`")
    keys_actions.add_parser("list", help="every key, without the keys themselves")
    revoke_cmd = keys_actions.add_parser("revoke", help="revoke a key by its id")
    revoke_cmd.add_argument("key_id", help="the key's id, k_…")
    keys_cmd.set_defaults(run=run_keys)

    policies_cmd = commands.add_parser(
        "policies", help="show or set the rules a tenant's or a state's values must keep (DESIGN §10)"
    )
    policies_actions = policies_cmd.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("show", "print the rules"),
        ("set", 'replace the rules with those in a JSON file (- for stdin): [rule, …] or {"rules": [...]}'),
        ("apply-preset", "replace the rules with a ready-made set: original"),
    ):
        action = policies_actions.add_parser(name, help=help_text)
        if name != "show":
            action.add_argument("source", help="the preset's name" if name == "apply-preset" else "a JSON file or -")
        action.add_argument("--tenant", required=True, help="the tenant")
        action.add_argument("--fsa", help="one state of it (default: the tenant's defaults for every state)")
        action.add_argument("--actor", help="who changes them, for the record")
    policies_cmd.set_defaults(run=run_policies)

    migrate_cmd = commands.add_parser("migrate", help="upgrade the database schema (alembic)")
    migrate_cmd.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    migrate_cmd.add_argument(
        "--citus",
        action="store_true",
        help="then, on a Citus coordinator, distribute the tables by tenant and delegate the functions"
        " (docs/scale-out.md)",
    )
    migrate_cmd.set_defaults(run=run_migrate)

    listen_cmd = commands.add_parser(
        "listen",
        help="print a tenant's or a state's changes as JSON lines, from the log and then live",
        description="Print every change of tenant[/fsa] as one JSON line, oldest first: what the log holds "
        "after --since, then live (NOTIFY wakes it; the log is what it reads, so nothing is missed).",
    )
    listen_cmd.add_argument("target", metavar="tenant[/fsa]", help="a tenant, or one state of it")
    listen_cmd.add_argument(
        "--since", help="resume after this version (one state) or event id fsa:version (a tenant); default: the start"
    )
    listen_cmd.add_argument("--slice", help="only changes that touch this slice spec, e.g. task:DESIGN_*")
    listen_cmd.set_defaults(run=run_listen)

    demo_cmd = commands.add_parser(
        "demo", help="seed a project state and run five agents on it with the client; print what slices save"
    )
    demo_cmd.add_argument(
        "--url",
        help="a running service, with an admin key in SMS_API_KEY if it wants keys (default: serve the app here "
        "on the configured database)",
    )
    demo_cmd.add_argument("--tenant", default="demo", help="tenant id (default demo)")
    demo_cmd.add_argument("--fsa", default="launch", help="state id; its state is replaced (default launch)")
    demo_cmd.add_argument("--rounds", type=int, default=5, help="rounds each agent reads and writes (default 5)")
    demo_cmd.set_defaults(run=run_demo)

    # listed here for `sms --help`; their arguments go to the benchmark as they are (see run_bench)
    commands.add_parser(
        "bench", help="run the benchmark suite, from a checkout: sms bench [all|NAME] [options] (python -m bench)"
    )
    commands.add_parser(
        "loadtest", help="simulated agents against one service, then check nothing was lost (python -m bench load)"
    )
    commands.add_parser(
        "mcp", help="an MCP server for LLM hosts on a running service: sms mcp [--http] [options] (sms-mcp --help)"
    )
    if argv and argv[0] in ("bench", "loadtest"):
        run_bench(["load", *argv[1:]] if argv[0] == "loadtest" else argv[1:] or ["all"])
    if argv and argv[0] == "mcp":
        run_mcp(argv[1:])

    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logs.configure(settings.log_format)
    from sqlalchemy.exc import OperationalError

    from app.errors import Problem

    try:
        args.run(args, settings)
    except (OperationalError, Problem) as exc:
        # a database that is down or unreachable: one clear line, not a traceback
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SystemExit(logs.redact(f"sms: the database is unavailable: {reason}")) from None


if __name__ == "__main__":
    main(sys.argv[1:])
