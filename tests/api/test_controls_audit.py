"""Attack tests the controls audit found missing: each fails with its control disabled.

- A decision posted on an expired web session is kept for 24 hours at most: past that, signing in again neither
  shows nor fills it (an old, forgotten decision must not come back to be confirmed by reflex).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from engine.db import BrowserSession, DecisionRow, utcnow
from testing.api import ApiEnv
from tests.api import test_web_ui
from tests.api.test_redteam_catalog_sessions import posted_on_expired_session
from tests.api.test_web_ui import Browser, csrf_of

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)


async def test_a_kept_decision_lapses_after_24_hours_and_is_not_offered_again(env: ApiEnv,
                                                                              people: dict[str, Browser]) -> None:
    post = await posted_on_expired_session(env, people, stage="validation", comment="forgotten words")
    pid, url, vera, posted, before = post.pid, post.url, post.vera, post.posted, post.before
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(BrowserSession).where(BrowserSession.user_id.is_(None)))).all()
        [kept] = [r for r in rows if r.pending]
        # Kept 24 hours at most (a stored deadline, not a clock in the test).
        assert kept.expires_at <= before + timedelta(hours=24, minutes=1), kept.expires_at - before
        # The 24 hours pass.
        kept.expires_at = utcnow() - timedelta(seconds=1)
        await session.commit()
    login = await vera.get(posted.headers["location"])
    assert login.status_code == 200 and 'id="pending-decision"' not in login.text
    again = await vera.http.post("/ui/login", data={"token": env.tokens["vera"], "csrf_token": csrf_of(login.text),
                                                    "next": "/ui/models"})
    assert again.status_code == 303 and again.headers["location"] == "/ui/models", again.headers
    shown = await vera.get(url)
    assert 'id="pending-decision"' not in shown.text and "forgotten words" not in shown.text
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0
