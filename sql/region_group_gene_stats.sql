-- region_group_gene_stats: region_group_gene_sums as means, variances and fractions, with gene symbols and
-- Group names.
create or replace view region_group_gene_stats as
with sums as (
    select * from region_group_gene_sums
),

final as (
    select
        sums.species,
        sums.gene_bucket,
        sums.gene_index,
        genes.gene_symbol,
        sums.group_label,
        terms.term_name as group_name,
        sums.region_of_interest_label,
        sums.n_cells,
        sums.n_expressing,
        sums.n_expressing / sums.n_cells as fraction_expressing,
        sums.sum_raw / sums.n_cells as mean_raw,
        sums.sum_log2_cpm / sums.n_cells as mean_log2_cpm,
        case when sums.n_cells > 1 then
            greatest(0, (sums.sumsq_log2_cpm - sums.sum_log2_cpm ^ 2 / sums.n_cells) / (sums.n_cells - 1))
        end as var_log2_cpm,
        sums.sum_raw / sums.sum_total_counts * 1e6 as pseudobulk_cpm,
        sums.n_cpm_gt_1 / sums.n_cells as fraction_cpm_gt_1
    from sums
    join genes
        on genes.species = sums.species
        and genes.gene_index = sums.gene_index
    join taxonomy_terms as terms
        on terms.term_label = sums.group_label
)

select * from final
