"""The server-rendered web UI (Jinja2 + htmx), served by the API application under ``/ui``.

Mounted by one line in ``api.app.create_app``: ``from api.web import mount_web; mount_web(app)``.
Pages call the same service functions and the same authorization table as the JSON API;
only the sign-in (a session cookie instead of a bearer header) and CSRF are specific to it.
"""

from __future__ import annotations

from api.web.routes import mount_web

__all__ = ["mount_web"]
