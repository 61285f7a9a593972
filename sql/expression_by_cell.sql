-- expression_by_cell: the same non-zeros as expression_counts, sorted by cell in taxonomy order (cells.cell_rank):
-- the cells of a taxonomy term are one range of rows, so join on (species, cell_rank) and DuckDB reads only
-- that range's row groups. For questions about a selection of cells (all their genes); a gene's question reads
-- expression_counts instead.
-- {store} is replaced by the store's absolute path when the catalog is written.
create or replace view expression_by_cell as
select species, cell_bucket, cell_rank, cell_index, gene_index, raw_count
from read_parquet(
    '{store}/expression_by_cell/*/*/*.parquet',
    hive_partitioning = true,
    hive_types = {'species': varchar, 'cell_bucket': integer}
)
