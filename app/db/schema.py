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
