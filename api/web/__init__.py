"""The server-rendered web UI (Jinja2 + htmx), served by the API application under ``/ui``.

Mounted by one line in ``api.app.create_app``: ``mount_web(app)``. Pages call the same service functions and the
same authorization table as the JSON API; only the sign-in (a session cookie instead of a bearer header) and CSRF
are specific to it. ``render`` holds what the pages share; each page family has its own router.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import UnknownQueryParameters, http_error_text, http_exception_response
from api.errors import error_response as json_error
from api.web import (
    audit,
    features,
    findings,
    inbox,
    models,
    monitoring,
    policies,
    progressions,
    signin,
    start,
    todo,
)
from api.web.render import STATIC_DIR, UI, WebError, error_response, finish
from api.web.session import CsrfFailed, LoginRequired

PAGE_FAMILIES = (signin, todo, inbox, progressions, start, models, features, policies, audit, findings,
                 monitoring)


_HTTP_HEADINGS = {404: "Page not found", 405: "Not possible on this page", 400: "Bad request",
                  413: "Too large"}


def _is_ui(request: Request) -> bool:
    return request.url.path == UI or request.url.path.startswith(UI + "/")


def mount_web(app: FastAPI) -> None:
    """Add the UI routes, its static files and its HTML error pages to the API application (once)."""
    if getattr(app.state, "web_ui_mounted", False):
        return
    app.state.web_ui_mounted = True
    for family in PAGE_FAMILIES:
        app.include_router(family.router)
    app.mount(f"{UI}/static", StaticFiles(directory=str(STATIC_DIR)), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        target = f"{UI}/login?{urlencode({'next': exc.next_path})}"
        if request.headers.get("HX-Request") == "true":
            return finish(request, Response(status_code=401, headers={"HX-Redirect": target}))
        return finish(request, RedirectResponse(target, status_code=303))

    @app.exception_handler(CsrfFailed)
    async def _csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        return error_response(request, 403, "Security check failed", exc.reason, "csrf_failed")

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        return error_response(request, exc.status, exc.heading, exc.message, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Under /ui/ (a missing static file, a method a page does not take) a page; elsewhere the API's JSON.
        if _is_ui(request):
            code, message = http_error_text(request, exc)
            return error_response(request, exc.status_code, _HTTP_HEADINGS.get(exc.status_code, "Error"),
                                  message, code)
        return await http_exception_response(request, exc)

    @app.exception_handler(UnknownQueryParameters)
    async def _unknown_query(request: Request, exc: UnknownQueryParameters) -> Response:
        # The strict query check runs on every route: the UI's pages answer it as a page, the API as JSON.
        if _is_ui(request):
            return error_response(request, exc.status, "Please correct the address", exc.message, exc.code)
        return json_error(exc.status, exc.code, exc.message, exc.details)

    # Every other /ui/ address is a page that does not exist: an HTML 404, never the API's JSON. Added after
    # the static files' mount and the pages, so it only catches what nothing else matched.
    @app.api_route(UI + "/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                   include_in_schema=False)
    async def _no_such_page(request: Request, path: str) -> Response:
        return error_response(request, 404, "Page not found",
                              f"There is no page at {request.url.path}. Check the address, or start from the "
                              "home page.", "not_found")

    app.router.routes[-1].accepts_any_query = True  # type: ignore[attr-defined]  # an unknown page is a 404 whatever its query

    # The bare root leads people to the UI. Routes match in order, so a "/" of the API's own
    # (included before this) would still win.
    @app.get("/", include_in_schema=False)
    async def _root() -> Response:
        return RedirectResponse(UI + "/", status_code=307)

__all__ = ["mount_web"]
