"""Who may do what (DESIGN §10): the service's role sms_api and row-level security on every
tenant table (sms.act_for sets the tenants a transaction acts for); API keys (sms.api_keys and the
functions that make, check, list and revoke them) and their rate buckets; policies evaluated by
the merge (sms.policies, sms.set_policy, sms.policy_targets …), with refused deltas recorded in
sms.refusals and rule changes in sms.policy_changes. sms.apply_ops becomes a wrapper that undoes
a delta breaking a rule and records the refusal; its engine moves to sms.append_delta.
sms.heartbeat gains p_meta and p_actor.

Executes 0009_security.sql, a frozen copy of what it installs; the downgrade restores
sms.apply_ops and sms.heartbeat from the frozen copy of 0004. The role sms_api is left in place:
roles belong to the cluster, and other databases may use it.

Revision ID: 0009
Revises: 0008
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0009_security.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")

TENANT_TABLES = (
    "states",
    "entries",
    "deltas",
    "entry_history",
    "snapshots",
    "snapshot_entries",
    "task_comments",
    "member_counts",
    "slice_aliases",
    "summary_cache",
)


def upgrade() -> None:
    op.execute("DROP FUNCTION sms.heartbeat(text, text, text, text, timestamptz)")
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY tenant_isolation ON sms.{table}")
        op.execute(f"ALTER TABLE sms.{table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"REVOKE ALL ON sms.{table} FROM sms_api")
    op.execute("DROP FUNCTION sms.heartbeat(text, text, text, text, timestamptz, jsonb, text)")
    op.execute("DROP FUNCTION sms.apply_ops(text, text, jsonb, jsonb, text, text, uuid, bigint, jsonb, text, text)")
    execute_script(frozen_sections(FROZEN_0004, "sql/069_apply_ops.sql", "sql/109_heartbeat.sql"))
    for function in (
        "take_tokens(text, double precision, double precision, integer)",
        "keys_exist()",
        "revoke_key(text)",
        "list_keys()",
        "authenticate(bytea)",
        "create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision, text)",
        "caller_tenants()",
        "current_version(text, text)",
        "policies_of(text, text)",
        "set_policy(text, text, jsonb, text)",
        "append_delta(text, text, jsonb, jsonb, text, text, uuid, bigint, jsonb, text, text, jsonb)",
        "policy_values(text, text, jsonb)",
        "policy_targets(text, text, jsonb, integer)",
        "policy_violations(jsonb, jsonb, jsonb, integer)",
        "rule_violations(jsonb, text, jsonb, jsonb, integer)",
        "glob_paths(jsonb, text[])",
        "policy_relation(text[], text[])",
        "policy_anchor(text[])",
        "check_rule(jsonb)",
        "glob_like(text)",
        "aml_level(jsonb)",
    ):
        op.execute(f"DROP FUNCTION sms.{function}")
    for table in ("rate_buckets", "api_keys", "refusals", "policy_changes", "policies"):
        op.execute(f"DROP TABLE sms.{table}")
    op.execute("DROP FUNCTION sms.act_for(text[])")
    op.execute("DROP FUNCTION sms.request_tenants()")
    op.execute("REVOKE USAGE ON SCHEMA sms FROM sms_api")
