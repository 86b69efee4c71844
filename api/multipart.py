"""Reading multipart uploads: a ``spec`` part and ``evidence.<name>`` parts (names are dynamic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from api.errors import ApiError
from api.services.progressions import EVIDENCE_PREFIX, Upload


@dataclass
class MultipartBody:
    spec: bytes | None = None
    spec_filename: str = "progression.yaml"
    uploads: list[Upload] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any]:
        """What the request means, independent of the multipart boundary (for idempotency)."""
        return {"spec": hashlib.sha256(self.spec).hexdigest() if self.spec is not None else None,
                "evidence": sorted((u.name, u.filename, hashlib.sha256(u.data).hexdigest()) for u in self.uploads)}


async def read_multipart(request: Request, *, allow_spec: bool, require_spec: bool) -> MultipartBody:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       "send multipart/form-data: a 'spec' part (progression.yaml) and 'evidence.<name>' parts, "
                       "e.g. curl -F spec=@progression.yaml -F evidence.metrics=@evidence/metrics.json",
                       {"content_type": ctype})
    form = await request.form(max_files=200, max_fields=200)
    body = MultipartBody()
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                filename, content_type = value.filename, value.content_type
            else:
                data, filename, content_type = value.encode(), None, None
            if key == "spec" and allow_spec:
                if body.spec is not None:
                    raise ApiError(422, "duplicate_spec", "send exactly one 'spec' part")
                body.spec = data
                if filename:
                    body.spec_filename = filename.rsplit("/", 1)[-1] or body.spec_filename
            elif key.startswith(EVIDENCE_PREFIX):
                body.uploads.append(Upload(name=key[len(EVIDENCE_PREFIX):], filename=filename, data=data,
                                           content_type=content_type))
            else:
                expected = "'spec' and 'evidence.<name>'" if allow_spec else "'evidence.<name>'"
                raise ApiError(422, "unknown_part", f"unexpected form part {key!r}; expected {expected} parts",
                               {"part": key})
    finally:
        await form.close()
    if require_spec and body.spec is None:
        raise ApiError(422, "missing_spec", "the 'spec' part (your progression.yaml) is missing",
                       {"part": "spec"})
    return body


def multipart_openapi(description: str, with_spec: bool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    if with_spec:
        props["spec"] = {"type": "string", "format": "binary", "description": "the progression.yaml file"}
        required.append("spec")
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "properties": props, "required": required,
            "patternProperties": {r"^evidence\.[a-z][a-z0-9_]*$": {"type": "string", "format": "binary"}},
            "additionalProperties": {"type": "string", "format": "binary",
                                     "description": "one part per evidence file, named evidence.<name>"}}}}}}
