"""Replay every committed workflow history against the current ProgressionWorkflow.

A code change that alters the commands an existing history produced (a non-deterministic
change) fails here, before it can break running progressions. Regenerate the histories with
``python -m tests.make_histories`` only for a deliberate, versioned change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.progression import ProgressionWorkflow

HISTORIES = Path(__file__).parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))
TEXTS = {p: p.read_text() for p in FILES}  # read at collection time, not inside the event loop


def test_histories_are_committed() -> None:
    assert FILES, f"no workflow histories in {HISTORIES}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_replay(path: Path) -> None:
    # File name == workflow id (the progression id, "<model>@<version>").
    history = WorkflowHistory.from_json(path.stem, TEXTS[path])
    assert history.events, path
    replayer = Replayer(workflows=[ProgressionWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
