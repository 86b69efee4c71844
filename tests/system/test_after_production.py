"""The demo of life after production on the real stack (``python -m launch.run``, what ``make run`` runs).

The seed leaves an earlier credit version and an earlier marketing version in production. Drifting PSI posted by
the monitoring identity opens the credit model's revalidation gate and the validator's inbox shows it; the
marketing owner retires their model through its gate, the undeployment and the retirement are in the audit trail,
and the workflow (with every timer) has ended.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.monitoring import credit_metrics
from testing.polling import eventually_sync
from tests.system.test_stack import CLI, Orchestrators, Stack, processes  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

CREDIT_LIVE = "retail-credit-scorecard@3.1.0"
MARKETING_LIVE = "savings-offer-propensity@1.3.0"
WAIT = 120.0  # bounded waits on a loaded machine; nothing is asserted about how long anything took


def _cli(stack: Stack, token: str, *args: str) -> str:
    env = {**stack.env(), "PROGRESSION_URL": f"http://127.0.0.1:{stack.api_port}", "PROGRESSION_TOKEN": token,
           "COLUMNS": "200"}
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _get(http: httpx.Client, token: str, path: str) -> Any:
    resp = http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_drifting_psi_opens_revalidation_and_retiring_marketing_stops_its_timers(
        processes: Orchestrators, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    stack = processes.start(Stack(tmp_path / "data"), "stack")
    processes.wait_running(stack)
    tokens = json.loads((stack.data_dir / "demo-tokens.json").read_text())
    assert "monitor" in tokens
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.api_port}/api/v1", timeout=60) as http:
        live = _get(http, tokens["alice"], f"/progressions/{CREDIT_LIVE}")
        assert live["status"] == "in_production", stack.text()[-2000:]

        # the monitoring job posts a period with a drifting characteristic
        today = datetime.now(UTC).date().isoformat()
        resp = http.post("/models/retail-credit-scorecard/monitoring",
                         json={"period": today, "metrics": credit_metrics(psi=0.34)},
                         headers={"Authorization": f"Bearer {tokens['monitor']}"})
        assert resp.status_code == 201, resp.text
        assert [b["rule_id"] for b in resp.json()["breaches"]] == ["psi-drift"]

        def gate_in_inbox() -> bool:
            items = _get(http, tokens["victor"], "/inbox")["items"]
            return any(i["progression_id"] == CREDIT_LIVE and i["stage"] == "revalidation" for i in items)

        eventually_sync(gate_in_inbox, "the revalidation gate in the validator's inbox", timeout=WAIT)
        state = _get(http, tokens["alice"], f"/progressions/{CREDIT_LIVE}")
        assert state["monitoring"]["triggered_by"]["rule_id"] == "psi-drift"
        # the monitoring identity can do nothing else
        assert http.get("/inbox", headers={"Authorization": f"Bearer {tokens['monitor']}"}).status_code == 403

        # the same from the terminal: the monitoring job posts the next period, an auditor reads the history
        results = tmp_path / "results.json"
        yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        results.write_text(json.dumps({"period": yesterday, "metrics": credit_metrics(psi=0.4)}))
        posted = _cli(stack, tokens["monitor"], "monitoring", "post", "retail-credit-scorecard", str(results))
        assert "psi-drift: the revalidation is already open" in posted, posted
        shown = _cli(stack, tokens["alice"], "monitoring", "show", "retail-credit-scorecard")
        assert "psi-drift at 0.25" in shown and yesterday in shown and today in shown, shown

        # the marketing owner retires the live marketing model; the policy's approver (a validator) decides
        asked = _cli(stack, tokens["mia"], "retire", "savings-offer-propensity", "-m", "campaign ended")
        assert "retirement awaits model_validator" in asked, asked
        decided = http.post(f"/progressions/{MARKETING_LIVE}/decisions",
                            json={"stage": "retirement", "decision": "approve", "comment": "no longer used"},
                            headers={"Authorization": f"Bearer {tokens['victor']}"})
        assert decided.status_code == 200, decided.text

        def retired() -> dict[str, Any] | None:
            s = _get(http, tokens["alice"], f"/progressions/{MARKETING_LIVE}")
            return s if s["status"] == "retired" else None

        final = eventually_sync(retired, "the marketing model retired", timeout=WAIT)
        assert final["revalidation_due_at"] is None
        events = _get(http, tokens["alice"], f"/audit/events?progression={MARKETING_LIVE}&limit=500")["items"]
        kinds = [e["event_type"] for e in events]
        assert "retirement.requested" in kinds and "model.retired" in kinds
        retired_event = next(e for e in events if e["event_type"] == "model.retired")
        assert retired_event["payload"]["timers_stopped"] == ["revalidation", "monitoring"]
        model = _get(http, tokens["alice"], "/models/savings-offer-propensity")
        assert any(v["progression_id"] == MARKETING_LIVE and v["status"] == "retired" for v in model["versions"])
        assert _get(http, tokens["alice"], "/audit/verify")["ok"] is True
