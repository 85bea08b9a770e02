"""The current definitions in sql/, in install order (file names sort in dependency order).

sql/ ships inside the package as app._sql (pyproject.toml maps it), so it is found the same way
in a checkout, an editable install and a wheel."""

from importlib.resources import files


def current_sql() -> str:
    """All of sql/ as one script: what a fresh database built from the present would run."""
    scripts = [entry for entry in files("app._sql").iterdir() if entry.name.endswith(".sql")]
    return "\n".join(script.read_text(encoding="utf-8") for script in sorted(scripts, key=lambda script: script.name))
