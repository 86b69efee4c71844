"""The example notebook (examples/notebooks/credit_before_training.ipynb) executed headless with nbclient against
the real API (uvicorn in this event loop, the kernel a separate process): it fetches the credit policy once, then
shows the feature table (age forbidden, zip_code needs a proxy analysis), the verdict on weaker metrics in memory,
writes the evidence files and checks the repository, each result as an HTML table."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from temporalio.client import Client

from engine.settings import PROJECT_ROOT
from progression import LocalPolicy
from testing.api import ApiEnv, api_env, serve_http
from testing.workflow import CREDIT

NOTEBOOK = PROJECT_ROOT / "examples" / "notebooks" / "credit_before_training.ipynb"


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False) as e:
        yield e


def _outputs(cell: Any, kind: str) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") in ("execute_result", "display_data"):
            out.append(o["data"].get(kind, ""))
        elif o.get("output_type") == "stream" and kind == "text/plain":
            out.append(o.get("text", ""))
    return "\n".join(out)


async def test_the_notebook_runs_headless_and_shows_the_tables(env: ApiEnv, tmp_path: Path) -> None:
    repo = tmp_path / "scorecard"
    shutil.copytree(CREDIT, repo)
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    spec["features"] = [*spec["features"], "zip_code"]  # she keeps zip_code, so its conditions apply
    (repo / "progression.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    async with serve_http(env.app) as url:
        saved = {k: os.environ.get(k) for k in ("PROGRESSION_URL", "PROGRESSION_TOKEN", "MODEL_REPO")}
        os.environ.update(PROGRESSION_URL=url, PROGRESSION_TOKEN=env.tokens["dana"], MODEL_REPO=str(repo))
        try:
            client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}})
            await client.async_execute()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    features_html = _outputs(code[1], "text/html")
    assert "<table" in features_html and "forbidden" in features_html and "proxy_analysis" in features_html
    assert "age" in features_html and "zip_code" in features_html
    verdict_html = _outputs(code[2], "text/html")
    assert "<table" in verdict_html and "discrimination" in verdict_html and "FAIL" in verdict_html
    assert "evidence.metrics.auc = 0.64" in verdict_html and "would be blocked" in verdict_html
    final_text = _outputs(code[3], "text/plain")
    assert "every check passes" in final_text, final_text
    # what the notebook wrote is what start submits; the offline copy it saved is the server's policy
    assert (repo / "docs/proxy_analysis.md").is_file()
    assert yaml.safe_load((repo / "progression.yaml").read_text())["evidence"]["proxy_analysis"] == \
        "docs/proxy_analysis.md"
    offline = LocalPolicy.load(work / "credit-policy.json")
    served = env.app.state.progression.registry.get("credit-underwriting")
    assert offline.policy_hash == served.hash
