"""Audit payloads as JSON: the one normaliser for what goes into an event's payload.

Used where events are built (the workflow, pure) and where they are appended (engine.audit), so a payload hashes
and reads back the same whatever built it: datetimes as ISO-8601 (``...Z``), enums and pydantic models as their
JSON values, keys as strings; NaN and infinities are refused (JSON has none).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_jsonable_python


def json_payload(payload: Any) -> dict[str, Any]:
    """The payload as it will read back from the JSON column."""
    data = json.loads(json.dumps(payload, default=to_jsonable_python, allow_nan=False))
    if not isinstance(data, dict):
        raise TypeError("audit payload must be a JSON object")
    return data
