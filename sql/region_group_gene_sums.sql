-- region_group_gene_sums: additive statistics per species x Group x dissected region x gene,
-- written by the build's statistics step.
-- Only groups with at least one cell expressing the gene have a row; every row carries the group's
-- n_cells, so means include the zeros. One file per species (species=S/), sorted by gene_index: filter
-- on species and gene_index to read only those genes' row groups.
-- {store} is replaced by the store's absolute path when the catalog is written.
create or replace view region_group_gene_sums as
select
    species,
    gene_bucket,
    gene_index,
    group_label, region_of_interest_label,
    n_cells,
    sum_total_counts,
    n_expressing,
    sum_raw,
    sum_log2_cpm,
    sumsq_log2_cpm,
    n_cpm_gt_1,
    n_cpm_ge_1
from read_parquet(
    '{store}/aggregates/region_group_gene_sums/*/*.parquet',
    hive_partitioning = true,
    hive_types = {'species': varchar}
)
