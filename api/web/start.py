"""Start a progression from the browser: a progression.yaml and its evidence files."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml
from fastapi import APIRouter, Response
from starlette.datastructures import UploadFile

from api.authz import Action
from api.services.progressions import (
    Upload,
    start_progression,
)
from api.web.render import UI, PostWeb, UserWeb, _problem_text, redirect, render, require_or_page
from engine.errors import ProgressionError

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/start", name="ui_start")
async def start_page(web: UserWeb) -> Response:
    require_or_page(web.user, Action.start_progression)
    return render(web.request, "start.html", {"title": "Start a progression", "active": "progressions"})


def match_evidence(spec_text: bytes, files: list[tuple[str, bytes, str | None]]) -> tuple[list[Any], list[str]]:
    """Map uploaded files to the spec's evidence names by file name (``evidence/metrics.json`` -> metrics).

    Returns the uploads and the file names that match no declared evidence.
    """

    try:
        data = yaml.safe_load(spec_text) or {}
        declared = data.get("evidence") or {} if isinstance(data, dict) else {}
    except yaml.YAMLError:
        declared = {}
    by_basename: dict[str, str] = {}
    if isinstance(declared, dict):
        for name, path in declared.items():
            if isinstance(name, str) and isinstance(path, str):
                by_basename.setdefault(PurePosixPath(path).name, name)
                by_basename.setdefault(name, name)
    uploads, unmatched = [], []
    for filename, content, content_type in files:
        base = PurePosixPath(filename.replace("\\", "/")).name
        name = by_basename.get(base) or by_basename.get(PurePosixPath(base).stem)
        if name is None:
            unmatched.append(base)
            continue
        uploads.append(Upload(name=name, filename=base, data=content, content_type=content_type))
    return uploads, unmatched


@router.post("/start")
async def start_form(web: PostWeb) -> Response:
    form = await web.request.form()
    spec_upload = form.get("spec_file")
    spec_text = b""
    if isinstance(spec_upload, UploadFile) and spec_upload.filename:
        spec_text = await spec_upload.read()
    if not spec_text.strip():
        spec_text = str(form.get("spec_text") or "").encode()
    files = []
    for value in form.getlist("evidence_files"):
        if isinstance(value, UploadFile) and value.filename:
            files.append((value.filename, await value.read(), value.content_type))
    error: str | None = None
    status = 422
    if not spec_text.strip():
        error = "Choose your progression.yaml file or paste its text."
    else:
        uploads, unmatched = match_evidence(spec_text, files)
        if unmatched:
            error = (f"These files match no evidence declared in progression.yaml: {', '.join(unmatched)}. "
                     "Name each file as in the spec's evidence paths.")
        else:
            try:
                state = await start_progression(session=web.db, app=web.app, principal=web.user,
                                                spec_text=spec_text, spec_filename="progression.yaml",
                                                uploads=uploads)
            except ProgressionError as exc:
                error, status = _problem_text(exc), exc.status
            else:
                return redirect(web.request, f"{UI}/progressions/{state.progression_id}?done=started")
    return render(web.request, "start.html", {"title": "Start a progression", "active": "progressions",
                                              "error": error, "spec_text": spec_text.decode("utf-8", "replace")},
                  status=status)
