"""The current SQL, installed as the package app._sql (pyproject.toml maps this directory;
app/db/sqlfiles.py finds it there). A regular package, not a namespace one, because setuptools'
editable installs cannot map a directory without __init__.py into another package."""
