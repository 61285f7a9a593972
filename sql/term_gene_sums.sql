-- term_gene_sums: additive statistics per species x taxonomy term (all five levels) x gene,
-- written by the build's statistics step.
-- Only groups with at least one cell expressing the gene have a row; every row carries the group's
-- n_cells, so means include the zeros. One file per species and level (species=S/level=L/), sorted by
-- gene_index: filter on species, level and gene_index to read only those genes' row groups.
-- {store} is replaced by the store's absolute path when the catalog is written.
create or replace view term_gene_sums as
select
    species,
    gene_bucket,
    gene_index,
    level, term_label,
    n_cells,
    sum_total_counts,
    n_expressing,
    sum_raw,
    sum_log2_cpm,
    sumsq_log2_cpm,
    n_cpm_gt_1,
    n_cpm_ge_1
from read_parquet(
    '{store}/aggregates/term_gene_sums/*/*/*.parquet',
    hive_partitioning = true,
    hive_types = {'species': varchar, 'level': varchar}
)
