-- name: gene_by_region
-- title: One gene across dissected regions, per Group
-- description: Mean log2(CPM+1), fraction expressing and pseudobulk CPM of one gene in each Group of
-- each dissected region, for one species, from the precomputed region x Group statistics (Group x region
-- pairs with at least min_cells cells; 0 where no cell expresses the gene). Regions in display order,
-- Groups in taxonomy order.
-- param species species = Human: Species
-- param gene gene = DRD1: Gene symbol
-- param min_cells int = 10: Smallest Group x region shown
-- plot: heatmap x=region_of_interest_label y=group_name value=mean_log2_cpm
-- example: gene=PLP1 min_cells=15
with pairs as (
    select
        species,
        group_label,
        group_name,
        any_value(group_order) as group_order,
        region_of_interest_label,
        any_value(region_order) as region_order,
        count(*) as n_cells
    from cells
    where species = $species and group_label is not null
    group by all
    having count(*) >= $min_cells
),

stats as materialized (
    select species, gene_index, group_label, region_of_interest_label, mean_log2_cpm,
        fraction_expressing, pseudobulk_cpm
    from region_group_gene_stats
    where species = $species and gene_index in $gene_indexes
),

final as (
    select
        pairs.region_of_interest_label,
        pairs.group_name,
        genes.gene_symbol,
        coalesce(stats.mean_log2_cpm, 0) as mean_log2_cpm,
        coalesce(stats.fraction_expressing, 0) as fraction_expressing,
        coalesce(stats.pseudobulk_cpm, 0) as pseudobulk_cpm,
        pairs.n_cells,
        pairs.region_order,
        pairs.group_order
    from pairs
    join selected_genes as genes
        on genes.species = pairs.species
    left join stats
        on stats.species = pairs.species
        and stats.gene_index = genes.gene_index
        and stats.group_label = pairs.group_label
        and stats.region_of_interest_label = pairs.region_of_interest_label
)

select region_of_interest_label, group_name, gene_symbol, mean_log2_cpm, fraction_expressing,
    pseudobulk_cpm, n_cells
from final
order by group_order, region_order
