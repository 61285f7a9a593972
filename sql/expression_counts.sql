-- expression_counts: the raw non-zero counts as stored, without log2_cpm (no join): the cheapest way to
-- read a gene when you bring your own cell table, e.g. `join cells using (species, cell_index)`.
-- {store} is replaced by the store's absolute path when the catalog is written.
create or replace view expression_counts as
select species, gene_bucket, gene_index, cell_index, raw_count
from read_parquet(
    '{store}/expression/*/*/*.parquet',
    hive_partitioning = true,
    hive_types = {'species': varchar, 'gene_bucket': integer}
)
