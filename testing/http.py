"""Small HTTP servers a test stands up on loopback: webhook receivers, squatters on a port, health probes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log lines)."""

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port from a daemon thread; yields the port; shut down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def html_elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every element (tag, attributes) as a browser's parser sees it: escaped text is not an element."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.found
