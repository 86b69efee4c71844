"""What every ``progression`` HTTP command shares: configuration, the API client, output, exit codes, errors.

Configuration: ``PROGRESSION_URL`` and ``PROGRESSION_TOKEN``, else the config file
(``PROGRESSION_CONFIG`` or ``~/.config/progression/config.toml``) written by
``progression login``. Every command has ``--json`` for scripts. Exit codes:

    0 ok, 1 server/other error, 2 invalid input, 3 refused (401/403/409),
    4 not found, 5 cannot connect, 6 a check fails (``route --strict`` only).

Errors print the API's message (and field/line details for invalid input), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from client.cli.render import printable
from client.sdk import (
    ConflictError,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    ProgressionAPIError,
    ProgressionClient,
    ServerError,
    Unauthorized,
)

DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_CONNECT, EXIT_CHECKS_FAIL = 0, 1, 2, 3, 4, 5, 6

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


# ---- configuration ---------------------------------------------------------------------------


def config_path() -> Path:
    explicit = os.environ.get("PROGRESSION_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "progression" / "config.toml"


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"{path}: not valid TOML ({exc}); run `progression login` again", EXIT_INVALID)
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# written by `progression login`\nurl = {_toml_string(url)}\ntoken = {_toml_string(token)}\n"
    # Create with mode 600 from the start: the token must never be readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path


def settings() -> tuple[str, str | None]:
    """(url, token): environment first, then the config file, then the embedded default URL."""
    config = read_config()
    url = os.environ.get("PROGRESSION_URL") or config.get("url") or DEFAULT_URL
    token = os.environ.get("PROGRESSION_TOKEN") or config.get("token")
    return url, token


@contextmanager
def client() -> Iterator[ProgressionClient]:
    url, token = settings()
    with ProgressionClient(url, token) as c:
        yield c


A = TypeVar("A")


def answer_or_json(call: Callable[[ProgressionClient], A], as_json: bool) -> A | None:
    """One request's answer for the command to print; under ``--json`` it is printed here as JSON and the
    command gets None (nothing more to print)."""
    with client() as c:
        value = call(c)
    if as_json:
        emit_json(value)
        return None
    return value


# ---- output and errors -----------------------------------------------------------------------


# Not a terminal (a pipe, a file, CI): lines are never wrapped or cut at 80 columns, so an id printed there is the
# value to paste (tables take their natural width; text is not folded).
UNWRAPPED_WIDTH = 100_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=UNWRAPPED_WIDTH, soft_wrap=True)


def out() -> Console:
    # Built per call so it writes to the current sys.stdout (test runners swap it).
    return _console(stderr=False)


def err() -> Console:
    return _console(stderr=True)


def emit_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")  # text as text
    sys.stdout.flush()


def fail(message: str, code: int, details: list[str] | None = None) -> NoReturn:
    console = err()
    console.print(Text("error: ", style="bold red") + Text(printable(message)))
    for line in details or []:
        console.print(Text("  " + printable(line)))
    raise typer.Exit(code)


def exit_code_for(exc: ProgressionAPIError) -> int:
    if isinstance(exc, ConnectionFailed):
        return EXIT_CONNECT
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, Unauthorized | Forbidden | ConflictError):
        return EXIT_REFUSED
    if isinstance(exc, InvalidInput):
        return EXIT_INVALID
    if isinstance(exc, ServerError):
        return EXIT_ERROR
    return EXIT_ERROR


def detail_lines(details: Any) -> list[str]:
    """Field/line details of a 422 in words: `progression.yaml:7: model.business_intent: ...`."""
    if not isinstance(details, list):
        return []
    lines = []
    for d in details:
        if not isinstance(d, dict):
            lines.append(str(d))
            continue
        where = ""
        if d.get("file"):
            where = f"{d['file']}:{d['line']}" if d.get("line") is not None else str(d["file"])
        elif d.get("line") is not None:
            where = f"line {d['line']}"
        field = d.get("field") or ""
        parts = [p for p in (where, field, str(d.get("message", ""))) if p]
        lines.append(": ".join(parts))
    return lines


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO-8601 date or time option (UTC when it names no zone); a clear error otherwise."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO-8601 date or time (e.g. 2026-05-01 or 2026-05-01T12:00:00Z)",
             EXIT_INVALID)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def handle_errors(fn: F) -> F:
    """Turn API errors into a message on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProgressionAPIError as exc:
            if kwargs.get("as_json"):
                sys.stderr.write(json.dumps({"code": exc.code, "message": exc.message, "details": exc.details,
                                             "status": exc.status}, default=str) + "\n")
                raise typer.Exit(exit_code_for(exc)) from None
            lines = detail_lines(exc.details) if isinstance(exc, InvalidInput) else []
            # The first detail usually repeats the message; do not print it twice.
            lines = [line for line in lines if line != exc.message and not exc.message.endswith(line)]
            fail(f"{exc.message} [{exc.code}]", exit_code_for(exc), lines)
        except OSError as exc:
            fail(f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}", EXIT_INVALID)

    return wrapper  # type: ignore[return-value]



# ---- login -----------------------------------------------------------------------------------


def login(
    url: Annotated[str, typer.Option("--url", help="The API's base URL, e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option("--token", help="Your API token (prg_...).", prompt=True,
                                       hide_input=True)],
    as_json: JsonOpt = False,
) -> None:
    """Save the API URL and token to the config file (mode 600)."""
    path = write_config(url.rstrip("/"), token)
    if as_json:
        emit_json({"config": str(path), "url": url.rstrip("/")})
    else:
        out().print(Text(f"saved {url.rstrip('/')} and your token to {path} (mode 600)"))


