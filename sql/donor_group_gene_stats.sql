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
    from sums
    join genes
        on genes.species = sums.species
        and genes.gene_index = sums.gene_index
    join taxonomy_terms as terms
        on terms.term_label = sums.group_label
)

select * from final
