"""Metadata stage: release CSVs -> typed, joined tables (cells, genes, taxonomy, donors, ...) as Parquet.

DuckDB does the reading and joining (2.9M cells fit comfortably). Every CSV is read as text and cast
column by column, so a bad value is reported with its file, column and row key. Integrity problems the
real release cannot have are errors; gaps it legitimately has (unassigned cells, taxonomy rows for cells
of species not built) are counted in the build report.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from . import release as R
from . import schema as S
from .errors import ReleaseError
from .manifest import layout


def _q(path: Path | str) -> str:
    """A SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


class MetadataBuilder:
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
            f"select * from read_csv({_q(path)}, all_varchar = true, header = true) limit 0"
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
            f"create or replace temp view {view} as select *{filler} from read_csv({_q(path)}, "
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
        totals = ", ".join(_q(tables / "cell_totals" / f"{s}.parquet") for s in self.species)
        self.con.execute(f"create temp view matrix_cells as select * from read_parquet([{totals}])")
        self._donors_libraries_values()
        self._taxonomy()
        self._cells()
        self._genes()
        for t in S.PARQUET_TABLES:
            self.con.execute(
                f"copy (select {', '.join(t.column_names)} from {t.name}) to "
                f"{_q(tables / (t.name + '.parquet'))} (format parquet, compression zstd)"
            )
        self.report["notes"] = self.notes
        return self.report

    def _donors_libraries_values(self) -> None:
        c = self.con
        self.unique(
            "donor_csv",
            "donor_label",
            "donor_label {0} appears {1} times; each donor must be listed once",
            R.DONOR,
        )
        age = self.typed("donor_csv", R.DONOR, "donor_age_value", "DOUBLE", "donor_label")
        c.execute(
            "create temp table donors as select donor_label, donor_species, species_scientific_name, "
            f"species_genus, donor_sex, donor_age, {age} as donor_age_value, donor_age_unit, donor_nhash_id "
            "from donor_csv"
        )
        self.unique(
            "library_csv",
            "library_label",
            "library_label {0} appears {1} times; each library must be listed once",
            R.LIBRARY,
        )
        self.fail_if(
            "select l.library_label, l.donor_label from library_csv l anti join donors d using (donor_label) "
            "limit 1",
            "library {0} names donor {1}, which donor.csv does not list; download both again",
            R.LIBRARY,
        )
        c.execute(
            "create temp table libraries as select "
            + ", ".join(S.LIBRARIES.column_names)
            + " from library_csv"
        )
        order = self.typed("vs_csv", R.VALUE_SETS, '"order"', "INTEGER", "label")
        c.execute(
            'create temp table value_sets as select label, "table" as table_name, field, description, '
            f"{order} as value_order, external_identifier, parent_label, color_hex_triplet from vs_csv"
        )

    def _taxonomy(self) -> None:
        c = self.con
        lv_order = self.typed("levels_csv", R.TERM_SET, '"order"', "INTEGER", "label")
        c.execute(
            f"create temp table taxonomy_levels as select label as level_label, name as level, description, "
            f"{lv_order} as level_order from levels_csv"
        )
        self.unique("terms_csv", "label", "term {0} appears {1} times; each term must be listed once", R.TERM)
        t_order = self.typed("terms_csv", R.TERM, "term_order", "INTEGER", "label")
        s_order = self.typed("terms_csv", R.TERM, "term_set_order", "INTEGER", "label")
        c.execute(f"""create temp table terms as select label as term_label, name as term_name,
            cluster_annotation_term_set_label as level_label, cluster_annotation_term_set_name as level,
            color_hex_triplet as color, {t_order} as term_order, {s_order} as level_order,
            nullif(parent_term_label, '') as parent_term_label,
            nullif(parent_term_name, '') as parent_term_name,
            nullif(parent_term_set_label, '') as parent_level_label from terms_csv""")
        self.fail_if(
            "select t.term_label, t.parent_term_label from terms t where parent_term_label is not null "
            "and parent_term_label not in (select term_label from terms) limit 1",
            "term {0} has parent {1}, which is not a term; download the taxonomy again",
            R.TERM,
        )
        n_cells = self.typed("cluster_csv", R.CLUSTER, "number_of_cells", "INTEGER", "label")
        self.unique(
            "cluster_csv",
            "cluster_alias",
            "cluster_alias {0} appears {1} times; each cluster must be listed once",
            R.CLUSTER,
        )
        # One term per cluster and level, and every term known.
        self.fail_if(
            "select cluster_alias, cluster_annotation_term_set_name, count(*) from ctc_csv "
            "group by 1, 2 having count(*) > 1 limit 1",
            "cluster {0} has {2} terms at level {1}; expected one",
            R.CLUSTER_MEMBERSHIP,
        )
        self.fail_if(
            "select cluster_alias, cluster_annotation_term_label from ctc_csv where "
            "cluster_annotation_term_label not in (select term_label from terms) limit 1",
            "cluster {0} names term {1}, which cluster_annotation_term.csv does not list",
            R.CLUSTER_MEMBERSHIP,
        )
        self.fail_if(
            "select cluster_alias from cluster_csv where cluster_alias not in "
            "(select cluster_alias from ctc_csv) limit 1",
            "cluster {0} has no terms in cluster_to_cluster_annotation_membership.csv; download the "
            "taxonomy again",
            R.CLUSTER,
        )
        pivots = []
        for level in R.LEVELS:
            p = S.LEVEL_PREFIX[level]
            pivots.append(f"""max(case when t.level = '{level}' then t.term_label end) as {p}_label,
                max(case when t.level = '{level}' then t.term_name end) as {p}_name,
                max(case when t.level = '{level}' then t.color end) as {p}_color,
                max(case when t.level = '{level}' then t.term_order end) as {p}_order""")
        c.execute(f"""create temp table clusters as
            select k.label as cluster_label, k.cluster_alias, split_part(t_c.term_name, '-', 1) as species,
                   {n_cells} as number_of_cells,
                   {", ".join(f"p.{n}" for n in _level_names() if n != "cluster_label")}
            from cluster_csv k
            join (select m.cluster_alias, {", ".join(pivots)} from ctc_csv m
                  join terms t on t.term_label = m.cluster_annotation_term_label group by m.cluster_alias) p
              using (cluster_alias)
            left join terms t_c on t_c.term_label = k.label""")
        self.fail_if(
            "select cluster_alias from clusters where "
            + " or ".join(f"{S.LEVEL_PREFIX[lv]}_label is null" for lv in R.LEVELS)
            + " limit 1",
            "cluster {0} lacks a term at some level; download the taxonomy again",
            R.CLUSTER_MEMBERSHIP,
        )
        c.execute(
            "create temp table abbreviations as select "
            + ", ".join(S.ABBREVIATIONS.column_names)
            + " from abbr_csv"
        )
        c.execute(
            "create temp table term_abbreviations as select cluster_annotation_term_label as term_label, "
            "abbreviation_term from abbr_map_csv"
        )

    def _cells(self) -> None:
        c = self.con
        built = ", ".join(_q(R.matrix_stem(s)) for s in self.species)
        self.unique(
            "cm",
            "cell_label",
            "cell_label {0} appears {1} times; cell labels must be unique: download it again",
            R.CELL_METADATA,
        )
        # Matrix cells that cell_metadata.csv leaves out (cells that failed QC, by the ABC's account) stay
        # in the store with NULL metadata and no cluster, so every non-zero of the source is kept; rows of
        # cell_metadata.csv with no matrix cell have no expression and are left out. Both are counted.
        self.fail_if(
            "select m.species, count(*) from matrix_cells m group by 1 having count(*) = "
            "count(*) filter (where m.cell_label not in (select cell_label from cm)) limit 1",
            "none of the {1} cells of the {0} matrix is listed; matrix and metadata are from different "
            "releases: download both again",
            R.CELL_METADATA,
        )
        self.fail_if(
            "select m.cell_label, cm.feature_matrix_label, m.species from matrix_cells m join cm "
            "using (cell_label) where cm.feature_matrix_label <> 'HMBA-10xMultiome-BG-' || m.species limit 1",
            "cell {0} is listed for {1} but sits in the {2} matrix; download both again",
            R.CELL_METADATA,
        )
        self.fail_if(
            "select cm.cell_label, cm.library_label from cm join matrix_cells m using (cell_label) "
            "anti join libraries l using (library_label) limit 1",
            "cell {0} names library {1}, which library.csv does not list; download both again",
            R.CELL_METADATA,
        )
        self.fail_if(
            "select cm.cell_label, cm.donor_label, l.donor_label, l.library_label from cm "
            "join matrix_cells m using (cell_label) join libraries l using (library_label) "
            "where cm.donor_label <> l.donor_label limit 1",
            "cell {0} has donor {1} but its library {3} has donor {2}; download both again",
            R.CELL_METADATA,
        )
        self.fail_if(
            "select cm.cell_label, cm.barcoded_cell_sample_label, l.barcoded_cell_sample_label, "
            "l.library_label from cm join matrix_cells m using (cell_label) join libraries l "
            "using (library_label) where cm.barcoded_cell_sample_label <> l.barcoded_cell_sample_label "
            "limit 1",
            "cell {0} has sample {1} but its library {3} has sample {2}; download both again",
            R.CELL_METADATA,
        )
        self.fail_if(
            "select m.cell_label, d.species_genus, m.species from matrix_cells m join cm using (cell_label) "
            "join donors d using (donor_label) where d.species_genus <> m.species limit 1",
            "cell {0} comes from a {1} donor but sits in the {2} matrix; download both again",
            R.CELL_METADATA,
        )
        self.unique(
            "members_csv",
            "cell_label",
            "cell {0} has {1} cluster memberships; expected at most one",
            R.CELL_MEMBERSHIP,
        )
        self.fail_if(
            "select cell_label, cluster_alias from members_csv anti join clusters using (cluster_alias) "
            "limit 1",
            "cell {0} names cluster alias {1}, which cluster.csv does not list: download the taxonomy again",
            R.CELL_MEMBERSHIP,
        )
        self.fail_if(
            "select m.cell_label, m.cluster_label, k.cluster_label from members_csv m join clusters k "
            "using (cluster_alias) where m.cluster_label <> k.cluster_label limit 1",
            "cell {0} names cluster {1}, but its alias belongs to {2}",
            R.CELL_MEMBERSHIP,
        )
        self.fail_if(
            "select m.cell_label, k.species, mc.species from members_csv m join clusters k using "
            "(cluster_alias) join matrix_cells mc using (cell_label) where k.species <> mc.species limit 1",
            "cell {0} is assigned to a {1} cluster but sits in the {2} matrix",
            R.CELL_MEMBERSHIP,
        )
        self.unique(
            "emb_csv", "cell_label", "cell {0} has {1} embedding rows; expected at most one", R.EMBEDDING
        )
        x = self.typed("emb_csv", R.EMBEDDING, "x", "DOUBLE", "cell_label")
        y = self.typed("emb_csv", R.EMBEDDING, "y", "DOUBLE", "cell_label")
        doublet = self.typed("cm", R.CELL_METADATA, "doublet_score", "DOUBLE", "cell_label")
        umi = self.typed("cm", R.CELL_METADATA, "umi_count", "DOUBLE", "cell_label")
        levels = ", ".join(f"k.{n}" for n in _level_names())
        c.execute(f"""create temp table cells as
            select m.species, m.cell_index, m.cell_label, cm.cell_label is not null as in_cell_metadata,
                   cm.cell_barcode, cm.barcoded_cell_sample_label,
                   cm.library_label, cm.donor_label, cm.alignment_job_id, {doublet} as doublet_score,
                   {umi} as umi_count, cm.feature_matrix_label, cm.dataset_label, cm.abc_sample_id,
                   m.total_counts, m.genes_detected,
                   d.species_scientific_name, d.donor_species, d.donor_sex, d.donor_age, d.donor_age_value,
                   d.donor_age_unit,
                   l.library_method, l.enrichment_population, l.cell_specimen_type,
                   l.region_of_interest_label,
                   l.region_of_interest_name, l.parcellation_term_identifier, l.anatomical_division_label,
                   l.specimen_dissected_roi_label, l.slab_label,
                   mem.cluster_alias, {levels},
                   {x} as x, {y} as y,
                   vs_sp.color_hex_triplet as species_color, vs_sex.color_hex_triplet as donor_sex_color,
                   vs_r.color_hex_triplet as region_color, vs_r.value_order as region_order
            from matrix_cells m
            left join cm using (cell_label)
            left join donors d on d.donor_label = cm.donor_label
            left join libraries l on l.library_label = cm.library_label
            left join members_csv mem on mem.cell_label = m.cell_label and cm.cell_label is not null
            left join clusters k on k.cluster_alias = mem.cluster_alias
            left join emb_csv on emb_csv.cell_label = m.cell_label and cm.cell_label is not null
            left join value_sets vs_sp on vs_sp.field = 'species_genus' and vs_sp.label = m.species
            left join value_sets vs_sex on vs_sex.field = 'donor_sex' and vs_sex.label = d.donor_sex
            left join value_sets vs_r on vs_r.field = 'region_of_interest_label'
                 and vs_r.label = l.region_of_interest_label
            order by m.species, m.cell_index""")
        n = self.count("select count(*) from cells")
        if n != self.count("select count(*) from matrix_cells"):
            raise ReleaseError(
                f"{self._path(R.CELL_METADATA)}: joining cells to donors and libraries changed "
                "the row count; a key is duplicated: run hmba-db check",
                path=self._path(R.CELL_METADATA),
            )
        by_level = " union all ".join(
            f"select {S.LEVEL_PREFIX[lv]}_label as term_label, count(*) as n from cells "
            f"where {S.LEVEL_PREFIX[lv]}_label is not null group by 1"
            for lv in R.LEVELS
        )
        c.execute(f"""create temp table taxonomy_terms as
            select t.*, coalesce(n.n, 0) as n_cells from terms t left join ({by_level}) n using (term_label)
            order by t.level_order, t.term_order""")
        per_species = {}
        without_cell = dict(
            c.execute(
                "select feature_matrix_label, count(*) from cm anti join matrix_cells using (cell_label) "
                f"where feature_matrix_label in ({built}) group by 1"
            ).fetchall()
        )
        for sp, cells, assigned, placed, outside in c.execute(
            "select species, count(*), count(cluster_alias), count(x), "
            "count(*) filter (not in_cell_metadata) from cells group by 1 order by 1"
        ).fetchall():
            per_species[sp] = {
                "cells": cells,
                "assigned": assigned,
                "unassigned": cells - assigned,
                "with_embedding": placed,
                "not_in_cell_metadata": outside,
                "cell_metadata_rows_without_matrix_cell": without_cell.get(R.matrix_stem(sp), 0),
            }
        self.report["cells"] = per_species
        self.report["membership_rows_for_cells_not_built"] = self.count(
            "select count(*) from members_csv anti join matrix_cells using (cell_label)"
        )
        self.report["membership_rows_for_cells_outside_cell_metadata"] = self.count(
            "select count(*) from members_csv join matrix_cells using (cell_label) "
            "anti join cm using (cell_label)"
        )
        self.report["embedding_rows_for_cells_not_built"] = self.count(
            "select count(*) from emb_csv anti join matrix_cells using (cell_label)"
        )
        self.report["metadata_rows_for_species_not_built"] = self.count(
            f"select count(*) from cm where feature_matrix_label not in ({built})"
        )

    def _genes(self) -> None:
        parts = []
        for sp in self.species:
            spec = R.GENE_TABLES[sp]
            view = f"genes_{sp.lower()}"
            self.load(spec, view)
            have = set(self.con.sql(f"select * from {view} limit 0").columns)
            extra = ", ".join(
                f"{c}" if c in have else f"null::varchar as {c}"
                for c in ("name", "mapped_ncbi_identifier", "biotype")
            )
            buckets = _q(self.store / "tables" / "gene_buckets" / f"{sp}.parquet")
            if self.layout.shared_gene_table:  # one gene.csv for all species: this matrix's genes
                self.load(spec, f"{view}_all")
                self.con.execute(
                    f"create or replace temp view {view} as select * from {view}_all where gene_identifier "
                    f"in (select gene_identifier from read_parquet({buckets}))"
                )
            self.fail_if(
                f"select gene_identifier, count(*) from {view} group by 1 having count(*) > 1 limit 1",
                "gene_identifier {0} appears {1} times; identifiers must be unique",
                spec,
            )
            self.fail_if(
                f"select b.gene_identifier from read_parquet({buckets}) b anti join {view} g "
                "using (gene_identifier) limit 1",
                "has no row for gene {0} of the matrix; matrix and gene table are from different releases: "
                "download both again",
                spec,
            )
            parts.append(f"""select b.species::varchar as species, b.gene_index, b.gene_identifier,
                    nullif(g.gene_symbol, '') as gene_symbol, b.gene_bucket, {extra}
                from read_parquet({buckets}) b join {view} g using (gene_identifier)""")
        self.con.execute(
            "create temp table genes as " + " union all ".join(parts) + " order by species, gene_index"
        )


def _level_names() -> list[str]:
    return [f"{S.LEVEL_PREFIX[lv]}_{part}" for lv in R.LEVELS for part in ("label", "name", "color", "order")]
