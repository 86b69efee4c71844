"""/api/v1/todo (everything waiting on the caller) and /api/v1/schemas/progression.json (for editors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.authz import Action, require
from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERRORS
from api.services.todo import todo
from engine.scaffold import progression_schema
from engine.wire import Todo

router = APIRouter(prefix="/api/v1", tags=["guidance"], responses=COMMON_ERRORS)


@router.get("/todo", response_model=Todo,
            summary="Everything waiting on me: gates to decide, evidence to fix, change requests, findings to "
                    "remediate or verify; most urgent first")
async def get_todo(session: SessionDep, user: CurrentUser, app: StateDep) -> Todo:
    return await todo(session=session, app=app, principal=user)


@router.get("/schemas/progression.json", summary="The JSON Schema of progression.yaml (for editors), with this "
                                                 "installation's business intents")
async def progression_json_schema(user: CurrentUser, app: StateDep) -> dict[str, Any]:
    require(user, Action.read_policies)
    return progression_schema(app.registry.intents())
