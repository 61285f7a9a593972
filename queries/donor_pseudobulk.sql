-- name: donor_pseudobulk
-- title: Donor-level pseudobulk of genes per Group
-- description: For one species: each donor's pooled counts per million (sum of the gene's counts over
-- the donor's cells of a Group / sum of those cells' total counts x 1e6) for every Group with at least
-- min_cells of the donor's cells, with the donor's sex and age: the table for replicate-aware comparisons.
-- From the precomputed donor x Group statistics.
-- param species species = Human: Species
-- param genes genes = DRD1,DRD2: Gene symbols
-- param min_cells int = 20: Smallest donor x Group pool
-- plot: heatmap x=donor_label y=group_name value=log2_pseudobulk_cpm facet=gene_symbol
-- example: genes=PLP1 min_cells=25
with pools as (
    select
        species,
        group_label,
        group_name,
        any_value(group_order) as group_order,
        donor_label,
        any_value(donor_sex) as donor_sex,
        any_value(donor_age) as donor_age,
        count(*) as n_cells,
        sum(total_counts) as total_counts
    from cells
    where species = $species and group_label is not null
    group by all
    having count(*) >= $min_cells
),

stats as materialized (
    select species, gene_index, group_label, donor_label, pseudobulk_cpm, fraction_expressing
    from donor_group_gene_stats
    where species = $species and gene_index in $gene_indexes
),

final as (
    select
        pools.group_name,
        pools.donor_label,
        pools.donor_sex,
        pools.donor_age,
        genes.gene_symbol,
        coalesce(stats.pseudobulk_cpm, 0) as pseudobulk_cpm,
        log2(coalesce(stats.pseudobulk_cpm, 0) + 1) as log2_pseudobulk_cpm,
        coalesce(stats.fraction_expressing, 0) as fraction_expressing,
        pools.n_cells,
        pools.group_order,
        genes.gene_order
    from pools
    join selected_genes as genes
        on genes.species = pools.species
    left join stats
        on stats.species = pools.species
        and stats.gene_index = genes.gene_index
        and stats.group_label = pools.group_label
        and stats.donor_label = pools.donor_label
)

select group_name, donor_label, donor_sex, donor_age, gene_symbol, pseudobulk_cpm, log2_pseudobulk_cpm,
    fraction_expressing, n_cells
from final
order by gene_order, group_order, donor_label
