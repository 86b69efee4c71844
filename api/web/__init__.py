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

from api.web import audit, findings, inbox, models, monitoring, policies, progressions, signin, start
from api.web.render import STATIC_DIR, UI, WebError, error_response, finish
from api.web.session import CsrfFailed, LoginRequired

PAGE_FAMILIES = (signin, inbox, progressions, start, models, policies, audit, findings, monitoring)


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

    # The bare root leads people to the UI. Routes match in order, so a "/" of the API's own
    # (included before this) would still win.
    @app.get("/", include_in_schema=False)
    async def _root() -> Response:
        return RedirectResponse(UI + "/", status_code=307)

__all__ = ["mount_web"]
