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
    from sums
    join genes
        on genes.species = sums.species
        and genes.gene_index = sums.gene_index
    join taxonomy_terms as terms
        on terms.term_label = sums.term_label
)

select * from final
