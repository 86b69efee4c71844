"""Identity: users, hashed tokens, revocation, SSO JWTs, the role table and the users CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from temporalio.client import Client

from api.authz import ROLE_ACTIONS, SERVICE_ROLES, Action, Principal, allowed
from engine.database import upgrade
from engine.db import ApiToken, User, make_engine, make_sessionmaker
from engine.errors import Conflict
from engine.identity import (
    TOKEN_PREFIX,
    InvalidIdentity,
    JWTVerifier,
    authenticate_token,
    create_user,
    hash_token,
    issue_token,
    provision_jwt_user,
    revoke_token,
)
from engine.policy import Role
from engine.settings import Settings
from testing.api import api_env


async def test_tokens_are_hashed_shown_once_and_revocable(database_url: str) -> None:
    await upgrade(database_url)
    engine = make_engine(database_url)
    sm = make_sessionmaker(engine)
    try:
        async with sm() as session:
            user, token = await create_user(session, username="dana", roles=["model_developer"],
                                            team="retail-risk", display_name="Dana")
            await session.commit()
        assert token.startswith(TOKEN_PREFIX) and len(token) > 40
        async with sm() as session:
            row = (await session.execute(select(ApiToken).where(ApiToken.user_id == user.id))).scalar_one()
            # Only the digest is stored; the secret appears nowhere in the row.
            assert row.token_hash == hash_token(token) and token not in (row.token_hash, row.prefix, row.name)
            assert (await authenticate_token(session, token)).id == user.id  # type: ignore[union-attr]
            assert await authenticate_token(session, token + "x") is None
            assert await authenticate_token(session, "not-a-token") is None
            second_row, second = await issue_token(session, user, name="ci")
            await revoke_token(session, user_id=user.id, token_id=row.id)
            await session.commit()
        async with sm() as session:
            assert await authenticate_token(session, token) is None  # revoked
            assert (await authenticate_token(session, second)) is not None
            u = await session.get(User, user.id)
            assert u is not None
            u.active = False
            await session.commit()
        async with sm() as session:
            assert await authenticate_token(session, second) is None  # inactive user
        async with sm() as session:
            with pytest.raises(Conflict):
                await create_user(session, username="dana", roles=["auditor"])
            with pytest.raises(InvalidIdentity, match="unknown role 'god'"):
                await create_user(session, username="eve", roles=["god"])
            with pytest.raises(InvalidIdentity):
                await create_user(session, username="eve", roles=[])
    finally:
        await engine.dispose()


def test_role_table_is_the_single_source() -> None:
    def p(*roles: Role) -> Principal:
        user = User(id="u", username="x", roles=[r.value for r in roles], team="t", display_name="")
        return Principal.of(user)

    assert allowed(p(Role.model_developer), Action.start_progression)
    assert not allowed(p(Role.model_developer), Action.decide)
    assert not allowed(p(Role.auditor), Action.decide)
    assert not allowed(p(Role.auditor), Action.start_progression)
    assert allowed(p(Role.auditor), Action.export_audit) and allowed(p(Role.auditor), Action.verify_audit)
    assert not allowed(p(Role.model_developer), Action.export_audit)
    assert allowed(p(Role.model_risk_officer), Action.decide)
    assert allowed(p(Role.admin), Action.manage_users) and not allowed(p(Role.admin), Action.decide)
    assert not allowed(p(Role.model_validator), Action.manage_users)
    # every person reads themself; a service identity (the monitoring jobs) does only its one thing
    assert all(Action.read_self in acts for role, acts in ROLE_ACTIONS.items() if role not in SERVICE_ROLES)
    assert ROLE_ACTIONS[Role.monitor] == frozenset({Action.post_monitoring})
    assert not allowed(p(Role.admin), Action.post_monitoring) and not allowed(p(Role.admin), Action.request_retirement)
    assert not p(Role.model_developer).reads_all_teams and p(Role.auditor).reads_all_teams


SSO_ISSUER = "https://sso.bank.test"
SSO_AUDIENCE = "progression"


def sso_settings(jwks: Path) -> dict[str, str]:
    """The settings of an installation with SSO whose keys are ``jwks`` (see ``make_jwks``; tokens: ``sso_token``)."""
    return {"jwt_issuer": SSO_ISSUER, "jwt_audience": SSO_AUDIENCE, "jwt_jwks": str(jwks)}


def make_jwks(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "test-key", "use": "sig", "alg": "RS256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def sso_token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    now = int(time.time())
    base = {"iss": SSO_ISSUER, "aud": SSO_AUDIENCE, "sub": "sub-1", "iat": now, "exp": now + 600,
            "preferred_username": "sso.rita", "roles": ["model_risk_officer"], "team": "model-risk"}
    base.update(claims)
    return jwt.encode(base, key, algorithm="RS256", headers={"kid": "test-key"})


async def test_jwt_verification_and_provisioning(tmp_path: Path, sqlite_url: str) -> None:
    key, jwks = make_jwks(tmp_path)
    settings = Settings(env="test", data_dir=tmp_path, database_url=sqlite_url, **sso_settings(jwks))
    verifier = JWTVerifier(settings)
    claims = await verifier.verify(sso_token(key))
    assert claims is not None and claims["preferred_username"] == "sso.rita"
    assert await verifier.verify(sso_token(key, iss="https://evil.test")) is None
    assert await verifier.verify(sso_token(key, aud="other")) is None
    assert await verifier.verify(sso_token(key, exp=int(time.time()) - 10)) is None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await verifier.verify(sso_token(other)) is None  # wrong signing key

    await upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sm = make_sessionmaker(engine)
    try:
        async with sm() as session:
            user = await provision_jwt_user(session, claims, settings)
            assert user is not None and user.external and user.roles == ["model_risk_officer"]
            assert user.team == "model-risk"
        changed = await verifier.verify(sso_token(key, roles=["auditor", "not-a-role"], team="audit"))
        assert changed is not None
        async with sm() as session:
            again = await provision_jwt_user(session, changed, settings)
            assert again is not None and again.id == user.id and again.roles == ["auditor"] and again.team == "audit"
        # the SSO cannot make a person the monitoring service too (its figures judge models): monitor is dropped
        mixed = await verifier.verify(sso_token(key, roles=["model_developer", "monitor"], team="retail-risk"))
        assert mixed is not None
        async with sm() as session:
            dev = await provision_jwt_user(session, mixed, settings)
            assert dev is not None and dev.roles == ["model_developer"]
            # A local account is never taken over by an SSO identity with the same name.
            await create_user(session, username="local.admin", roles=["admin"])
            await session.commit()
        hijack = await verifier.verify(sso_token(key, preferred_username="local.admin", roles=["admin"]))
        assert hijack is not None
        async with sm() as session:
            assert await provision_jwt_user(session, hijack, settings) is None
    finally:
        await engine.dispose()


async def test_sso_jwt_through_http(tmp_path: Path, sqlite_url: str, temporal_client: Client,
                                    task_queue: str) -> None:
    key, jwks = make_jwks(tmp_path)
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False, **sso_settings(jwks)) as env:
        headers = {"Authorization": f"Bearer {sso_token(key)}"}
        me = await env.http.get("/api/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "sso.rita" and me.json()["external"] is True
        assert "decide" in me.json()["actions"]
        assert (await env.http.get("/api/v1/inbox", headers=headers)).status_code == 200
        forged = {"Authorization": f"Bearer {sso_token(key, iss='https://evil.test')}"}
        assert (await env.http.get("/api/v1/me", headers=forged)).status_code == 401
        # API tokens keep working beside SSO.
        assert (await env.http.get("/api/v1/me", headers=env.auth("ann"))).status_code == 200
