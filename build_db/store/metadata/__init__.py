"""Metadata stage: release CSVs -> typed, joined tables (cells, genes, taxonomy, donors, ...) as Parquet.

DuckDB does the reading and joining (2.9M cells fit comfortably). Every CSV is read as text and cast
column by column, so a bad value is reported with its file, column and row key. Integrity problems the
real release cannot have are errors; gaps it legitimately has (unassigned cells, cells outside
cell_metadata, taxonomy rows for cells of species not built) are counted in the build report.
"""

from __future__ import annotations

from ...release import layout as R
from .. import schema as S
from .cells import build_cells
from .donors import build_donors
from .genes import build_genes
from .taxonomy import build_taxonomy
from .views import MetadataViews, sql_literal


class MetadataBuilder(MetadataViews):
    """Runs the metadata steps in order and writes the Parquet tables; `build()` returns the report."""

    def build(self) -> dict:
        tables = self.store / "tables"
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
        totals = ", ".join(sql_literal(tables / "cell_totals" / f"{s}.parquet") for s in self.species)
        self.con.execute(f"create temp view matrix_cells as select * from read_parquet([{totals}])")
        build_donors(self)
        build_taxonomy(self)
        build_cells(self)
        build_genes(self)
        for t in S.PARQUET_TABLES:
            self.con.execute(
                f"copy (select {', '.join(t.column_names)} from {t.name}) to "
                f"{sql_literal(tables / (t.name + '.parquet'))} (format parquet, compression zstd)"
            )
        self.report["notes"] = self.notes
        return self.report
