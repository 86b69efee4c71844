"""Red team: an administrator with too much power against enrollment (the codes that make a person's credential).

The hole this closes: the admin created a validator, got the enrollment code in the answer, redeemed it himself
and decided gates as "the validator" (defeating ``linked_credential`` and the deciding-role maker-checker). Now
the code is mailed (a real SMTP server on loopback: ``testing.mail``) to the person's registered address and the
admin sees only ``a***@bank.example``; the code is bound to its person, single use, short-lived and stored only
hashed; with SSO configured it redeems only for a caller whose SSO identity is the person. An admin who changes
a person's address tells the old address (audited), and a credential re-issued after that (or to a person who
held one before) acts in no maker-checker role until a second admin confirms it. Each test fails without its
control (see the report of the controls session for the red runs).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from temporalio.client import Client

from engine.db import AuditEvent, DecisionRow, Enrollment, User, utcnow
from engine.identity import create_user, hash_token
from testing.api import ApiEnv, api_env, decide, started_at_gate
from tests.api.test_api_identity import make_jwks, sso_settings, sso_token
from tests.api.test_web_ui import Browser


async def _admin(env: ApiEnv, username: str) -> None:
    async with env.sessionmaker() as session:
        user, token = await create_user(session, username=username, roles=["admin"], team="platform",
                                        email=f"{username}@bank.example")
        await session.commit()
    env.tokens[username], env.user_ids[username] = token, user.id


async def _events(env: ApiEnv, event_type: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)
                                           .order_by(AuditEvent.seq))).all())


async def _new_validator(env: ApiEnv, username: str = "vic", email: str | None = "vic@bank.example") -> str:
    """A validator created through the API by adam, the grant approved by ada (no credential yet)."""
    body: dict[str, Any] = {"username": username, "roles": ["model_validator"], "team": "validation"}
    if email:
        body["email"] = email
    r = await env.http.post("/api/v1/users", json=body, headers=env.auth("adam"))
    assert r.status_code == 201, r.text
    grant = r.json()["user"]["grants"][0]["id"]
    approved = await env.http.post(f"/api/v1/role-grants/{grant}/approve", headers=env.auth("ada"))
    assert approved.status_code == 200, approved.text
    return str(r.json()["user"]["id"])


async def test_attack_the_admin_never_holds_the_code_of_the_validator_he_created(env: ApiEnv) -> None:
    await _admin(env, "ada")
    vic = await _new_validator(env)
    r, code = await env.enrollment_code("adam", vic, "vic@bank.example")
    assert env.mail is not None
    # The admin's answer, the audit trail and the listing carry no code: only where it went.
    assert "enr_" not in r.text and r.json()["sent_to"] == "v***@bank.example", r.text
    created = (await _events(env, "enrollment.created"))[-1]
    assert "enr_" not in str(created.payload) and created.payload["sent_to"] == "v***@bank.example"
    async with env.sessionmaker() as session:
        row = (await session.scalars(select(Enrollment).where(Enrollment.user_id == vic))).one()
    assert row.code_hash == hash_token(code) and code not in str(vars(row))  # stored only hashed
    assert [m.to for m in env.mail.received if code in m.body] == [["vic@bank.example"]]  # to nobody else
    # Bound to its person: the right code under another name is refused like an unknown code.
    for other in ("dana", "adam", "VIC"):
        wrong = await env.http.post("/api/v1/enroll", json={"code": code, "username": other})
        assert wrong.status_code == 404 and wrong.json()["code"] == "enrollment_invalid", (other, wrong.text)
    ok = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic", "name": "laptop"})
    assert ok.status_code == 201 and ok.json()["issued_by"] == "enrollment:adam", ok.text
    again = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"})  # single use
    assert again.status_code == 404 and again.json()["code"] == "enrollment_invalid"


async def test_a_code_is_short_lived_and_a_newer_one_supersedes_it(env: ApiEnv) -> None:
    assert env.mail is not None
    await _admin(env, "ada")
    vic = await _new_validator(env)
    _, first = await env.enrollment_code("adam", vic, "vic@bank.example")
    _, second = await env.enrollment_code("adam", vic, "vic@bank.example")
    assert first != second
    r = await env.http.post("/api/v1/enroll", json={"code": first, "username": "vic"})
    assert r.status_code == 404 and r.json()["code"] == "enrollment_invalid", r.text  # superseded
    async with env.sessionmaker() as session:
        row = (await session.scalars(select(Enrollment).where(Enrollment.code_hash == hash_token(second)))).one()
        assert row.expires_at - row.created_at <= timedelta(hours=1)
        await session.execute(update(Enrollment).where(Enrollment.id == row.id).values(
            expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    r = await env.http.post("/api/v1/enroll", json={"code": second, "username": "vic"})
    assert r.status_code == 404 and r.json()["code"] == "enrollment_invalid", r.text  # expired


async def test_no_address_or_no_mail_server_means_no_code_for_anyone(env: ApiEnv, sqlite_url: str, tmp_path: Path,
                                                                      temporal_client: Client,
                                                                      task_queue: str) -> None:
    await _admin(env, "ada")
    nomail = await _new_validator(env, "nomail", email=None)
    r = await env.http.post(f"/api/v1/users/{nomail}/enrollments", headers=env.auth("adam"))
    assert r.status_code == 409 and r.json()["code"] == "no_email_address", r.text
    # The mail server refuses or is unreachable: 503, nothing created, and the code is not shown instead.
    env.settings.smtp_port = 1  # nothing listens there
    vic = await _new_validator(env)
    r = await env.http.post(f"/api/v1/users/{vic}/enrollments", headers=env.auth("adam"))
    assert r.status_code == 503 and r.json()["code"] == "mail_unavailable" and "enr_" not in r.text, r.text
    assert await env.count(Enrollment, Enrollment.user_id == vic) == 0
    env.settings.smtp_host = None  # not configured at all
    r = await env.http.post(f"/api/v1/users/{vic}/enrollments", headers=env.auth("adam"))
    assert r.status_code == 503 and r.json()["code"] == "mail_unavailable" and "enr_" not in r.text, r.text


async def test_attack_admin_changes_the_address_then_re_enrolls_the_validator(env: ApiEnv) -> None:
    """The admin points vera's address at his own mailbox and enrolls her: vera's old address is told first, the
    change is audited, and the credential he now holds decides nothing until a second admin confirms it."""
    assert env.mail is not None
    await _admin(env, "ada")
    vera = env.user_ids["vera"]
    r = await env.http.put(f"/api/v1/users/{vera}/email", json={"email": "adam.private@evil.example",
                                                                "reason": "new mailbox"}, headers=env.auth("adam"))
    assert r.status_code == 200, r.text
    notices = env.mail.to("vera@bank.example")
    assert len(notices) == 1 and "a***@evil.example" in notices[0].body and "adam" in notices[0].body
    changed = (await _events(env, "user.email_changed"))[-1]
    assert changed.payload["old"] == "v***@bank.example" and changed.payload["new"] == "a***@evil.example"
    assert changed.payload["by"] == "adam" and changed.payload["old_address_notified"] is True
    pid, _ = await started_at_gate(env, "dana")
    enrolled, code = await env.enrollment_code("adam", vera, "adam.private@evil.example")  # the admin's own mailbox now
    assert enrolled.json()["reissue"] is True, enrolled.text
    stolen = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vera"})
    assert stolen.status_code == 201 and stolen.json()["awaiting_confirmation"] is True, stolen.text
    env.tokens["fake-vera"] = stolen.json()["token"]
    me = (await env.http.get("/api/v1/me", headers=env.auth("fake-vera"))).json()
    assert me.get("held_roles") == ["model_validator"] and "decide" not in me["actions"], me
    r = await decide(env, "fake-vera", pid, "validation")
    assert r.status_code == 403 and r.json()["code"] == "credential_unconfirmed", r.text
    model, version = pid.split("@")
    r = await env.http.post("/api/v1/findings", headers=env.auth("fake-vera"), json={
        "model_id": model, "version_id": version, "stage": "validation", "severity": "low", "title": "t"})
    assert r.status_code == 403 and r.json()["code"] in ("credential_unconfirmed", "not_a_reviewer"), r.text
    # The admin who changed the address (or created the enrollment) cannot confirm it; a second admin can.
    token_url = f"/api/v1/users/{vera}/tokens/{stolen.json()['id']}/confirm"
    r = await env.http.post(token_url, headers=env.auth("adam"))
    assert r.status_code == 403 and r.json()["code"] == "same_admin", r.text
    r = await env.http.post(token_url, headers=env.auth("ada"))
    assert r.status_code == 200 and r.json()["confirmed_by"] == "ada", r.text
    r = await env.http.post(token_url, headers=env.auth("ada"))
    assert r.status_code == 409 and r.json()["code"] == "not_awaiting_confirmation", r.text
    assert (await _events(env, "credential.confirmed"))[-1].payload["confirmed_by"] == "ada"
    me = (await env.http.get("/api/v1/me", headers=env.auth("fake-vera"))).json()
    assert me["held_roles"] == [] and "decide" in me["actions"]


async def test_attack_an_admin_registers_a_validator_at_a_mailbox_that_is_not_theirs(env: ApiEnv) -> None:
    """Adam creates "pup" with his own address (or a sub-address of it, or vera's), so that the code mailed to
    "pup" reaches him: refused, nothing created, no code sent; nor can he move vic's address to his mailbox."""
    assert env.mail is not None
    await _admin(env, "ada")
    for address, holder in (("adam@bank.example", "adam"), ("Adam+pup@BANK.example", "adam"),
                            ("vera@bank.example", "vera")):
        r = await env.http.post("/api/v1/users", json={"username": "pup", "roles": ["model_validator"],
                                                       "team": "validation", "email": address},
                                headers=env.auth("adam"))
        assert r.status_code == 409 and r.json()["code"] == "email_in_use", r.text
        assert r.json()["details"] == {"field": "email", "username": holder}, r.text
    async with env.sessionmaker() as session:
        assert (await session.scalars(select(User).where(User.username == "pup"))).first() is None
    assert await _events(env, "user.created") == []
    vic = await _new_validator(env)
    sent = len(env.mail.received)
    r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": "adam+vic@bank.example", "reason": "r"},
                           headers=env.auth("adam"))
    assert r.status_code == 409 and r.json()["code"] == "email_in_use", r.text
    async with env.sessionmaker() as session:
        assert (await session.get(User, vic)).email == "vic@bank.example"  # type: ignore[union-attr]
    assert len(env.mail.received) == sent  # vic was told of no change
    # Nor can he free his own mailbox by moving his address away first, then register "pup" there.
    r = await env.http.put(f"/api/v1/users/{env.user_ids['adam']}/email",
                           json={"email": "adam.elsewhere@bank.example", "reason": "r"}, headers=env.auth("adam"))
    assert r.status_code == 403 and r.json()["code"] == "own_address", r.text
    async with env.sessionmaker() as session:
        assert (await session.get(User, env.user_ids["adam"])).email == "adam@bank.example"  # type: ignore[union-attr]
    # A person's own sub-address is theirs.
    r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": "vic+work@bank.example", "reason": "r"},
                           headers=env.auth("adam"))
    assert r.status_code == 200, r.text


async def test_an_address_change_ends_live_codes_and_an_unnotifiable_change_is_refused(env: ApiEnv) -> None:
    assert env.mail is not None
    await _admin(env, "ada")
    vic = await _new_validator(env)
    _, code = await env.enrollment_code("adam", vic, "vic@bank.example")
    r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": "vic2@bank.example", "reason": "r"},
                           headers=env.auth("adam"))
    assert r.status_code == 200, r.text
    r = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"})
    assert r.status_code == 404 and r.json()["code"] == "enrollment_invalid", r.text
    # vic never held a credential, but the address changed: the next one waits for a second admin.
    r, code = await env.enrollment_code("ada", vic, "vic2@bank.example")
    assert r.json()["reissue"] is True, r.text
    redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"})
    assert redeemed.status_code == 201 and redeemed.json()["awaiting_confirmation"] is True, redeemed.text
    env.settings.smtp_port = 1  # the old address cannot be told: the address does not change
    r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": "vic3@evil.example", "reason": "r"},
                           headers=env.auth("adam"))
    assert r.status_code == 503 and r.json()["code"] == "mail_unavailable", r.text
    async with env.sessionmaker() as session:
        assert (await session.get(User, vic)).email == "vic2@bank.example"  # type: ignore[union-attr]
    for bad in ("not-an-address", "a@b.example\r\nBcc: adam@evil.example"):
        r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": bad, "reason": "r"},
                               headers=env.auth("ada"))
        assert r.status_code == 422 and r.json()["code"] == "invalid_email", r.text
        assert r.json()["details"] == {"field": "email"}, r.text


async def test_re_enrolling_someone_who_held_a_credential_needs_a_second_admin(env: ApiEnv) -> None:
    assert env.mail is not None
    await _admin(env, "ada")
    pid, _ = await started_at_gate(env, "dana")
    r, code = await env.enrollment_code("adam", env.user_ids["vera"], "vera@bank.example")
    assert r.json()["reissue"] is True, r.text
    redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vera"})
    assert redeemed.status_code == 201 and redeemed.json()["awaiting_confirmation"] is True
    env.tokens["vera2"] = redeemed.json()["token"]
    r = await decide(env, "vera2", pid, "validation")
    assert r.status_code == 403, r.text
    r = await env.http.post(f"/api/v1/users/{env.user_ids['vera']}/tokens/{redeemed.json()['id']}/confirm",
                            headers=env.auth("adam"))
    assert r.status_code == 403 and r.json()["code"] == "same_admin", r.text
    r = await env.http.post(f"/api/v1/users/{env.user_ids['vera']}/tokens/{redeemed.json()['id']}/confirm",
                            headers=env.auth("ada"))
    assert r.status_code == 200, r.text
    r = await decide(env, "vera2", pid, "validation")
    assert r.status_code == 200, r.text


async def test_with_sso_the_code_redeems_only_for_the_persons_sso_identity(sqlite_url: str, tmp_path: Path,
                                                                          temporal_client: Client,
                                                                          task_queue: str) -> None:
    key, jwks = make_jwks(tmp_path)
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False, **sso_settings(jwks)) as env:
        assert env.mail is not None
        await _admin(env, "ada")
        vic = await _new_validator(env)
        _, code = await env.enrollment_code("adam", vic, "vic@bank.example")
        r = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"})
        assert r.status_code == 403 and r.json()["code"] == "sso_identity_required", r.text
        adam_sso = sso_token(key, preferred_username="adam", roles=["admin"], team="platform")
        r = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"},
                                headers={"Authorization": f"Bearer {adam_sso}"})
        assert r.status_code == 403 and r.json()["code"] == "sso_identity_mismatch", r.text
        assert [e.payload["code"] for e in await _events(env, "enrollment.refused")] == [
            "sso_identity_required", "sso_identity_mismatch"]
        vic_sso = sso_token(key, preferred_username="vic", roles=[], team="validation")
        r = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vic"},
                                headers={"Authorization": f"Bearer {vic_sso}"})
        assert r.status_code == 201, r.text


async def test_a_re_issued_credential_signed_in_to_the_web_ui_decides_nothing_until_confirmed(env: ApiEnv) -> None:
    """The web UI builds its caller from the same token row: an unconfirmed re-issued credential gets no decision
    there either (the form is refused, nothing is recorded), and decides once a second admin confirms it."""
    assert env.mail is not None
    await _admin(env, "ada")
    pid, _ = await started_at_gate(env, "dana")
    _, code = await env.enrollment_code("adam", env.user_ids["vera"], "vera@bank.example")
    redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": "vera"})
    assert redeemed.status_code == 201 and redeemed.json()["awaiting_confirmation"] is True, redeemed.text
    env.tokens["vera-web"] = redeemed.json()["token"]
    browser = Browser(env)
    try:
        await browser.sign_in("vera-web")
        url = f"/ui/progressions/{pid}"
        r = await browser.post(f"{url}/decisions", {"stage": "validation", "decision": "approve",
                                                    "comment": "independent review done"}, csrf_from=url)
        assert r.status_code == 403, r.text[:300]
        assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0
        confirmed = await env.http.post(
            f"/api/v1/users/{env.user_ids['vera']}/tokens/{redeemed.json()['id']}/confirm", headers=env.auth("ada"))
        assert confirmed.status_code == 200, confirmed.text
        r = await browser.post(f"{url}/decisions", {"stage": "validation", "decision": "approve",
                                                    "comment": "independent review done"}, csrf_from=url)
        assert r.status_code == 303, r.text[:300]
    finally:
        await browser.aclose()


async def test_attack_a_token_the_admin_was_given_before_a_deciding_role_was_granted_never_decides(
        env: ApiEnv) -> None:
    """The admin creates a developer (he gets their token: developers' tokens may come from an admin), then has
    a validator role granted to that account by a second admin, who sees nothing wrong with the grant. The token in
    the admin's hands must not decide as the validator: an admin-issued token never acts in a maker-checker role;
    the person enrolls (the code goes to their mailbox) for a credential of their own."""
    await _admin(env, "ada")
    r = await env.http.post("/api/v1/users", json={"username": "pup", "roles": ["model_developer"],
                                                   "team": "validation", "email": "pup@bank.example"},
                            headers=env.auth("adam"))
    assert r.status_code == 201 and r.json()["token"] is not None, r.text
    env.tokens["pup"], pup = r.json()["token"]["token"], r.json()["user"]["id"]
    proposed = await env.http.post(f"/api/v1/users/{pup}/role-grants", json={"role": "model_validator", "reason": "r"},
                                   headers=env.auth("adam"))
    assert proposed.status_code == 201, proposed.text
    approved = await env.http.post(f"/api/v1/role-grants/{proposed.json()['id']}/approve", headers=env.auth("ada"))
    assert approved.status_code == 200, approved.text
    pid, _ = await started_at_gate(env, "dana")
    r = await decide(env, "pup", pid, "validation")
    assert r.status_code == 403 and r.json()["code"] == "admin_issued_credential", r.text
    me = (await env.http.get("/api/v1/me", headers=env.auth("pup"))).json()
    assert me["held_roles"] == ["model_validator"] and "start_progression" in me["actions"], me


async def test_attack_an_admin_confirms_her_own_re_issued_credential(env: ApiEnv) -> None:
    """adam re-enrolls ada (an admin who held a token): her new credential acts as admin only once a second admin
    confirms it, and ada is not that admin, neither with her old token nor with the new one."""
    await _admin(env, "ada")
    r, code = await env.enrollment_code("adam", env.user_ids["ada"], "ada@bank.example")
    assert r.json()["reissue"] is True, r.text
    redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": "ada"})
    assert redeemed.status_code == 201 and redeemed.json()["awaiting_confirmation"] is True, redeemed.text
    url = f"/api/v1/users/{env.user_ids['ada']}/tokens/{redeemed.json()['id']}/confirm"
    r = await env.http.post(url, headers=env.auth("ada"))
    assert r.status_code == 403 and r.json()["code"] == "own_credential", r.text
    r = await env.http.post(url, headers={"Authorization": f"Bearer {redeemed.json()['token']}"})
    assert r.status_code == 403 and r.json()["code"] == "credential_unconfirmed", r.text
    assert await env.count(AuditEvent, AuditEvent.event_type == "credential.confirmed") == 0


async def test_attack_admin_points_an_sso_persons_address_at_his_own_mailbox(env: ApiEnv) -> None:
    """A person provisioned from SSO has the SSO's address: an admin cannot point it at his own mailbox."""
    await _admin(env, "ada")
    vic = await _new_validator(env)
    async with env.sessionmaker() as session:
        await session.execute(update(User).where(User.id == vic).values(external=True))  # as SSO provisions
        await session.commit()
    r = await env.http.put(f"/api/v1/users/{vic}/email", json={"email": "adam.private@evil.example",
                                                               "reason": "new mailbox"}, headers=env.auth("adam"))
    assert r.status_code == 409 and r.json()["code"] == "sso_user", r.text
    async with env.sessionmaker() as session:
        assert (await session.get(User, vic)).email == "vic@bank.example"  # type: ignore[union-attr]
    assert await env.count(AuditEvent, AuditEvent.event_type == "user.email_changed") == 0
