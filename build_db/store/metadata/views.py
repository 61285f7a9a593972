"""Release CSVs as text-only DuckDB views: optional columns and files, typed casts and integrity checks that
fail with one line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ...errors import ReleaseError
from ...release import layout as R
from ...release.manifest import layout
from ..catalog import sql_literal


class MetadataViews:
    """Release CSVs as text views in one DuckDB connection, with typed casts and one-line integrity errors
    naming the file, the key and the fix; notes collect what is fine but worth saying."""

    def __init__(self, release: Path, store: Path, species: list[str], version: str = R.VERSION):
        self.release = Path(release)
        self.store = Path(store)
        self.species = species
        self.version = version
        self.layout = layout(self.release, version)
        self.con = duckdb.connect(config={"threads": 2, "memory_limit": "3GB"})
        self.report: dict[str, int | dict | list] = {}
        self.notes: list[str] = []
        self._noted: set[str] = set()

    # --- reading ---

    def _path(self, spec: R.CsvSpec) -> Path:
        return self.release / self.layout.csv(spec)

    def load(self, spec: R.CsvSpec, view: str) -> None:
        """Register a CSV as a text-only view, after checking it has the columns we need. Columns that only
        enrich are NULL when absent, and a file the store can do without is an empty view when the manifest
        does not list it; both are noted in the build report."""
        path = self._path(spec)
        cols = ", ".join(f"null::varchar as {c}" for c in spec.columns)
        if spec.optional_file and not self.layout.listed(spec) and not path.exists():
            self.notes.append(f"{spec.name}.csv: not in the release; optional, no rows from it in the store")
            self.con.execute(f"create or replace temp view {view} as select {cols} limit 0")
            return
        if not path.exists():
            raise ReleaseError(f"{path}: missing; download it again from the release bucket", path=path)
        header = self.con.sql(
            f"select * from read_csv({sql_literal(path)}, all_varchar = true, header = true) limit 0"
        )
        missing = [c for c in spec.needed if c not in header.columns]
        if missing:
            raise ReleaseError(
                f"{path}: missing column {', '.join(missing)}; this is not the release's "
                f"{spec.name}.csv: download it again",
                path=path,
                key=missing[0],
            )
        absent = [c for c in spec.optional if c not in header.columns]
        if absent and f"{spec.name}:{absent}" not in self._noted:
            self._noted.add(f"{spec.name}:{absent}")
            self.notes.append(f"{path.name}: no column {', '.join(absent)}; NULL in the store")
        filler = "".join(f", null::varchar as {c}" for c in absent)
        self.con.execute(
            f"create or replace temp view {view} as select *{filler} from read_csv({sql_literal(path)}, "
            "all_varchar = true, header = true, quote = '\"', escape = '\"')"
        )

    def typed(self, view: str, spec: R.CsvSpec, column: str, sql_type: str, key: str) -> str:
        """SQL for column cast to sql_type ('' is NULL); raises naming the first value that does not cast."""
        bad = self.first(
            f"select {key}, {column} from {view} where nullif({column}, '') is not null "
            f"and try_cast({column} as {sql_type}) is null limit 1"
        )
        if bad:
            raise ReleaseError(
                f"{self._path(spec)}: column {column} has {bad[1]!r} for {key} {bad[0]}, expected "
                f"{sql_type.lower()}; the file is damaged: download it again",
                path=self._path(spec),
                key=bad[0],
            )
        return f"cast(nullif({column}, '') as {sql_type})"

    def fail_if(self, sql: str, message: str, spec: R.CsvSpec) -> None:
        """Raise `message` (formatted with the first offending row) if the query returns a row."""
        row = self.first(sql)
        if row:
            path = self._path(spec)
            raise ReleaseError(f"{path}: " + message.format(*row), path=path, key=row[0])

    def unique(self, view: str, key: str, message: str, spec: R.CsvSpec) -> None:
        """Raise `message` ({0}: the key, {1}: its count) when a key repeats in the view."""
        self.fail_if(
            f"select {key}, count(*) from {view} group by 1 having count(*) > 1 limit 1", message, spec
        )

    def count(self, sql: str) -> int:
        return int(self.first(sql)[0])

    def first(self, sql: str):
        """The first row or None. (DuckDB 2.0: a half-read result would block the connection.)"""
        rows = self.con.execute(sql).fetchall()
        return rows[0] if rows else None

    # --- the tables ---
