"""The store's tables and views, declared once: names, column types and descriptions.

The metadata builder selects exactly these columns, the catalog writes these descriptions as COMMENT ON
(so BI tools show them), and a test checks docs/data-dictionary.md against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ..release import layout as R


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    kind: str = "table"  # or "view"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def C(name: str, type_: str, description: str) -> Column:  # noqa: N802 - reads like a table row
    return Column(name, type_, description)


SPECIES_COL = C("species", "VARCHAR", "Species of the matrix: Human, Macaque or Marmoset (the donor's genus)")
CELL_INDEX = C(
    "cell_index", "INTEGER", "0-based row of the cell in its species' matrix; with species, the cell key"
)
GENE_INDEX = C(
    "gene_index", "INTEGER", "0-based column of the gene in its species' matrix; with species, the gene key"
)

_LEVEL_DOC = {
    "neighborhood": "Neighborhood (taxonomy level 0, 4 terms)",
    "class": "Class (taxonomy level 1, 12 terms)",
    "subclass": "Subclass (taxonomy level 2, 36 terms)",
    "group": "Group (taxonomy level 3, 61 terms; the finest level compared across species)",
    "cluster": "Cluster (taxonomy level 4, 1,435 species-specific leaves)",
}
LEVEL_PREFIX = {level: level.lower() for level in R.LEVELS}


def _level_columns() -> tuple[Column, ...]:
    out = []
    for level in R.LEVELS:
        p = LEVEL_PREFIX[level]
        doc = _LEVEL_DOC[p]
        out += [
            C(
                f"{p}_label",
                "VARCHAR",
                f"{doc}: term label, e.g. CS20250428_{R.TERM_PREFIX[level]}_0001; NULL when "
                "the cell has no cluster",
            ),
            C(f"{p}_name", "VARCHAR", f"{doc}: term name"),
            C(f"{p}_color", "VARCHAR", f"{doc}: the taxonomy's color for the term, #rrggbb"),
            C(
                f"{p}_order",
                "INTEGER",
                f"{doc}: the term's position in taxonomy order; sort by it for figures",
            ),
        ]
    return tuple(out)


CELLS = Table(
    "cells",
    "One row per cell of every built species' matrix: matrix position, sample, donor, library and region, "
    "the five taxonomy levels (NULL for the ~35% of cells without cluster membership), UMAP coordinates and "
    "totals. Cells the matrix holds but cell_metadata.csv leaves out are kept (in_cell_metadata = false).",
    (
        SPECIES_COL,
        CELL_INDEX,
        C(
            "cell_rank",
            "INTEGER",
            "0-based position of the cell in taxonomy order within its species (Neighborhood, Class, "
            "Subclass, Group, Cluster, then cell_index; cells without a cluster last): every term's cells "
            "are one range. expression_by_cell is sorted by it: join on (species, cell_rank) there",
        ),
        C("cell_label", "VARCHAR", "The release's cell key: {cell_barcode}-{barcoded_cell_sample_label}"),
        C(
            "in_cell_metadata",
            "BOOLEAN",
            "False for a cell of the matrix that cell_metadata.csv leaves out (cells that failed QC, by the "
            "ABC's account): its counts are in the store, its metadata, region, donor and taxonomy are NULL",
        ),
        C("cell_barcode", "VARCHAR", "10x cell barcode"),
        C("barcoded_cell_sample_label", "VARCHAR", "Barcoded sample (one per library)"),
        C("library_label", "VARCHAR", "Library the cell was sequenced in (see libraries)"),
        C("donor_label", "VARCHAR", "Donor (see donors)"),
        C("alignment_job_id", "VARCHAR", "Alignment job: a 40-hex digest or an integer, kept as text"),
        C("doublet_score", "DOUBLE", "Doublet score from the release; NULL for all Marmoset cells"),
        C("umi_count", "DOUBLE", "UMI count from the release metadata; NULL for all Marmoset cells"),
        C(
            "feature_matrix_label",
            "VARCHAR",
            "The expression matrix holding the cell: HMBA-10xMultiome-BG-<Species>",
        ),
        C("dataset_label", "VARCHAR", "Dataset: HMBA-10xMultiome-BG"),
        C("abc_sample_id", "VARCHAR", "ABC atlas sample UUID"),
        C(
            "total_counts",
            "BIGINT",
            "Sum of the cell's raw counts over all genes, from the matrix (log2 CPM uses it)",
        ),
        C("genes_detected", "INTEGER", "Number of genes with a non-zero count in the cell, from the matrix"),
        C(
            "species_scientific_name",
            "VARCHAR",
            "Donor's species: Homo sapiens, Macaca mulatta, Macaca nemestrina or Callithrix jacchus",
        ),
        C("donor_species", "VARCHAR", "Donor's species as an NCBITaxon identifier"),
        C("donor_sex", "VARCHAR", "Donor's sex: Female or Male"),
        C("donor_age", "VARCHAR", "Donor's age as written in the release, e.g. 19 yrs"),
        C("donor_age_value", "DOUBLE", "Donor's age, number"),
        C("donor_age_unit", "VARCHAR", "Unit of donor_age_value"),
        C("library_method", "VARCHAR", "Library method, e.g. 10xMultiome;GEX"),
        C(
            "enrichment_population",
            "VARCHAR",
            "FACS enrichment of the sample, e.g. 50% NeuN+, 35% OLIG2-, 15% OLIG2+",
        ),
        C("cell_specimen_type", "VARCHAR", "Specimen type: Nuclei"),
        C(
            "region_of_interest_label",
            "VARCHAR",
            "Dissected region, abbreviation (20 values; all Marmoset cells: Br)",
        ),
        C("region_of_interest_name", "VARCHAR", "Dissected region, full name"),
        C(
            "parcellation_term_identifier",
            "VARCHAR",
            "Dissected region in the DHBA parcellation, e.g. DHBA:11538",
        ),
        C("anatomical_division_label", "VARCHAR", "Anatomical division of the region, e.g. Basal ganglia"),
        C("specimen_dissected_roi_label", "VARCHAR", "Dissected specimen"),
        C("slab_label", "VARCHAR", "Brain slab the specimen came from"),
        C(
            "cluster_alias",
            "VARCHAR",
            "The cell's cluster alias (cell_to_cluster_membership); NULL when unassigned",
        ),
        *_level_columns(),
        C("x", "DOUBLE", "UMAP x coordinate (cell_2d_embedding_coordinates); NULL when absent"),
        C("y", "DOUBLE", "UMAP y coordinate"),
        C("species_color", "VARCHAR", "Display color of the species (value_sets)"),
        C("donor_sex_color", "VARCHAR", "Display color of the donor's sex (value_sets)"),
        C("region_color", "VARCHAR", "Display color of the region (value_sets)"),
        C("region_order", "INTEGER", "Display order of the region (value_sets)"),
    ),
)

GENES = Table(
    "genes",
    "One row per gene of every built species, in matrix column order. gene_symbol is not unique and may be "
    "NULL: look genes up by symbol and check how many identifiers match.",
    (
        SPECIES_COL,
        GENE_INDEX,
        C(
            "gene_identifier",
            "VARCHAR",
            "The release's gene key: Ensembl (ENSG...) for Human, NCBIGene:<n> otherwise",
        ),
        C(
            "gene_symbol",
            "VARCHAR",
            "Gene symbol; not unique within a species, NULL where the release has none",
        ),
        C(
            "gene_bucket",
            "INTEGER",
            "The expression folder holding the gene: gene_bucket=<KKKK>; naming it in a "
            "query prunes the other folders",
        ),
        C("name", "VARCHAR", "Gene name from the species' gene table (text; NULL where absent)"),
        C(
            "mapped_ncbi_identifier",
            "VARCHAR",
            "NCBI Gene identifier from the gene table (text; NULL where absent)",
        ),
        C(
            "biotype",
            "VARCHAR",
            "Biotype from the gene table where the species has one (text; NULL otherwise)",
        ),
    ),
)

TAXONOMY_LEVELS = Table(
    "taxonomy_levels",
    "The five taxonomy levels (cluster_annotation_term_set.csv).",
    (
        C("level_label", "VARCHAR", "Level label, CCN20250428_LEVEL_0 to _4"),
        C("level", "VARCHAR", "Level name: Neighborhood, Class, Subclass, Group, Cluster"),
        C("description", "VARCHAR", "What the level means"),
        C("level_order", "INTEGER", "0 (coarsest) to 4 (finest)"),
    ),
)

TAXONOMY_TERMS = Table(
    "taxonomy_terms",
    "Every term of every level with its parent (cluster_annotation_term.csv), and how many cells it holds.",
    (
        C("term_label", "VARCHAR", "Term label, e.g. CS20250428_GROUP_0016"),
        C("term_name", "VARCHAR", "Term name, e.g. GPi Shell"),
        C("level_label", "VARCHAR", "Level label of the term"),
        C("level", "VARCHAR", "Level name of the term"),
        C("color", "VARCHAR", "Display color, #rrggbb"),
        C("term_order", "INTEGER", "Position in taxonomy order within the level"),
        C("level_order", "INTEGER", "0 (Neighborhood) to 4 (Cluster)"),
        C("parent_term_label", "VARCHAR", "Parent term label; NULL for Neighborhoods"),
        C("parent_term_name", "VARCHAR", "Parent term name; NULL for Neighborhoods"),
        C("parent_level_label", "VARCHAR", "Parent's level label; NULL for Neighborhoods"),
        C("n_cells", "BIGINT", "Cells of the built species assigned to the term (through their cluster)"),
    ),
)

CLUSTERS = Table(
    "clusters",
    "One row per cluster with its terms at all five levels (cluster.csv pivoted with "
    "cluster_to_cluster_annotation_membership.csv).",
    (
        C("cluster_label", "VARCHAR", "Cluster term label, e.g. CS20250428_CLUST_0671"),
        C("cluster_alias", "VARCHAR", "Cluster alias used by cell_to_cluster_membership"),
        C("species", "VARCHAR", "Species of the cluster (clusters are species-specific)"),
        C(
            "number_of_cells",
            "INTEGER",
            "number_of_cells as published (NULL where the release leaves it empty)",
        ),
        *(c for c in _level_columns() if c.name != "cluster_label"),
    ),
)

DONORS = Table(
    "donors",
    "Donors (donor.csv).",
    tuple(
        C(c, "DOUBLE" if c == "donor_age_value" else "VARCHAR", doc)
        for c, doc in [
            ("donor_label", "Donor key, e.g. H24.30.003"),
            ("donor_species", "NCBITaxon identifier of the donor's species"),
            ("species_scientific_name", "Scientific name of the donor's species"),
            ("species_genus", "Genus used as species in this store: Human, Macaque, Marmoset"),
            ("donor_sex", "Female or Male"),
            ("donor_age", "Age as written, e.g. 19 yrs"),
            ("donor_age_value", "Age, number"),
            ("donor_age_unit", "Unit of donor_age_value"),
            ("donor_nhash_id", "Donor identifier in the Allen nhash scheme"),
        ]
    ),
)

LIBRARIES = Table(
    "libraries",
    "Libraries (library.csv): one per barcoded sample, with the dissected region.",
    tuple(
        C(c, "VARCHAR", doc)
        for c, doc in [
            ("library_label", "Library key"),
            ("library_method", "Library method, e.g. 10xMultiome;GEX"),
            ("library_nhash_id", "Library identifier in the Allen nhash scheme"),
            ("barcoded_cell_sample_label", "Barcoded sample of the library"),
            ("enrichment_population", "FACS enrichment, e.g. 50% NeuN+, 35% OLIG2-, 15% OLIG2+"),
            ("cell_specimen_type", "Specimen type"),
            ("parcellation_term_identifier", "Region in the DHBA parcellation"),
            ("region_of_interest_name", "Region, full name"),
            ("region_of_interest_label", "Region, abbreviation"),
            ("anatomical_division_label", "Anatomical division of the region"),
            ("donor_label", "Donor of the library"),
            ("specimen_dissected_roi_label", "Dissected specimen"),
            ("specimen_dissected_roi_nhash_id", "Dissected specimen, nhash identifier"),
            ("slab_label", "Brain slab"),
            ("slab_nhash_id", "Brain slab, nhash identifier"),
        ]
    ),
)

VALUE_SETS = Table(
    "value_sets",
    "Display colors and orders of metadata values (value_sets.csv); key (field, label).",
    (
        C("label", "VARCHAR", "The value, e.g. Human or PuC"),
        C("table_name", "VARCHAR", "The release table the field belongs to (column 'table' in the CSV)"),
        C(
            "field",
            "VARCHAR",
            "The field: donor_sex, species_genus, species_scientific_name, region_of_interest_label",
        ),
        C("description", "VARCHAR", "Human-readable meaning of the value"),
        C("value_order", "INTEGER", "Display order (column 'order' in the CSV)"),
        C("external_identifier", "VARCHAR", "External identifier, e.g. NCBITaxon:9605 or DHBA:11538"),
        C("parent_label", "VARCHAR", "Parent value, where the field is hierarchical"),
        C("color_hex_triplet", "VARCHAR", "Display color, #rrggbb"),
    ),
)

ABBREVIATIONS = Table(
    "abbreviations",
    "Abbreviations used in term names (abbreviation_term.csv).",
    tuple(
        C(c, "VARCHAR", doc)
        for c, doc in [
            ("abbreviation_term", "The abbreviation, e.g. MSN"),
            ("abbreviation_meaning", "What it stands for"),
            ("abbreviation_type", "Kind: region, cell type, gene, neurotransmitter"),
            ("primary_identifier", "Identifier of what it stands for, where one exists"),
            ("secondary_identifier", "A second identifier, where one exists"),
        ]
    ),
)

TERM_ABBREVIATIONS = Table(
    "term_abbreviations",
    "Which abbreviations each term's name uses (cluster_annotation_to_abbreviation_map.csv).",
    (
        C("term_label", "VARCHAR", "Term label"),
        C("abbreviation_term", "VARCHAR", "Abbreviation used in the term's name"),
    ),
)

CELL_TOTALS = Table(
    "cell_totals",
    "A narrow copy of cells (species, cell_index, total_counts) that the expression view joins to derive "
    "log2_cpm: cheaper to scan than the wide cells table. (The build's per-species files of the same name "
    "hold two more columns, cell_label and genes_detected, which the cells table takes from them.)",
    (SPECIES_COL, CELL_INDEX, C("total_counts", "BIGINT", "Sum of the cell's raw counts over all genes")),
)

STORE_INFO = Table(
    "store_info",
    "Key/value facts about this store: where it was built, from what, with which tool. connect() compares "
    "store_path with where the catalog really is, to repair the expression views after a move.",
    (C("key", "VARCHAR", "Fact name"), C("value", "VARCHAR", "Fact value, as text")),
)

STORE_FILES = Table(
    "store_files",
    "Every data file of this build (expression, expression_by_cell, aggregates, tables), with the size and "
    "CRC-32 the build wrote: the views name these files one by one, and every reader checks them before "
    "answering (a missing, resized or changed file is an error naming it; docs/store.md, Guarantees).",
    (
        C("path", "VARCHAR", "The file, relative to the build's snapshot folder"),
        C("bytes", "BIGINT", "Its size in bytes"),
        C("crc32", "BIGINT", "CRC-32 (zlib's) of its bytes"),
    ),
)

LICENCE = Table(
    "licence",
    "The data's terms of use and how to cite the release, so a dashboard or an export carries them: the "
    "HMBA-BG release is licensed CC BY-NC 4.0 (attribution, non-commercial).",
    (
        C("key", "VARCHAR", "dataset, data_licence, data_licence_url or citation"),
        C("value", "VARCHAR", "Its text"),
    ),
)

EXPRESSION_COUNTS = Table(
    "expression_counts",
    "The stored non-zero counts without log2_cpm (no join): the cheapest read of a gene when the query "
    "joins cells itself. Filter on species and gene_index (or gene_bucket).",
    (
        SPECIES_COL,
        C("gene_bucket", "INTEGER", "Expression folder of the gene (genes.gene_bucket)"),
        GENE_INDEX,
        CELL_INDEX,
        C("raw_count", "INTEGER", "Raw UMI count (non-zero; absent rows are zeros)"),
    ),
    kind="view",
)
EXPRESSION_BY_CELL = Table(
    "expression_by_cell",
    "The same non-zero counts as expression_counts, sorted by cell in taxonomy order (cells.cell_rank), "
    "then gene: a term's cells are one range of rows. For all the genes of a selection of cells: join "
    "cells on (species, cell_rank) so that only the selection's row groups are read.",
    (
        SPECIES_COL,
        C("cell_bucket", "INTEGER", "Folder of the cell's range of cell_rank: cell_bucket=<KKKK>"),
        C("cell_rank", "INTEGER", "The cell's position in taxonomy order (cells.cell_rank)"),
        CELL_INDEX,
        GENE_INDEX,
        C("raw_count", "INTEGER", "Raw UMI count (non-zero; absent rows are zeros)"),
    ),
    kind="view",
)

EXPRESSION = Table(
    "expression",
    "Every non-zero count of every built species, one row per (species, gene, cell), from the Parquet store. "
    "Filter on species and gene_index (or gene_bucket) so only those files and row groups are read.",
    (
        SPECIES_COL,
        C("gene_bucket", "INTEGER", "Expression folder of the gene (genes.gene_bucket)"),
        GENE_INDEX,
        CELL_INDEX,
        C("raw_count", "INTEGER", "Raw UMI count (non-zero; absent rows are zeros)"),
        C(
            "log2_cpm",
            "DOUBLE",
            "log2(raw_count / cells.total_counts x 1e6 + 1): equals the release's log2 file",
        ),
    ),
    kind="view",
)

EXPRESSION_ANNOTATED = Table(
    "expression_annotated",
    "expression joined with gene symbols and the cell's labels, region, donor and taxonomy names: "
    "the view for "
    "ad hoc questions. Zeros are absent: divide sums by the cell count from cells for means.",
    (
        SPECIES_COL,
        GENE_INDEX,
        C("gene_identifier", "VARCHAR", "Gene identifier"),
        C("gene_symbol", "VARCHAR", "Gene symbol"),
        CELL_INDEX,
        C("cell_label", "VARCHAR", "Cell label"),
        C("donor_label", "VARCHAR", "Donor"),
        C("region_of_interest_label", "VARCHAR", "Region"),
        *(
            C(f"{LEVEL_PREFIX[lv]}_name", "VARCHAR", f"{_LEVEL_DOC[LEVEL_PREFIX[lv]]}: term name")
            for lv in R.LEVELS
        ),
        C("raw_count", "INTEGER", "Raw UMI count"),
        C("log2_cpm", "DOUBLE", "log2(CPM + 1)"),
    ),
    kind="view",
)

EXPRESSION_ANNOTATED_BY_CELL = Table(
    "expression_annotated_by_cell",
    "The rows and columns of expression_annotated, read from the cell-major files: the view for questions "
    "filtered on cells (a taxonomy term, a region, a donor, a list of cells) over every gene; only the "
    "selected cells' row groups are read. A question about a few genes reads expression_annotated.",
    EXPRESSION_ANNOTATED.columns,
    kind="view",
)

_SUM_COLUMNS = (
    C("n_cells", "BIGINT", "Cells in the group (the same in every row of the group): divide sums by it"),
    C(
        "sum_total_counts",
        "BIGINT",
        "Sum of the group's cells' total counts: sum_raw / sum_total_counts x 1e6 is the pseudobulk CPM",
    ),
    C("n_expressing", "BIGINT", "Cells of the group with a non-zero count of the gene (always > 0)"),
    C("sum_raw", "BIGINT", "Sum of the gene's raw counts over the group's cells"),
    C("sum_log2_cpm", "DOUBLE", "Sum of log2(CPM + 1) over the group's cells (zeros add nothing)"),
    C("sumsq_log2_cpm", "DOUBLE", "Sum of squares of log2(CPM + 1) over the group's cells"),
    C("n_cpm_gt_1", "BIGINT", "Cells with CPM > 1 (MapMyCells' gt1 statistic)"),
    C("n_cpm_ge_1", "BIGINT", "Cells with CPM >= 1 (MapMyCells' ge1 statistic)"),
)
_STATS_COLUMNS = (
    C("n_cells", "BIGINT", "Cells in the group"),
    C("n_expressing", "BIGINT", "Cells of the group with a non-zero count of the gene"),
    C("fraction_expressing", "DOUBLE", "n_expressing / n_cells"),
    C("mean_raw", "DOUBLE", "Mean raw count over the group's cells, zeros included"),
    C("mean_log2_cpm", "DOUBLE", "Mean log2(CPM + 1) over the group's cells, zeros included"),
    C(
        "var_log2_cpm",
        "DOUBLE",
        "Sample variance (n - 1) of log2(CPM + 1) over the group's cells, zeros included; NULL for one cell",
    ),
    C("pseudobulk_cpm", "DOUBLE", "sum_raw / sum_total_counts x 1e6: the group's pooled counts per million"),
    C("fraction_cpm_gt_1", "DOUBLE", "n_cpm_gt_1 / n_cells"),
)
_GENE_KEY = (
    SPECIES_COL,
    C("gene_bucket", "INTEGER", "Expression folder of the gene (genes.gene_bucket)"),
    GENE_INDEX,
)
_STATS_NOTE = (
    " Only (group, gene) pairs with at least one expressing cell have a row: a missing row means zero."
)

TERM_GENE_SUMS = Table(
    "term_gene_sums",
    "Additive statistics per species x taxonomy term (all five levels) x gene, precomputed by the build "
    "over the cells with a cluster; a parent term's row is the sum of its children's." + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("level", "VARCHAR", "Taxonomy level of the term: Neighborhood, Class, Subclass, Group or Cluster"),
        C("term_label", "VARCHAR", "Taxonomy term (taxonomy_terms.term_label)"),
        *_SUM_COLUMNS,
    ),
    kind="view",
)
REGION_GROUP_GENE_SUMS = Table(
    "region_group_gene_sums",
    "Additive statistics per species x Group x dissected region x gene, precomputed by the build."
    + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("group_label", "VARCHAR", "Taxonomy Group (taxonomy_terms.term_label)"),
        C("region_of_interest_label", "VARCHAR", "Dissected region (cells.region_of_interest_label)"),
        *_SUM_COLUMNS,
    ),
    kind="view",
)
DONOR_GROUP_GENE_SUMS = Table(
    "donor_group_gene_sums",
    "Additive statistics per species x Group x donor x gene, precomputed by the build: the pseudobulk "
    "table." + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("group_label", "VARCHAR", "Taxonomy Group (taxonomy_terms.term_label)"),
        C("donor_label", "VARCHAR", "Donor (donors.donor_label)"),
        *_SUM_COLUMNS,
    ),
    kind="view",
)
TERM_GENE_STATS = Table(
    "term_gene_stats",
    "term_gene_sums as means, variances and fractions, with the gene symbol and term name." + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("gene_symbol", "VARCHAR", "Gene symbol"),
        C("level", "VARCHAR", "Taxonomy level"),
        C("term_label", "VARCHAR", "Taxonomy term label"),
        C("term_name", "VARCHAR", "Taxonomy term name"),
        C("term_order", "INTEGER", "Taxonomy order of the term within its level"),
        *_STATS_COLUMNS,
    ),
    kind="view",
)
TERM_GENE_MEANS = Table(
    "term_gene_means",
    "Every gene x every taxonomy term of each species (a species' own Clusters only), zeros filled: the "
    'view for "mean expression of X per term". A term whose cells do not express the gene has zeros '
    "(term_gene_stats "
    "has no row); a term without cells in the species has has_cells = false and NULL means.",
    (
        *_GENE_KEY,
        C("gene_identifier", "VARCHAR", "The release's gene key (genes.gene_identifier)"),
        C("gene_symbol", "VARCHAR", "Gene symbol; not unique, NULL where the release has none"),
        C(
            "gene_label",
            "VARCHAR",
            "Unique within a species, never NULL: the symbol; 'SYMBOL (identifier)' where several genes "
            "share the symbol; the identifier where there is none. Group by it, not by gene_symbol",
        ),
        C("level", "VARCHAR", "Taxonomy level"),
        C("level_order", "INTEGER", "0 (Neighborhood) to 4 (Cluster)"),
        C("term_label", "VARCHAR", "Taxonomy term label"),
        C("term_name", "VARCHAR", "Taxonomy term name"),
        C("term_order", "INTEGER", "Taxonomy order of the term within its level"),
        C("has_cells", "BOOLEAN", "Whether the species has cells of the term; the means are NULL where not"),
        C("n_cells", "BIGINT", "Cells of the species in the term (0 where none)"),
        C("n_expressing", "BIGINT", "Cells of the term with a non-zero count of the gene (0 where none)"),
        C("fraction_expressing", "DOUBLE", "n_expressing / n_cells; NULL without cells"),
        C(
            "mean_log2_cpm_all_cells",
            "DOUBLE",
            "Mean log2(CPM + 1) over all the term's cells, zeros included (what a dot plot's color shows); "
            "NULL without cells",
        ),
        C(
            "mean_log2_cpm_expressing",
            "DOUBLE",
            "Mean log2(CPM + 1) over the expressing cells only (what avg(log2_cpm) over expression_annotated "
            "gives); NULL where no cell expresses the gene",
        ),
        C("mean_raw_all_cells", "DOUBLE", "Mean raw count over all the term's cells, zeros included"),
        C(
            "pseudobulk_cpm",
            "DOUBLE",
            "The term's pooled counts per million: sum of raw / sum of total counts x 1e6",
        ),
    ),
    kind="view",
)
REGION_GROUP_GENE_STATS = Table(
    "region_group_gene_stats",
    "region_group_gene_sums as means, variances and fractions, with names." + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("gene_symbol", "VARCHAR", "Gene symbol"),
        C("group_label", "VARCHAR", "Taxonomy Group label"),
        C("group_name", "VARCHAR", "Taxonomy Group name"),
        C("region_of_interest_label", "VARCHAR", "Dissected region"),
        *_STATS_COLUMNS,
    ),
    kind="view",
)
DONOR_GROUP_GENE_STATS = Table(
    "donor_group_gene_stats",
    "donor_group_gene_sums as means, variances and fractions, with names: per-donor pseudobulk."
    + _STATS_NOTE,
    (
        *_GENE_KEY,
        C("gene_symbol", "VARCHAR", "Gene symbol"),
        C("group_label", "VARCHAR", "Taxonomy Group label"),
        C("group_name", "VARCHAR", "Taxonomy Group name"),
        C("donor_label", "VARCHAR", "Donor"),
        *_STATS_COLUMNS,
    ),
    kind="view",
)
TERM_CELL_COUNTS = Table(
    "term_cell_counts",
    "Cells per species x taxonomy term at every level (cells with a cluster): the full list of groups "
    "that the statistics tables' rows are taken from, for filling in zeros.",
    (
        SPECIES_COL,
        C("level", "VARCHAR", "Taxonomy level"),
        C("level_order", "INTEGER", "0 (Neighborhood) to 4 (Cluster)"),
        C("term_label", "VARCHAR", "Taxonomy term label"),
        C("term_name", "VARCHAR", "Taxonomy term name"),
        C("term_order", "INTEGER", "Taxonomy order of the term within its level"),
        C("color", "VARCHAR", "The taxonomy's color for the term"),
        C("n_cells", "BIGINT", "Cells of the species in the term"),
        C("sum_total_counts", "BIGINT", "Sum of those cells' total counts"),
    ),
)

TABLES = (
    CELLS,
    GENES,
    TAXONOMY_LEVELS,
    TAXONOMY_TERMS,
    CLUSTERS,
    DONORS,
    LIBRARIES,
    VALUE_SETS,
    ABBREVIATIONS,
    TERM_ABBREVIATIONS,
    CELL_TOTALS,
    TERM_CELL_COUNTS,
    STORE_INFO,
    STORE_FILES,
    LICENCE,
)
# Tables the metadata stage writes as Parquet under tables/; the catalog adds the others.
PARQUET_TABLES = tuple(
    t
    for t in TABLES
    if t.name not in ("cell_totals", "term_cell_counts", "store_info", "store_files", "licence")
)
VIEWS = (
    EXPRESSION_COUNTS,
    EXPRESSION_BY_CELL,
    EXPRESSION,
    EXPRESSION_ANNOTATED,
    EXPRESSION_ANNOTATED_BY_CELL,
    TERM_GENE_SUMS,
    REGION_GROUP_GENE_SUMS,
    DONOR_GROUP_GENE_SUMS,
    TERM_GENE_STATS,
    TERM_GENE_MEANS,
    REGION_GROUP_GENE_STATS,
    DONOR_GROUP_GENE_STATS,
)
ALL = TABLES + VIEWS


def data_dictionary() -> str:
    """The manual's data dictionary (docs/data-dictionary.md), from the declarations above (a test keeps
    them equal)."""
    out = []
    for t in ALL:
        out.append(
            f"#### `{t.name}` ({t.kind})\n\n{t.description}\n\n| column | type | description |\n|---|---|---|"
        )
        out += [f"| `{c.name}` | {c.type} | {c.description} |" for c in t.columns]
        out.append("")
    return "\n".join(out)


def write_dictionary(path: str) -> None:
    """Replace the generated block of a Markdown page (between the data-dictionary markers)."""
    from pathlib import Path

    page = Path(path)
    text = page.read_text()
    head, rest = text.split("<!-- data-dictionary:start -->", 1)
    _, tail = rest.split("<!-- data-dictionary:end -->", 1)
    start, end = "<!-- data-dictionary:start -->", "<!-- data-dictionary:end -->"
    page.write_text(f"{head}{start}\n{data_dictionary().strip()}\n{end}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_dictionary(sys.argv[2])
    else:
        print(data_dictionary())


# --- The Arrow schemas of the files the build writes, declared once: the writers use them, verify and the
# metadata stage read them. (The catalog's tables and views above are the SQL side of the same files.)

# expression/species=S/gene_bucket=K/part-0.parquet, sorted by (gene_index, cell_index)
EXPRESSION_FILE = pa.schema(
    [("gene_index", pa.int32()), ("cell_index", pa.int32()), ("raw_count", pa.int32())]
)
# expression_by_cell/species=S/cell_bucket=K/part-0.parquet, sorted by (cell_rank, gene_index)
EXPRESSION_BY_CELL_FILE = pa.schema(
    [
        ("cell_rank", pa.int32()),
        ("cell_index", pa.int32()),
        ("gene_index", pa.int32()),
        ("raw_count", pa.int32()),
    ]
)
# tables/cell_totals/<Species>.parquet: every matrix cell, in matrix order, with the totals the scatter took
CELL_TOTALS_FILE = pa.schema(
    [
        ("species", pa.dictionary(pa.int32(), pa.string())),
        ("cell_index", pa.int32()),
        ("cell_label", pa.string()),
        ("total_counts", pa.int64()),
        ("genes_detected", pa.int32()),
    ]
)
# tables/gene_buckets/<Species>.parquet: every matrix gene, in matrix order, with its bucket
GENE_BUCKETS_FILE = pa.schema(
    [
        ("species", pa.dictionary(pa.int32(), pa.string())),
        ("gene_index", pa.int32()),
        ("gene_identifier", pa.string()),
        ("gene_symbol", pa.string()),
        ("gene_bucket", pa.int32()),
    ]
)
