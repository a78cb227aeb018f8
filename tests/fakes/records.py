"""Read a records database (ds2a/records/database.py) with a fresh connection, as another process would."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, List, Union


def query_db(path: Union[str, Path], sql: str) -> List[Any]:
    """All rows of `sql` on the database at `path`; the connection is closed before returning."""
    con = sqlite3.connect(str(path))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
