"""What a fresh stack starts with: the migrated database, the feature catalog, the demo people and examples.

``make run`` (launch.run) seeds everything here; ``python -m launch.serve migrate`` only the catalog
(:func:`seed_feature_catalog`). The seed is the bootstrap path: run by the operator, it writes straight to the
database; through the API the same grants need two admins.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import yaml
from sqlalchemy import select

from client.repo import read_repository
from engine.database import upgrade
from engine.db import User, make_engine, make_sessionmaker
from engine.features import seed_features
from engine.identity import create_user, issue_token
from engine.settings import PROJECT_ROOT, Settings

# (username, display name, roles, team). Developers own the example models' teams; two risk
# officers because the credit policy's risk review needs two different people (and neither may be
# the validator: validation and risk review are decided by different people).
# The seed is the bootstrap path: run by the operator, it creates these people with their roles and
# tokens directly in the database (engine.identity.create_user), recorded as granted and issued by
# "bootstrap". Through the API, deciding roles need two admins and deciders enroll themselves.
DEMO_USERS: list[tuple[str, str, list[str], str | None]] = [
    ("dana", "Dana Developer", ["model_developer"], "retail-risk"),
    ("frank", "Frank Developer", ["model_developer"], "payments-fraud"),
    ("mia", "Mia Developer", ["model_developer"], "marketing-analytics"),
    ("victor", "Victor Validator", ["model_validator"], "model-validation"),
    ("rita", "Rita Risk", ["model_risk_officer"], "model-risk"),
    ("omar", "Omar Risk", ["model_risk_officer"], "model-risk"),
    ("alice", "Alice Auditor", ["auditor"], "internal-audit"),
    ("admin", "Platform Admin", ["admin"], "platform"),
    # A second admin: deciding and admin roles granted through the API need two admins (maker-checker).
    ("ada", "Ada Admin", ["admin"], "platform"),
    # The bank's monitoring jobs: a service identity that can only post monitoring results.
    ("monitor", "Monitoring jobs", ["monitor"], None),
]
EXAMPLES_DIR = PROJECT_ROOT / "examples"
# Examples whose validation gate the demo validator approves at seed time, so the risk officers'
# inbox has gates waiting too (the marketing one stays in the validator's inbox).
SEED_VALIDATED = ("retail-credit-scorecard", "card-fraud-detector")
# Earlier versions already live, so life after production has something to watch: (repository, version) walked
# through every gate by the demo deciders at seed time (the example's newer version stays under review).
SEED_IN_PRODUCTION = (("retail-credit-scorecard", "3.1.0"), ("marketing-propensity", "1.3.0"))
# Who decides each gate of the seeded production versions (two risk officers at the credit risk review).
_SEED_DECIDERS = {"validation": ["victor"], "risk_review": ["rita", "omar"]}


async def seed_feature_catalog(settings: Settings) -> int:
    """Features from the catalog file that the database lacks; existing entries are never overwritten."""
    engine = make_engine(settings.resolved_database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            inserted = await seed_features(session, settings.features_file)
            await session.commit()
            return inserted
    finally:
        await engine.dispose()


async def seed_database(settings: Settings) -> dict[str, str]:
    """Migrate, seed features and demo users. Returns username -> token (kept in the data directory)."""
    await upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    tokens_file = settings.data_dir / "demo-tokens.json"
    tokens: dict[str, str] = json.loads(tokens_file.read_text()) if tokens_file.exists() else {}
    try:
        async with sessions() as session:
            await seed_features(session, settings.features_file)
            await session.commit()
        for username, display_name, roles, team in DEMO_USERS:
            async with sessions() as session:
                user = await session.scalar(select(User).where(User.username == username))
                if user is None:
                    _, token = await create_user(session, username=username, roles=roles, team=team,
                                                 display_name=display_name, email=f"{username}@bank.example")
                    tokens[username] = token
                elif username not in tokens:
                    _, tokens[username] = await issue_token(session, user, name="demo")
                await session.commit()
    finally:
        await engine.dispose()
    tokens_file.write_text(json.dumps(tokens, indent=2) + "\n")
    os.chmod(tokens_file, 0o600)
    return tokens


async def submit_examples(base_url: str, tokens: dict[str, str]) -> list[str]:
    """Submit each example repository as the developer of its team; an existing one (409) is fine."""
    developers = {team: name for name, _, roles, team in DEMO_USERS if "model_developer" in roles}
    lines = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for repo in sorted(p for p in EXAMPLES_DIR.iterdir() if (p / "progression.yaml").is_file()):
            upload = read_repository(repo)
            team = (yaml.safe_load(upload.spec_yaml) or {}).get("model", {}).get("team")
            developer = developers.get(team)
            if developer is None:
                lines.append(f"  {repo.name}: no demo developer for team {team!r}, skipped")
                continue
            response = await http.post(
                "/api/v1/progressions",
                files=upload.multipart_files(),
                headers={"Authorization": f"Bearer {tokens[developer]}",
                         "Idempotency-Key": f"seed-{repo.name}"},
            )
            body = response.json()
            if response.status_code in (200, 201):
                pid = body.get("progression_id")
                if repo.name in SEED_VALIDATED:
                    body = await _seed_validation(http, pid, tokens["victor"]) or body
                else:
                    body = await _settled(http, pid, tokens[developer]) or body
                lines.append(f"  {repo.name}: started {pid} ({body.get('status')}, waiting on "
                             f"{', '.join(body.get('waiting_on') or []) or 'nobody'})")
            elif response.status_code == 409:
                lines.append(f"  {repo.name}: already running ({body.get('message')})")
            else:
                lines.append(f"  {repo.name}: {response.status_code} {body.get('message')}")
    return lines


async def _settled(http: httpx.AsyncClient, pid: str, token: str) -> dict[str, Any] | None:
    """The state once the stage's checks have run (bounded wait), for the banner."""
    state = None
    for _ in range(100):
        state = (await http.get(f"/api/v1/progressions/{pid}", headers={"Authorization": f"Bearer {token}"})).json()
        if state.get("status") != "running":
            break
        await asyncio.sleep(0.1)
    return state


async def _seed_validation(http: httpx.AsyncClient, pid: str, token: str) -> dict[str, Any] | None:
    """Approve the validation gate as the demo validator once it is open (bounded wait)."""
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(100):
        state = (await http.get(f"/api/v1/progressions/{pid}", headers=auth)).json()
        validation = next((s for s in state.get("stages", []) if s["name"] == "validation"), None)
        if validation and validation["status"] == "awaiting_approval":
            response = await http.post(
                f"/api/v1/progressions/{pid}/decisions", headers={**auth, "Idempotency-Key": f"seed-validate-{pid}"},
                json={"stage": "validation", "decision": "approve",
                      "comment": "Demo seed: independent validation report reviewed; metrics reproduced."})
            if response.status_code != 200:
                return None
            for _ in range(100):  # the next gate opens after its checks ran
                state = (await http.get(f"/api/v1/progressions/{pid}", headers=auth)).json()
                if state.get("status") != "running":
                    return state
                await asyncio.sleep(0.1)
            return state
        if validation is None or validation["status"] not in ("pending", "running"):
            return state  # already decided on an earlier run, or blocked: leave it as it is
        await asyncio.sleep(0.1)
    return None


async def seed_production(base_url: str, tokens: dict[str, str]) -> list[str]:
    """Start the earlier versions of ``SEED_IN_PRODUCTION`` and decide their gates until they are in production
    (bounded waits; a second ``make run`` finds them there)."""
    developers = {team: name for name, _, roles, team in DEMO_USERS if "model_developer" in roles}
    lines = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for repo_name, version in SEED_IN_PRODUCTION:
            upload = read_repository(EXAMPLES_DIR / repo_name)
            spec = yaml.safe_load(upload.spec_yaml)
            current = str(spec["version"]["id"])
            upload.spec_yaml = upload.spec_yaml.replace(current.encode(), version.encode())
            developer = developers[spec["model"]["team"]]
            pid = f"{spec['model']['id']}@{version}"
            response = await http.post("/api/v1/progressions", files=upload.multipart_files(),
                                       headers={"Authorization": f"Bearer {tokens[developer]}",
                                                "Idempotency-Key": f"seed-production-{pid}"})
            if response.status_code not in (200, 201, 409):
                lines.append(f"  {pid}: {response.status_code} {response.json().get('message')}")
                continue
            state = await _walk_to_production(http, pid, tokens)
            lines.append(f"  {pid}: {state.get('status') if state else 'not settled'}")
    return lines


async def _walk_to_production(http: httpx.AsyncClient, pid: str, tokens: dict[str, str]) -> dict[str, Any] | None:
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    state: dict[str, Any] | None = None
    for _ in range(300):
        state = (await http.get(f"/api/v1/progressions/{pid}", headers=auth)).json()
        status, stage = state.get("status"), state.get("current_stage")
        if status in ("in_production", "rejected", "withdrawn", "failed", "blocked", "retired"):
            return state
        if status == "awaiting_approval" and stage in _SEED_DECIDERS:
            decided = {d["actor_username"] for s in state["stages"] if s["name"] == stage for d in s["decisions"]}
            for decider in _SEED_DECIDERS[stage]:
                if decider in decided:
                    continue
                await http.post(f"/api/v1/progressions/{pid}/decisions",
                                headers={"Authorization": f"Bearer {tokens[decider]}",
                                         "Idempotency-Key": f"seed-{pid}-{stage}-{decider}"},
                                json={"stage": stage, "decision": "approve",
                                      "comment": "Demo seed: an earlier version, live before this demo began."})
        await asyncio.sleep(0.1)
    return state
