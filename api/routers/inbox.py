"""/api/v1/inbox: the gates waiting on the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERRORS
from api.services import inbox as svc
from engine.wire import Inbox

router = APIRouter(prefix="/api/v1", tags=["inbox"], responses=COMMON_ERRORS)


@router.get("/inbox", response_model=Inbox,
            summary="Gates waiting on your roles that you may decide, oldest first, with time left to SLA; "
                    "pass next_cursor as ?cursor= for the next page")
async def inbox(session: SessionDep, user: CurrentUser, app: StateDep, cursor: str | None = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Inbox:
    return await svc.inbox(session=session, principal=user, secret=app.settings.secret_key, cursor=cursor,
                           limit=limit)
