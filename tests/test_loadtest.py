"""The load test's short form (bench/load.py): 20 agents for 10 seconds on one state of the service
served by uvicorn, checked for correctness only — exact counters, every version once and in order
on every SSE feed, no unexpected answer. Never for speed: CI machines are shared."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from helpers import ROOT

AGENTS = 20
SECONDS = 10.0


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench.load, imported from the checkout: bench/ is no installed package."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.load")


async def test_agents_keep_every_guarantee_under_load(load: ModuleType, live_url: str) -> None:
    result = await load.run_load(live_url, agents=AGENTS, seconds=SECONDS, progress=False)

    assert result.failures == [], "\n".join(result.failures)
    assert result.errors == 0 and result.checks_passed
    # the checks had something to check: every kind of operation happened, and the feeds were read
    assert all(result.stats[name].count > 0 for name in load.OPERATIONS), result.table()
    assert result.subscribers == AGENTS // 10
    assert result.final_version > result.seed_version
