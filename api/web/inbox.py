"""The inbox: the gates waiting on the signed-in decider."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.services.inbox import inbox
from api.web.render import PAGE_SIZE, UI, UserWeb, call, render

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/inbox", name="ui_inbox")
async def inbox_page(web: UserWeb, cursor: str | None = None) -> Response:
    box = await call(inbox(session=web.db, principal=web.user, secret=web.app.settings.secret_key,
                           cursor=cursor or None, limit=PAGE_SIZE))
    return render(web.request, "inbox.html", {"title": "Inbox", "active": "inbox", "inbox": box,
                                              "paged": bool(cursor), "cursor": cursor or None})
