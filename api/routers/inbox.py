"""/api/v1/inbox: the gates waiting on the caller."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep
from api.errors import COMMON_ERRORS
from api.services import inbox as svc
from engine.wire import Inbox

router = APIRouter(prefix="/api/v1", tags=["inbox"], responses=COMMON_ERRORS)


@router.get("/inbox", response_model=Inbox,
            summary="Gates waiting on your roles that you may decide, oldest first, with time left to SLA")
async def inbox(session: SessionDep, user: CurrentUser) -> Inbox:
    return await svc.inbox(session=session, principal=user)
