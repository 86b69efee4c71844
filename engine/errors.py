"""Domain errors with stable codes. The API maps them to HTTP statuses."""

from __future__ import annotations

from typing import Any


class ProgressionError(Exception):
    """A business error with a stable machine-readable ``code``."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidSpec(ProgressionError):
    """A progression.yaml that does not parse or validate. ``details`` lists every problem."""

    code = "invalid_spec"
    status = 422


class InvalidPolicy(ProgressionError):
    code = "invalid_policy"
    status = 422


class NotFound(ProgressionError):
    code = "not_found"
    status = 404


class Conflict(ProgressionError):
    code = "conflict"
    status = 409


class Forbidden(ProgressionError):
    code = "forbidden"
    status = 403


class NoDatabase(ProgressionError):
    """A command that needs the application database found none (and never creates one)."""

    code = "no_database"
    status = 503
