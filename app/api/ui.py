"""The live page of a state (DESIGN §13): `GET /ui/{tenant}/{fsa}`.

The page is static: its script reads the state, slices, history, diffs and the change feed from
this service's API, with the key the user enters in the page (kept in the tab's sessionStorage,
sent as `Authorization: Bearer`). It holds no data, so it is served without a key. Its files ship
inside the package (app/ui), found with importlib.resources in a checkout, an editable install and
a wheel alike.

Its answers carry a strict Content Security Policy: the page runs its own script and stylesheet
only, talks to this service only, and may not be framed; Trusted Types forbid HTML sinks, so text
from a state can only ever be text.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Annotated

from litestar import Response, get
from litestar.datastructures import State
from litestar.params import PathParameter

from app.api.auth import OPEN
from app.api.routes import FsaId, TenantId, check_ids
from app.errors import not_found

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # data: for the icon drawn in the page's head
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new release of the page is seen at the next load
}
HTML = "text/html"  # Litestar adds the charset
# The page's script and stylesheet, by the name they are served under (/ui/{name}); nothing else
# is served from the page's directory.
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
FileName = Annotated[str, PathParameter(description="The page's script or stylesheet")]


@functools.cache
def page_file(name: str) -> bytes:
    """A file of the page, as shipped in the package."""
    return files("app.ui").joinpath(name).read_bytes()


def _file_response(name: str, media_type: str) -> Response:
    return Response(page_file(name), media_type=media_type, headers=PAGE_HEADERS)


@get("/ui/{tenant_id:str}/{fsa_id:str}", opt=OPEN, include_in_schema=False, sync_to_thread=False)
def state_page(state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """The live page of one state: its tree, slices, change feed, history and time travel."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return _file_response("index.html", HTML)


@get("/ui/{name:str}", opt=OPEN, include_in_schema=False, sync_to_thread=False)
def state_page_file(name: FileName) -> Response:
    """The page's script and stylesheet."""
    if name not in ASSETS:
        raise not_found("the state pages are at /ui/{tenant}/{fsa}")
    return _file_response(name, ASSETS[name])


UI_ROUTES = [state_page, state_page_file]
