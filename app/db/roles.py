"""The database roles: the owner of the schema (migrations, SQL users, the `sms` commands) and
sms_api, the role the HTTP service's requests run as, bound by row-level security (DESIGN §10)."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

API_ROLE = "sms_api"


def api_database_url(owner_url: str, role: str = API_ROLE) -> str:
    """`owner_url` as `role`, without a password: what trust or peer authentication (the embedded
    server's) lets in. Elsewhere, give the role a password and SMS_API_DATABASE_URL."""
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")])
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{host}", query=query))
