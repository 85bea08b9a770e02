"""Everything that talks to PostgreSQL. Only `app.db.queries` runs SQL at request time."""
