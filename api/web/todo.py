"""To do: everything waiting on the signed-in person, most urgent first (``api.services.todo``)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.services.todo import todo
from api.web.render import UI, UserWeb, call, render

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/todo", name="ui_todo")
async def todo_page(web: UserWeb) -> Response:
    items = await call(todo(session=web.db, app=web.app, principal=web.user))
    return render(web.request, "todo.html", {"title": "To do", "active": "todo", "todo": items})
