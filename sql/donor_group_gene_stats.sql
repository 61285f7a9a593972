-- donor_group_gene_stats: donor_group_gene_sums as means, variances and fractions, with gene symbols and
-- Group names. pseudobulk_cpm is the per-donor pseudobulk of each Group.
create or replace view donor_group_gene_stats as
with sums as (
    select * from donor_group_gene_sums
),

final as (
    select
        sums.species,
        sums.gene_bucket,
        sums.gene_index,
        genes.gene_symbol,
        sums.group_label,
        terms.term_name as group_name,
        sums.donor_label,
        {gene_stats_measures}
    from sums  -- left joins: see the note at the end
    left join genes
        on genes.species = sums.species
        and genes.gene_index = sums.gene_index
    left join taxonomy_terms as terms
        on terms.term_label = sums.group_label
)

select * from final

-- Left joins, where every row of sums has its gene and its term (the build writes no other row, verify
-- checks it): the same rows as inner joins, but DuckDB pushes no filter built from genes or
-- taxonomy_terms into the Parquet scan of sums, which cost a 10-gene dotplot 2x on the full Human store
-- (22.8 -> 13.8 ms with the named queries' materialized stats; docs/benchmarks.md). A filter on
-- gene_symbol still makes them inner joins, and prunes sums by gene as before.
