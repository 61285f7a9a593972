"""The cells table: every matrix cell joined to its metadata, library, donor, cluster and UMAP."""

from __future__ import annotations

from ...errors import ReleaseError
from ...release import layout as R
from .. import schema as S
from .taxonomy import level_names
from .views import MetadataViews, sql_literal


def taxonomy_order() -> str:
    """The cells' taxonomy order within a species, as an ORDER BY list: every term of every level is one
    range of it, whatever the numbering of term_order (global or within the parent); cells without a
    cluster last, in matrix order. `cell_rank` numbers it, and expression_by_cell is sorted by it."""
    levels = ", ".join(f"{S.LEVEL_PREFIX[lv]}_order nulls last" for lv in R.LEVELS)
    return f"{levels}, cell_index"


def cell_order(m: MetadataViews) -> dict:
    """Per species, the cell indexes in taxonomy order (position = cell_rank), from the cells table."""
    import numpy as np

    out = {}
    for sp in m.species:
        rows = m.con.execute(
            f"select cell_index from cells where species = ? order by {taxonomy_order()}", [sp]
        ).fetchnumpy()
        out[sp] = np.asarray(rows["cell_index"], dtype=np.int32)
    return out


GROUP_COLUMNS = ("region_of_interest_label", "donor_label") + tuple(
    f"{S.LEVEL_PREFIX[lv]}_{part}" for lv in R.LEVELS for part in ("label", "order")
)


def cell_groups(m: MetadataViews) -> dict:
    """Per species, what the statistics group cells by (region, donor, each level's label and order), one
    row per cell in cell_index order, labels as categoricals (~4 bytes a cell each): the build computes
    the statistics while it sorts, before the cells table is written."""
    out = {}
    for sp in m.species:
        table = m.con.sql(
            f"select cell_index, {', '.join(GROUP_COLUMNS)} from cells where species = ? order by cell_index",
            params=[sp],
        ).to_arrow_table()
        out[sp] = table.to_pandas(strings_to_categorical=True)
    return out


def build_cells(m: MetadataViews) -> None:
    """The cells table: every matrix cell with its metadata, library, donor, cluster and UMAP."""
    c = m.con
    built = ", ".join(sql_literal(R.matrix_stem(s)) for s in m.species)
    m.unique(
        "cm",
        "cell_label",
        "cell_label {0} appears {1} times; cell labels must be unique: download it again",
        R.CELL_METADATA,
    )
    # Matrix cells that cell_metadata.csv leaves out (cells that failed QC, by the ABC's account) stay
    # in the store with NULL metadata and no cluster, so every non-zero of the source is kept; rows of
    # cell_metadata.csv with no matrix cell have no expression and are left out. Both are counted.
    m.fail_if(
        "select m.species, count(*) from matrix_cells m group by 1 having count(*) = "
        "count(*) filter (where m.cell_label not in (select cell_label from cm)) limit 1",
        "none of the {1} cells of the {0} matrix is listed; matrix and metadata are from different "
        "releases: download both again",
        R.CELL_METADATA,
    )
    m.fail_if(
        "select m.cell_label, cm.feature_matrix_label, m.species from matrix_cells m join cm "
        "using (cell_label) where cm.feature_matrix_label <> 'HMBA-10xMultiome-BG-' || m.species limit 1",
        "cell {0} is listed for {1} but sits in the {2} matrix; download both again",
        R.CELL_METADATA,
    )
    m.fail_if(
        "select cm.cell_label, cm.library_label from cm join matrix_cells m using (cell_label) "
        "anti join libraries l using (library_label) limit 1",
        "cell {0} names library {1}, which library.csv does not list; download both again",
        R.CELL_METADATA,
    )
    m.fail_if(
        "select cm.cell_label, cm.donor_label, l.donor_label, l.library_label from cm "
        "join matrix_cells m using (cell_label) join libraries l using (library_label) "
        "where cm.donor_label <> l.donor_label limit 1",
        "cell {0} has donor {1} but its library {3} has donor {2}; download both again",
        R.CELL_METADATA,
    )
    m.fail_if(
        "select cm.cell_label, cm.barcoded_cell_sample_label, l.barcoded_cell_sample_label, "
        "l.library_label from cm join matrix_cells m using (cell_label) join libraries l "
        "using (library_label) where cm.barcoded_cell_sample_label <> l.barcoded_cell_sample_label "
        "limit 1",
        "cell {0} has sample {1} but its library {3} has sample {2}; download both again",
        R.CELL_METADATA,
    )
    m.fail_if(
        "select m.cell_label, d.species_genus, m.species from matrix_cells m join cm using (cell_label) "
        "join donors d using (donor_label) where d.species_genus <> m.species limit 1",
        "cell {0} comes from a {1} donor but sits in the {2} matrix; download both again",
        R.CELL_METADATA,
    )
    m.unique(
        "members_csv",
        "cell_label",
        "cell {0} has {1} cluster memberships; expected at most one",
        R.CELL_MEMBERSHIP,
    )
    m.fail_if(
        "select cell_label, cluster_alias from members_csv anti join clusters using (cluster_alias) limit 1",
        "cell {0} names cluster alias {1}, which cluster.csv does not list: download the taxonomy again",
        R.CELL_MEMBERSHIP,
    )
    m.fail_if(
        "select m.cell_label, m.cluster_label, k.cluster_label from members_csv m join clusters k "
        "using (cluster_alias) where m.cluster_label <> k.cluster_label limit 1",
        "cell {0} names cluster {1}, but its alias belongs to {2}",
        R.CELL_MEMBERSHIP,
    )
    m.fail_if(
        "select m.cell_label, k.species, mc.species from members_csv m join clusters k using "
        "(cluster_alias) join matrix_cells mc using (cell_label) where k.species <> mc.species limit 1",
        "cell {0} is assigned to a {1} cluster but sits in the {2} matrix",
        R.CELL_MEMBERSHIP,
    )
    m.unique("emb_csv", "cell_label", "cell {0} has {1} embedding rows; expected at most one", R.EMBEDDING)
    x = m.typed("emb_csv", R.EMBEDDING, "x", "DOUBLE", "cell_label")
    y = m.typed("emb_csv", R.EMBEDDING, "y", "DOUBLE", "cell_label")
    doublet = m.typed("cm", R.CELL_METADATA, "doublet_score", "DOUBLE", "cell_label")
    umi = m.typed("cm", R.CELL_METADATA, "umi_count", "DOUBLE", "cell_label")
    levels = ", ".join(f"k.{n}" for n in level_names())
    c.execute(f"""create temp table cells as
        select *, (row_number() over (partition by species order by {taxonomy_order()}) - 1)::INTEGER
               as cell_rank
        from (select m.species, m.cell_index, m.cell_label, cm.cell_label is not null as in_cell_metadata,
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
             and vs_r.label = l.region_of_interest_label)
        order by species, cell_index""")
    n = m.count("select count(*) from cells")
    if n != m.count("select count(*) from matrix_cells"):
        raise ReleaseError(
            f"{m._path(R.CELL_METADATA)}: joining cells to donors and libraries changed "
            "the row count; a key is duplicated: run hmba-db check",
            path=m._path(R.CELL_METADATA),
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
    m.report["cells"] = per_species
    m.report["membership_rows_for_cells_not_built"] = m.count(
        "select count(*) from members_csv anti join matrix_cells using (cell_label)"
    )
    m.report["membership_rows_for_cells_outside_cell_metadata"] = m.count(
        "select count(*) from members_csv join matrix_cells using (cell_label) "
        "anti join cm using (cell_label)"
    )
    m.report["embedding_rows_for_cells_not_built"] = m.count(
        "select count(*) from emb_csv anti join matrix_cells using (cell_label)"
    )
    m.report["metadata_rows_for_species_not_built"] = m.count(
        f"select count(*) from cm where feature_matrix_label not in ({built})"
    )
