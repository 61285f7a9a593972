-- expression: every non-zero count of every built species, with log2(CPM + 1).
-- One row per (species, gene, cell); zeros are absent. The Parquet files are partitioned by species and
-- gene_bucket and sorted by (gene_index, cell_index): a filter on species and gene_index reads only that
-- gene's row groups.
create or replace view expression as
with totals as (
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
    from expression_counts as counts
    join totals
        on totals.species = counts.species
        and totals.cell_index = counts.cell_index
)

select * from final
