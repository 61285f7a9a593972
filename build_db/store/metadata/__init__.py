"""Metadata stage: release CSVs -> typed, joined tables (cells, genes, taxonomy, donors, ...) as Parquet.

DuckDB does the reading and joining (2.9M cells fit comfortably). Every CSV is read as text and cast
column by column, so a bad value is reported with its file, column and row key. Integrity problems the
real release cannot have are errors; gaps it legitimately has (unassigned cells, cells outside
cell_metadata, taxonomy rows for cells of species not built) are counted in the build report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ReleaseError
from ...release import layout as R
from ...release.check import CheckReport, Problem
from .. import schema as S
from ..paths import TABLES, species_part, table_file
from .cells import build_cells, cell_groups, cell_order
from .donors import build_donors
from .genes import build_genes
from .taxonomy import build_taxonomy
from .views import MetadataViews, sql_literal


class MetadataBuilder(MetadataViews):
    """Runs the metadata steps in order and writes the Parquet tables; `build()` returns the report."""

    def validate(self, cells: dict[str, list[str]]) -> dict:
        """The same checks as `build()` on the CSVs alone, for `check` (before any long work): `cells` is
        each matrix's cell labels in row order; nothing is written. Raises ReleaseError on the first
        problem; returns the report."""
        self._load_all()
        frame = pd.concat(
            [
                pd.DataFrame(
                    {
                        "species": sp,
                        "cell_index": np.arange(len(labels), dtype=np.int32),
                        "cell_label": labels,
                        "total_counts": pd.array([None] * len(labels), dtype="Int64"),
                        "genes_detected": pd.array([None] * len(labels), dtype="Int32"),
                    }
                )
                for sp, labels in cells.items()
            ]
        )
        self.con.register("matrix_cells_frame", frame)
        self.con.execute("create temp view matrix_cells as select * from matrix_cells_frame")
        build_donors(self)
        build_taxonomy(self)
        build_cells(self)
        self.cell_order = cell_order(self)
        self.cell_groups = cell_groups(self)
        self.report["notes"] = self.notes
        return self.report

    def _load_all(self) -> None:
        for spec, view in [
            (R.CELL_METADATA, "cm"),
            (R.DONOR, "donor_csv"),
            (R.LIBRARY, "library_csv"),
            (R.VALUE_SETS, "vs_csv"),
            (R.TERM_SET, "levels_csv"),
            (R.TERM, "terms_csv"),
            (R.CLUSTER, "cluster_csv"),
            (R.CLUSTER_MEMBERSHIP, "ctc_csv"),
            (R.CELL_MEMBERSHIP, "members_csv"),
            (R.EMBEDDING, "emb_csv"),
            (R.ABBREVIATION, "abbr_csv"),
            (R.ABBREVIATION_MAP, "abbr_map_csv"),
        ]:
            self.load(spec, view)

    def build(self) -> dict:
        (self.store / TABLES).mkdir(parents=True, exist_ok=True)
        self._load_all()
        totals = ", ".join(sql_literal(species_part(self.store, "cell_totals", s)) for s in self.species)
        self.con.execute(f"create temp view matrix_cells as select * from read_parquet([{totals}])")
        build_donors(self)
        build_taxonomy(self)
        build_cells(self)
        build_genes(self)
        for t in S.PARQUET_TABLES:
            self.con.execute(
                f"copy (select {', '.join(t.column_names)} from {t.name}) to "
                f"{sql_literal(table_file(self.store, t.name))} (format parquet, compression zstd)"
            )
        self.report["notes"] = self.notes
        return self.report


def check_metadata(report: CheckReport, version: str = R.VERSION) -> CheckReport:
    """Add the metadata's internal consistency to a clean `check_release(..., keep_cells=True)` report:
    keys unique, foreign keys resolving, values typed, the taxonomy a tree that both taxonomy files agree
    on. The CSVs alone are read (a few seconds at full scale), so `hmba-db check` and the build's first
    step find these before any long work."""
    if not report.ok or not {"metadata", "taxonomy"} <= set(report.parts) or not report.cell_labels:
        return report
    try:
        builder = MetadataBuilder(report.release, report.release, list(report.species), version)
        found = builder.validate(report.cell_labels)
    except ReleaseError as e:
        report.cell_labels = {}
        where = str(e.path) if e.path else str(report.release)
        message = str(e)
        if message.startswith(where + ": "):
            message = message[len(where) + 2 :]
        try:
            where = str(Path(where).relative_to(report.release))
        except ValueError:
            pass
        report.problems.append(Problem(where, message))
        return report
    report.cell_labels = {}  # ~100 bytes a cell: not to be held through a build
    report.cell_order = builder.cell_order  # 4 bytes a cell: the build's cell-major projection needs it
    report.cell_groups = builder.cell_groups  # ~50 bytes a cell: the statistics, computed while sorting
    report.notes += [n for n in found.get("notes", []) if n not in report.notes]
    return report
