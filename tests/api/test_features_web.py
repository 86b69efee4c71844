"""The features pages of the web UI (httpx against the real app): search, what each policy says, the models that
use a feature, proposing a change and approving it through the forms with the API's refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from engine.db import Feature
from testing.api import ApiEnv, api_env
from testing.people import create_people
from tests.api.test_web_ui import Browser


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False) as e:
        async with e.sessionmaker() as session:
            tokens, ids = await create_people(session, {"olga": (["model_developer"], "data-office")})
            await session.commit()
        e.tokens.update(tokens)
        e.user_ids.update(ids)
        yield e


async def _browser(env: ApiEnv, who: str) -> Browser:
    b = Browser(env)
    await b.sign_in(who)
    return b


async def test_search_and_a_feature_page(env: ApiEnv) -> None:
    dana = await _browser(env, "dana")
    try:
        page = await dana.get("/ui/features?q=zip")
        assert page.status_code == 200 and 'data-feature="zip_code"' in page.text
        assert 'data-feature="age"' not in page.text and 'href="/ui/features"' in page.text  # nav entry
        assert 'data-intent="credit-underwriting" data-verdict="requires"' in page.text
        credit = await dana.get("/ui/features?intent=credit-underwriting&q=demographic")
        assert credit.text.count('data-verdict="forbidden"') == 4  # age, gender, marital status, ethnicity
        one = await dana.get("/ui/features/zip_code")
        assert one.status_code == 200 and "proxy_analysis" in one.text and "pii_justification" in one.text
        missing = await dana.get("/ui/features/shoe_size")
        assert missing.status_code == 404
        hostile = await dana.get("/ui/features?q=" + "x" * 500)
        assert hostile.status_code == 422
    finally:
        await dana.aclose()


async def test_propose_and_approve_through_the_forms(env: ApiEnv) -> None:
    dana, adam, olga = [await _browser(env, w) for w in ("dana", "adam", "olga")]
    try:
        r = await adam.post("/ui/features/proposals", {"feature": "zip_code", "existing": "1",
                                                       "description": "Residential five-digit ZIP code",
                                                       "tags": "pii proxy geographic", "owner": "olga",
                                                       "comment": "olga owns address data"},
                            csrf_from="/ui/features/zip_code")
        assert r.status_code == 303, r.text[:500]
        pid = (await env.http.get("/api/v1/features/proposals?feature=zip_code",
                                  headers=env.auth("ann"))).json()["items"][0]["id"]
        own = await adam.get("/ui/features/zip_code")
        assert f'id="approve-{pid}"' not in own.text  # the proposer is not offered the approval form
        refused = await adam.post(f"/ui/features/proposals/{pid}/approval", {"comment": "mine"},
                                  csrf_from="/ui/features/zip_code")
        assert refused.status_code == 403 and "you proposed this change" in refused.text
        # the owner-to-be is not the owner yet: nobody but an admin decides this one, and adam proposed it
        olga_page = await olga.get("/ui/features/zip_code")
        assert f'id="approve-{pid}"' not in olga_page.text
        rejected = await olga.post(f"/ui/features/proposals/{pid}/rejection", {"comment": "no"},
                                   csrf_from="/ui/features/zip_code")
        assert rejected.status_code == 403
        async with env.sessionmaker() as session:
            assert (await session.get(Feature, "zip_code")).owner is None  # type: ignore[union-attr]

        new = await dana.post("/ui/features/proposals", {"feature": "branch_distance_km",
                                                         "description": "Distance to the nearest branch",
                                                         "tags": "geographic", "owner": "", "comment": "for churn"},
                              csrf_from="/ui/features")
        assert new.status_code == 303 and new.headers["location"] == "/ui/features?done=proposed"
        nid = (await env.http.get("/api/v1/features/proposals?feature=branch_distance_km",
                                  headers=env.auth("ann"))).json()["items"][0]["id"]
        offered = await adam.get("/ui/features/zip_code")
        assert offered.status_code == 200
        ok = await adam.post(f"/ui/features/proposals/{nid}/approval", {"comment": "fine"},
                             csrf_from="/ui/features")
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/features/branch_distance_km?done=applied"
        shown = await dana.get("/ui/features/branch_distance_km?done=applied")
        assert "a new catalog version is recorded" in shown.text and "geographic" in shown.text
        blank = await dana.post("/ui/features/proposals", {"feature": "x_y", "description": "d", "tags": "",
                                                           "comment": ""}, csrf_from="/ui/features")
        assert blank.status_code == 422 and "comment" in blank.text
    finally:
        for b in (dana, adam, olga):
            await b.aclose()
