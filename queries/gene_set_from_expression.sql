-- name: gene_set_from_expression
-- title: A gene set per taxonomy term, computed from the expression store
-- description: The same numbers as gene_set_across_species, computed from the stored counts rather than
-- the precomputed statistics: reads only the genes' folders and row groups, then averages log2(CPM+1)
-- over each term's cells (zeros included). A check on the statistics, and the template for questions
-- the statistics do not answer (other cell subsets, other normalisations).
-- param species species_list = all: Species, comma-separated, or all
-- param genes genes = SLC17A6,SLC32A1,PTPRC,PLP1,AQP4,DRD1,DRD2: Gene symbols
-- param level level = Group: Taxonomy level
-- plot: heatmap x=gene_symbol y=term_name value=mean_log2_cpm facet=species
-- example: genes=DRD1,PLP1 level=Class
with cell_terms as (
    select
        species,
        cell_index,
        case $level
            when 'Neighborhood' then neighborhood_label
            when 'Class' then class_label
            when 'Subclass' then subclass_label
            when 'Group' then group_label
            else cluster_label
        end as term_label
    from cells
    where species in $species
),

gene_rows as (
    select species, gene_index, cell_index, log2_cpm
    from expression
    where species in $species and gene_bucket in $gene_buckets and gene_index in $gene_indexes
),

sums as (
    select gene_rows.species, gene_rows.gene_index, cell_terms.term_label, sum(gene_rows.log2_cpm) as sum_log2_cpm,
        count(*) as n_expressing
    from gene_rows
    join cell_terms
        on cell_terms.species = gene_rows.species
        and cell_terms.cell_index = gene_rows.cell_index
    where cell_terms.term_label is not null
    group by all
),

terms as (
    select species, term_label, term_name, term_order, n_cells
    from term_cell_counts
    where species in $species and level = $level
),

final as (
    select
        terms.species,
        terms.term_name,
        genes.gene_symbol,
        coalesce(sums.sum_log2_cpm, 0) / terms.n_cells as mean_log2_cpm,
        coalesce(sums.n_expressing, 0) / terms.n_cells as fraction_expressing,
        terms.n_cells,
        terms.term_order,
        genes.gene_order
    from terms
    join selected_genes as genes
        on genes.species = terms.species
    left join sums
        on sums.species = genes.species
        and sums.gene_index = genes.gene_index
        and sums.term_label = terms.term_label
)

select species, term_name, gene_symbol, mean_log2_cpm, fraction_expressing, n_cells
from final
order by term_order, species, gene_order
