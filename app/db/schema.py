"""SQLAlchemy Core metadata of the tables in `sql/`, for alembic only (never queried through).

Functions and triggers are not described here: they live in `sql/` and the migrations execute
frozen copies of them. A test checks these tables against the migrated catalog.
"""

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="sms")

states = Table(
    "states",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("entry_count", BigInteger, nullable=False),
    Column("content_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_after", Interval),
    PrimaryKeyConstraint("tenant_id", "fsa_id"),
)

entries = Table(
    "entries",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("collection", Text(collation="C"), nullable=False),
    Column("is_member", Boolean, nullable=False),
    Column("member", Text(collation="C"), nullable=False),
    Column("value", JSONB, nullable=False),
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "collection", "is_member", "member"),
)

deltas = Table(
    "deltas",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("delta_id", Uuid, nullable=False),
    Column("actor", Text),
    Column("lineage_id", Text),
    Column("trace_id", Text),
    Column("parent_id", Text),
    Column("meta", JSONB, nullable=False),
    Column("ops", JSONB, nullable=False),
    Column("paths", ARRAY(Text), nullable=False),
    Column("collections", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "version"),
    UniqueConstraint("tenant_id", "fsa_id", "delta_id"),
)

feed = Table(
    "feed",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("to_version", BigInteger, nullable=False),
    Column("from_version", BigInteger, nullable=False),
    Column("position", BigInteger),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "to_version"),
    UniqueConstraint("tenant_id", "position"),
)

feed_clocks = Table(
    "feed_clocks",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id"),
)

member_counts = Table(
    "member_counts",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("collection", Text(collation="C"), nullable=False),
    Column("family", Text(collation="C"), nullable=False),
    Column("members", BigInteger, nullable=False),
    Column("statuses", JSONB, nullable=False),
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "collection", "family"),
)

slice_aliases = Table(
    "slice_aliases",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("alias", Text(collation="C"), nullable=False),
    Column("collection", Text(collation="C"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "alias"),
)

summary_cache = Table(
    "summary_cache",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("cache_key", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("result", JSONB, nullable=False),
    Column("summary", Text, nullable=False),
    Column("slice_bytes", Integer, nullable=False),
    Column("summary_chars", Integer, nullable=False),
    Column("hits", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    Column("coarse", Text, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "cache_key"),
)

entry_history = Table(
    "entry_history",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("collection", Text(collation="C"), nullable=False),
    Column("is_member", Boolean, nullable=False),
    Column("member", Text(collation="C"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("value", JSONB),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "collection", "is_member", "member", "version"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("baseline", Boolean, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "version"),
)

snapshot_entries = Table(
    "snapshot_entries",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("collection", Text(collation="C"), nullable=False),
    Column("is_member", Boolean, nullable=False),
    Column("member", Text(collation="C"), nullable=False),
    Column("value", JSONB, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "version", "collection", "is_member", "member"),
)

task_comments = Table(
    "task_comments",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("comment_id", BigInteger, nullable=False),
    Column("author", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("is_blocker", Boolean, nullable=False),
    Column("lineage_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "task_id", "comment_id"),
)

policies = Table(
    "policies",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("rule_no", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("keys", ARRAY(Text), nullable=False),
    Column("anchor", Text(collation="C"), nullable=False),
    Column("rule", JSONB, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "anchor", "rule_no"),
)

policy_changes = Table(
    "policy_changes",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("change_id", Uuid, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("actor", Text),
    Column("rules", JSONB, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "change_id"),
)

erasures = Table(
    "erasures",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("erasure_id", Uuid, nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text),
    Column("key_id", Text),
    Column("db_user", Text, nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("last_version", BigInteger, nullable=False),
    Column("through_version", BigInteger),
    Column("removed", JSONB, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "erasure_id"),
)

refusals = Table(
    "refusals",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("fsa_id", Text, nullable=False),
    Column("refusal_id", Uuid, nullable=False),
    Column("refused_at", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("delta_id", Uuid),
    Column("actor", Text),
    Column("lineage_id", Text),
    Column("trace_id", Text),
    Column("aml_level", Integer),
    Column("meta", JSONB, nullable=False),
    Column("ops", JSONB, nullable=False),
    Column("violations", JSONB, nullable=False),
    PrimaryKeyConstraint("tenant_id", "fsa_id", "refusal_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, nullable=False),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("tenants", ARRAY(Text), nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("actor", Text),
    Column("aml_level", Integer),
    Column("rate_limit", Double),
    Column("label", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("key_id"),
    UniqueConstraint("secret_hash"),
)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key_id", Text, nullable=False),
    Column("tokens", Double, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("key_id"),
    prefixes=["UNLOGGED"],
)
