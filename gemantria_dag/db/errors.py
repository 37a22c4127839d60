"""What a PostgreSQL error means for the rows being written: wait and retry, or set the rows aside.

By SQLSTATE class (PostgreSQL manual, Appendix A "PostgreSQL Error Codes"):
- transient: the server or the connection, not the rows (08 connection exception, 40 transaction
  rollback: serialization failure and deadlock, 53 insufficient resources, 57 operator intervention:
  admin shutdown and "the database system is starting up" 57P03, 58 system error, 55P03 lock not
  available), and any error without a SQLSTATE (the connection was lost before the server answered).
  Written again later, the same rows succeed: spool them and replay.
- row: one of the rows (22 data exception, 23 integrity constraint violation such as a foreign key
  or a check, 54 program limit exceeded such as an index row over 2,704 bytes). The same rows fail
  the same way forever: find them, write the others, quarantine these.
- schema: anything else (42 a missing table or column, an insufficient privilege): every row fails
  until an operator changes the database; keep them spooled and say what to fix.
"""

from __future__ import annotations

from typing import Literal

import psycopg

ErrorKind = Literal["transient", "row", "schema"]

_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"55P03", "55006"})
_ROW_CLASSES = frozenset({"22", "23", "54"})


def error_kind(exc: psycopg.Error) -> ErrorKind:
    """Classify `exc` as above."""
    state = exc.sqlstate
    if not state:
        return "transient"
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES:
        return "transient"
    if state[:2] in _ROW_CLASSES:
        return "row"
    return "schema"
