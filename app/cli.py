"""The `sms` command: serve, migrate, listen, demo, --version."""

from __future__ import annotations

import argparse
import logging
import sys

from app import __version__
from app.settings import Settings


def database_url(settings: Settings) -> str:
    """SMS_DATABASE_URL when set; otherwise the embedded PostgreSQL, started on demand."""
    if settings.database_url:
        return settings.database_url
    from app.db.embedded import start_embedded

    return start_embedded(settings.data_dir)


def serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from app.api.app import create_app
    from app.db import migrate

    url = database_url(settings)
    if settings.migrate_on_start and not args.no_migrate:
        migrate.upgrade(url)
    app = create_app(settings, url)
    host = args.host or settings.host
    port = args.port or settings.port
    where = "embedded PostgreSQL in " + str(settings.data_dir) if not settings.database_url else "SMS_DATABASE_URL"
    print(f"State Memory Service {__version__} on http://{host}:{port} (database: {where})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def run_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from app.db import migrate

    migrate.upgrade(database_url(settings), args.revision)
    print(f"migrated to {args.revision}")


def run_listen(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from app.domain import jsontext
    from app.feed import Feed

    tenant_id, _, fsa_id = args.target.partition("/")

    async def listen() -> None:
        async with Feed.connect(database_url(settings)) as feed:
            since = args.since if args.since is not None else None
            async for change in feed.subscribe(tenant_id, fsa_id or None, since=since, slice_spec=args.slice):
                sys.stdout.write(jsontext.encode(change.to_dict()).decode() + "\n")
                sys.stdout.flush()

    try:
        asyncio.run(listen())
    except KeyboardInterrupt:
        pass


def run_demo(args: argparse.Namespace, settings: Settings) -> None:
    from app import demo

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    report = demo.main(args.url, settings, tenant=args.tenant, fsa=args.fsa, rounds=args.rounds)
    print(demo.render(report), flush=True)


def main(argv: list[str] | None = None) -> None:
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
    serve_cmd.set_defaults(run=serve)

    migrate_cmd = commands.add_parser("migrate", help="upgrade the database schema (alembic)")
    migrate_cmd.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
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
    demo_cmd.add_argument("--url", help="a running service (default: serve the app here on the configured database)")
    demo_cmd.add_argument("--tenant", default="demo", help="tenant id (default demo)")
    demo_cmd.add_argument("--fsa", default="launch", help="state id; its state is replaced (default launch)")
    demo_cmd.add_argument("--rounds", type=int, default=5, help="rounds each agent reads and writes (default 5)")
    demo_cmd.set_defaults(run=run_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sqlalchemy.exc import OperationalError

    from app.errors import Problem

    try:
        args.run(args, Settings.from_env())
    except (OperationalError, Problem) as exc:
        # a database that is down or unreachable: one clear line, not a traceback
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SystemExit(f"sms: the database is unavailable: {reason}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
