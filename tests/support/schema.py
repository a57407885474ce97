"""A database's schema as the catalogue says it, to compare two databases: every table's,
view's and type's columns in order, constraints, indexes, functions with their bodies,
triggers, domains and sequences of the public schema (Alembic's own table aside)."""

from __future__ import annotations

import asyncpg

# Each query answers (kind, name, definition) rows; a name is unique within its kind.
QUERIES = {
    "column": """
        SELECT c.relkind::text, c.relname || '.' || lpad(
                   (row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::text, 3, '0'),
               concat_ws(' ', a.attname, format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                         'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
                         CASE a.attidentity WHEN 'a' THEN 'IDENTITY ALWAYS'
                                            WHEN 'd' THEN 'IDENTITY BY DEFAULT' END,
                         CASE WHEN a.attgenerated = 's' THEN 'GENERATED' END)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'c')
          AND c.relname <> 'alembic_version'
    """,
    "relation": """
        SELECT 'relation', c.relname,
               concat_ws(' ', c.relkind::text, array_to_string(c.reloptions, ','),
                         CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'c', 'S')
          AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
    """,
    "constraint": """
        SELECT 'constraint', coalesce(c.conrelid::regclass::text, c.contypid::regtype::text)
                             || '.' || c.conname,
               pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.conname <> 'alembic_version_pkc'
    """,
    "index": """
        SELECT 'index', i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename <> 'alembic_version'
    """,
    "function": """
        SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
    """,
    "trigger": """
        SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname,
               pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal
    """,
    "type": """
        SELECT 'type', t.typname,
               concat_ws(' ', t.typtype::text, format_type(t.typbasetype, t.typtypmod),
                         CASE WHEN t.typnotnull THEN 'NOT NULL' END)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('d', 'e', 'c')
          AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
    """,
}


async def schema(url: str) -> dict[str, str]:
    """``{"kind name": definition}`` for the database at ``url``."""
    conn = await asyncpg.connect(url)
    try:
        found: dict[str, str] = {}
        for kind, query in QUERIES.items():
            for row in await conn.fetch(query):
                found[f"{kind} {row[0]} {row[1]}"] = row[2]
        return found
    finally:
        await conn.close()


def differences(one: dict[str, str], other: dict[str, str]) -> list[str]:
    """What one has that the other lacks or defines otherwise, a line each."""
    lines = []
    for key in sorted(one.keys() | other.keys()):
        if one.get(key) != other.get(key):
            lines.append(f"{key}:\n  - {one.get(key)!r}\n  + {other.get(key)!r}")
    return lines
