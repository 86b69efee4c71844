"""The server-rendered web UI (Jinja2 + htmx), served by the API application under ``/ui``.

Mounted by one line in ``api.app.create_app``: ``from api.web import mount_web; mount_web(app)``.
Pages call the same service functions and the same authorization table as the JSON API;
only the sign-in (a session cookie instead of a bearer header) and CSRF are specific to it.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.web.findings import router as findings_router
from api.web.routes import mount_web as _mount_routes


def mount_web(app: FastAPI) -> None:
    """The UI's routes (api.web.routes) and its findings pages (api.web.findings), once."""
    mounted = getattr(app.state, "web_ui_mounted", False)
    _mount_routes(app)
    if not mounted:
        app.include_router(findings_router)


__all__ = ["mount_web"]
