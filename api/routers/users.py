"""/api/v1/users and /api/v1/me: users and tokens (admin), and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, SessionDep, StateDep, bearer_token
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.idempotency import fingerprint, idempotent
from api.mail import SmtpMailer
from api.schemas import (
    EmailChange,
    EnrollmentCreated,
    EnrollRequest,
    Me,
    NewToken,
    RoleGrantCreate,
    RoleGrantOut,
    TokenCreate,
    TokenOut,
    UserCreate,
    UserCreated,
    UserOut,
)
from api.services import users as svc

router = APIRouter(prefix="/api/v1", tags=["users"], responses=COMMON_ERRORS)
# Routes a person calls before they hold any credential (enrollment).
public_router = APIRouter(prefix="/api/v1", tags=["users"], responses=COMMON_ERRORS)


@router.get("/me", response_model=Me, summary="The caller: roles, team and the actions they allow")
async def me(user: CurrentUser) -> Me:
    return svc.me(user)


@router.get("/users", response_model=list[UserOut], summary="All users (admin)")
async def list_users(session: SessionDep, user: CurrentUser) -> list[UserOut]:
    return await svc.list_users(session=session, principal=user)


@router.post("/users", status_code=201, response_model=UserCreated, responses={**CONFLICT, **BODY_ERRORS},
             summary="Create a user with roles and a team; the token is in this answer only")
async def create_user(body: UserCreate, request: Request, session: SessionDep, user: CurrentUser,
                      app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 201, await svc.create_user(session=session, principal=user, body=body,
                                          chain=app.settings.audit_chain)

    return await idempotent(request, user, fingerprint("user", body.model_dump(mode="json")), produce,
                            app.sessionmaker)


@router.get("/users/{user_id}/tokens", response_model=list[TokenOut], responses={**NOT_FOUND},
            summary="A user's tokens (prefixes only, never secrets)")
async def list_tokens(user_id: str, session: SessionDep, user: CurrentUser) -> list[TokenOut]:
    return await svc.tokens(session=session, principal=user, user_id=user_id)


@router.post("/users/{user_id}/tokens", status_code=201, response_model=NewToken,
             responses={**NOT_FOUND, **BODY_ERRORS}, summary="Issue a new token; the secret is in this answer only")
async def new_token(user_id: str, request: Request, session: SessionDep, user: CurrentUser, app: StateDep,
                    body: TokenCreate | None = None) -> JSONResponse:
    name = body.name if body is not None else ""

    async def produce() -> tuple[int, object]:
        return 201, await svc.new_token(session=session, principal=user, user_id=user_id, name=name,
                                        chain=app.settings.audit_chain)

    return await idempotent(request, user, fingerprint("token", user_id, name), produce, app.sessionmaker)


@router.delete("/users/{user_id}/tokens/{token_id}", response_model=TokenOut, responses={**NOT_FOUND},
               summary="Revoke a token (it stops working at once)")
async def revoke_token(user_id: str, token_id: str, session: SessionDep, user: CurrentUser,
                       app: StateDep) -> TokenOut:
    return await svc.revoke(session=session, principal=user, user_id=user_id, token_id=token_id,
                            chain=app.settings.audit_chain)


@router.post("/users/{user_id}/enrollments", status_code=201, response_model=EnrollmentCreated,
             responses={**NOT_FOUND, **CONFLICT},
             summary="Mail a one-time enrollment code to the person's address (the answer says only where it went)")
async def new_enrollment(user_id: str, session: SessionDep, user: CurrentUser, app: StateDep) -> EnrollmentCreated:
    return await svc.new_enrollment(session=session, principal=user, user_id=user_id,
                                    mailer=SmtpMailer(app.settings), chain=app.settings.audit_chain)


@router.put("/users/{user_id}/email", response_model=UserOut, responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
            summary="Change a person's registered address (the old address is told; audited)")
async def change_email(user_id: str, body: EmailChange, session: SessionDep, user: CurrentUser,
                       app: StateDep) -> UserOut:
    return await svc.change_email(session=session, principal=user, user_id=user_id, email=body.email,
                                  reason=body.reason, mailer=SmtpMailer(app.settings), chain=app.settings.audit_chain)


@router.post("/users/{user_id}/tokens/{token_id}/confirm", response_model=TokenOut,
             responses={**NOT_FOUND, **CONFLICT},
             summary="A second admin confirms a re-issued credential (until then it acts in no maker-checker role)")
async def confirm_token(user_id: str, token_id: str, session: SessionDep, user: CurrentUser,
                        app: StateDep) -> TokenOut:
    return await svc.confirm_token(session=session, principal=user, user_id=user_id, token_id=token_id,
                                   chain=app.settings.audit_chain)


@public_router.post("/enroll", status_code=201, response_model=NewToken, responses={**NOT_FOUND, **BODY_ERRORS},
                    summary="Redeem the one-time code mailed to you for your own token (with SSO configured, "
                            "signed in as yourself)")
async def enroll(body: EnrollRequest, request: Request, session: SessionDep, app: StateDep) -> NewToken:
    return await svc.enroll(session=session, code=body.code, username=body.username, name=body.name,
                            settings=app.settings, jwt=app.jwt, sso_bearer=bearer_token(request),
                            chain=app.settings.audit_chain)


@router.get("/role-grants", response_model=list[RoleGrantOut], summary="Role grants: who proposed and approved what")
async def list_role_grants(session: SessionDep, user: CurrentUser, status: str | None = None) -> list[RoleGrantOut]:
    return await svc.list_grants(session=session, principal=user, status=status)


@router.post("/users/{user_id}/role-grants", status_code=201, response_model=RoleGrantOut,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Propose a role (deciding and admin roles need a second admin's approval)")
async def propose_role_grant(user_id: str, body: RoleGrantCreate, session: SessionDep, user: CurrentUser,
                             app: StateDep) -> RoleGrantOut:
    return await svc.propose_grant(session=session, principal=user, user_id=user_id, role=body.role,
                                   reason=body.reason, chain=app.settings.audit_chain)


@router.post("/role-grants/{grant_id}/approve", response_model=RoleGrantOut, responses={**NOT_FOUND, **CONFLICT},
             summary="Approve a pending role grant (a different admin than the proposer)")
async def approve_role_grant(grant_id: str, session: SessionDep, user: CurrentUser, app: StateDep) -> RoleGrantOut:
    return await svc.approve_grant(session=session, principal=user, grant_id=grant_id,
                                   chain=app.settings.audit_chain)
