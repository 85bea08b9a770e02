"""Ready-made policy sets (DESIGN §10). A rule is data — a path glob and its constraints, checked by
sms.check_rule and evaluated by the merge (sms.apply_ops) — so a preset is a list of rules."""

from __future__ import annotations

from typing import Any

TASK_STATUSES = ["TODO", "IN_PROGRESS", "REVIEW", "DONE", "BLOCKED"]

PRESETS: dict[str, list[dict[str, Any]]] = {
    # The original service's policy engine, enforced where it could be walked around: inventory and
    # budget never negative, a task-status enum, and its AML limits — "AML ≤ 3 cannot approve
    # transactions > $1000" and "AML ≤ 1 cannot modify state automatically". An actor with no AML
    # level counts as level 0.
    "original": [
        {"path": "resources.inventory.*", "min": 0, "name": "inventory is never negative"},
        {"path": "inventory.*", "min": 0, "name": "inventory is never negative"},
        {"path": "resources.cash_balance_usd", "min": 0, "name": "the budget is never negative"},
        {"path": "budget_remaining", "min": 0, "name": "the budget is never negative"},
        {"path": "tasks.*.status", "enum": TASK_STATUSES, "name": "task statuses"},
        {
            "path": "resources.cash_balance_usd",
            "aml_below": 4,
            "max_change": 1000,
            "name": "AML ≤ 3 cannot approve transactions > $1000",
        },
        {
            "path": "budget_remaining",
            "aml_below": 4,
            "max_change": 1000,
            "name": "AML ≤ 3 cannot approve transactions > $1000",
        },
        {"path": "**", "aml_below": 2, "max_change": 0, "name": "AML ≤ 1 cannot modify state automatically"},
    ],
}
