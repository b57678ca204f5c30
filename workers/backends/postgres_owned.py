"""What a temporary PostgreSQL role owns, and what revoke may do with it.

`REASSIGN OWNED` hands the role's objects to `reassign_to`. Some objects then run code or
read tables *with their owner's rights*, whoever triggers them; reassigning those would turn
a short-lived login into lasting access to everything `reassign_to` may do. `owner_rights_objects`
lists them so that revoke can refuse (see `PostgresBackend` for why refusing, not rewriting):

* SECURITY DEFINER functions and procedures (run as their owner, EXECUTE is PUBLIC's by default);
* views without ``security_invoker`` (their tables are read with the view owner's rights) and
  materialized views (``REFRESH`` runs the query as the owner);
* rules other than a view's ``_RETURN`` (their actions run as the owner of the table);
* event triggers;
* functions the role owns that another object calls without anyone naming them: triggers
  (a referential cascade fires them as the owner of the table), index and statistics
  expressions (``ANALYZE``/autovacuum run them as the owner of the table), column defaults,
  constraints, policies, operators, casts, views and rules.

Functions nobody references stay allowed: they run with their caller's rights.
"""

from __future__ import annotations

import re

import psycopg

_OWNER_RIGHTS_SQL = """
WITH r AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s),
found AS (
    SELECT 'pg_proc'::regclass AS classid, p.oid AS objid,
           'SECURITY DEFINER: runs with its owner''s rights' AS why
      FROM pg_proc p JOIN r ON p.proowner = r.oid
     WHERE p.prosecdef
    UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, 'called by ' || pg_describe_object(d.classid, d.objid, d.objsubid)
      FROM pg_proc p JOIN r ON p.proowner = r.oid
      JOIN pg_depend d ON d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid
     WHERE d.classid <> 'pg_proc'::regclass AND NOT p.prosecdef
    UNION ALL
    SELECT 'pg_class'::regclass, c.oid,
           CASE c.relkind WHEN 'm' THEN 'REFRESH runs its query with its owner''s rights'
                          ELSE 'reads its tables with its owner''s rights' END
      FROM pg_class c JOIN r ON c.relowner = r.oid
     WHERE c.relkind = 'm'
        OR (c.relkind = 'v' AND NOT coalesce(
              (SELECT o.option_value::boolean FROM pg_options_to_table(c.reloptions) o
                WHERE o.option_name = 'security_invoker'), false))
    UNION ALL
    SELECT 'pg_rewrite'::regclass, w.oid, 'runs with the table owner''s rights'
      FROM pg_rewrite w JOIN pg_class c ON c.oid = w.ev_class JOIN r ON c.relowner = r.oid
     WHERE NOT (w.rulename = '_RETURN' AND c.relkind IN ('v', 'm'))
    UNION ALL
    SELECT 'pg_event_trigger'::regclass, e.oid, 'runs on DDL commands'
      FROM pg_event_trigger e JOIN r ON e.evtowner = r.oid
)
SELECT o.type, o.identity, f.why
  FROM found f, LATERAL pg_identify_object(f.classid, f.objid, 0) o
 ORDER BY o.type, o.identity, f.why
"""

_OTHER_DATABASES_SQL = """
SELECT DISTINCT d.datname, d.datallowconn
  FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass
   AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)
   AND d.datname <> current_database()
 ORDER BY d.datname
"""

#: At most this many objects are named in an error (it is posted to Slack and the audit trail).
MAX_NAMED = 8


def plain(text: str, limit: int = 120) -> str:
    """A name chosen by the temporary role, safe to put in a Slack message or a log line."""
    text = re.sub(r"[<>&\x00-\x1f\x7f]", "?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def owner_rights_objects(conn: psycopg.Connection, role: str) -> list[str]:
    """Objects `role` owns in `conn`'s database that would run with a new owner's rights."""
    rows = conn.execute(_OWNER_RIGHTS_SQL, {"role": role}).fetchall()
    return [f"{kind} {plain(identity)} ({plain(why)})" for kind, identity, why in rows]


def other_databases(conn: psycopg.Connection, role: str) -> list[tuple[str, bool]]:
    """(name, allows connections) of every other database where `role` owns objects or holds
    privileges (`pg_shdepend`): `REASSIGN`/`DROP OWNED` act on one database at a time."""
    return [(name, bool(allow)) for name, allow in conn.execute(_OTHER_DATABASES_SQL, (role,))]


def describe(objects: list[str]) -> str:
    named = "; ".join(objects[:MAX_NAMED])
    more = len(objects) - MAX_NAMED
    return named + (f"; and {more} more" if more > 0 else "")
