-- expression: every non-zero count of every built species, with log2(CPM + 1).
-- One row per (species, gene, cell); zeros are absent. The Parquet files are partitioned by species and
-- gene_bucket and sorted by (gene_index, cell_index): a filter on species and gene_index reads only that
-- gene's row groups. {store} is replaced by the store's absolute path when the catalog is written.
create or replace view expression as
with counts as (
    select species, gene_bucket, gene_index, cell_index, raw_count
    from read_parquet(
        '{store}/expression/*/*/*.parquet',
        hive_partitioning = true,
        hive_types = {'species': varchar, 'gene_bucket': integer}
    )
),

totals as (
    select species, cell_index, total_counts from cell_totals
),

final as (
    select
        counts.species,
        counts.gene_bucket,
        counts.gene_index,
        counts.cell_index,
        counts.raw_count,
        log2(counts.raw_count / totals.total_counts * 1e6 + 1) as log2_cpm
    from counts
    join totals
        on totals.species = counts.species
        and totals.cell_index = counts.cell_index
)

select * from final
