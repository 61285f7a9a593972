-- term_gene_stats: term_gene_sums as means, variances and fractions, with gene symbols and term names.
-- Zeros are counted through n_cells: mean = sum / n_cells, variance from the sum of squares.
create or replace view term_gene_stats as
with sums as (
    select * from term_gene_sums
),

final as (
    select
        sums.species,
        sums.gene_bucket,
        sums.gene_index,
        genes.gene_symbol,
        sums.level,
        sums.term_label,
        terms.term_name,
        terms.term_order,
        {gene_stats_measures}
    from sums  -- left joins: see the note at the end
    left join genes
        on genes.species = sums.species
        and genes.gene_index = sums.gene_index
    left join taxonomy_terms as terms
        on terms.term_label = sums.term_label
)

select * from final

-- Left joins, where every row of sums has its gene and its term (the build writes no other row, verify
-- checks it): the same rows as inner joins, but DuckDB pushes no filter built from genes or
-- taxonomy_terms into the Parquet scan of sums, which cost a 10-gene dotplot 2x on the full Human store
-- (22.8 -> 13.8 ms with the named queries' materialized stats; docs/benchmarks.md). A filter on
-- gene_symbol still makes them inner joins, and prunes sums by gene as before.
