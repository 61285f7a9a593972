"""sql/: one view per file, named after the file, parsed by sqlglot (DuckDB dialect)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from build_db.store.catalog import SQL_DIR, VIEW_ORDER, view_sql
from build_db.store.schema import VIEWS

FILES = sorted(SQL_DIR.glob("*.sql"))


def test_every_view_has_a_file_and_every_file_a_view():
    assert {f.stem for f in FILES} == set(VIEW_ORDER) == {v.name for v in VIEWS}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_parses_and_creates_its_namesake(path):
    statements = sqlglot.parse(view_sql(path.stem, Path("/store")), read="duckdb")
    assert len(statements) == 1
    create = statements[0]
    assert isinstance(create, exp.Create) and create.args["kind"] == "VIEW"
    assert create.this.name == path.stem
