"""The current definitions in sql/, in install order (file names sort in dependency order)."""

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def current_sql() -> str:
    """All of sql/ as one script: what a fresh database built from the present would run."""
    return "\n".join(path.read_text() for path in sorted(SQL_DIR.glob("*.sql")))
