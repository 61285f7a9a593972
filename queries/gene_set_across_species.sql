-- name: gene_set_across_species
-- title: A gene set per Group, side by side across species
-- description: Mean log2(CPM+1) and fraction expressing of each gene in each term of a level (Group by
-- default: the finest level shared by the three species), one column block per species, from the
-- precomputed statistics. A gene missing from a species' annotation is left out of that species.
-- param species species_list = all: Species, comma-separated, or all
-- param genes genes = SLC17A6,SLC32A1,PTPRC,PLP1,AQP4,DRD1,DRD2: Gene symbols
-- param level level = Group: Taxonomy level
-- plot: heatmap x=gene_symbol y=term_name value=mean_log2_cpm facet=species
-- example: genes=DRD1,PLP1 level=Class
with terms as (
    select species, term_label, term_name, term_order, n_cells
    from term_cell_counts
    where species in $species and level = $level
),

stats as materialized (  -- the measures of term_gene_stats (sql/shared/gene_stats_measures.sql)
    select species, gene_index, term_label, mean_log2_cpm, fraction_expressing
    from term_gene_stats
    where species in $species and level = $level and gene_index in $gene_indexes
),

final as (
    select
        terms.species,
        terms.term_name,
        genes.gene_symbol,
        coalesce(stats.mean_log2_cpm, 0) as mean_log2_cpm,
        coalesce(stats.fraction_expressing, 0) as fraction_expressing,
        terms.n_cells,
        terms.term_order,
        genes.gene_order
    from terms
    join selected_genes as genes
        on genes.species = terms.species
    left join stats
        on stats.species = genes.species
        and stats.gene_index = genes.gene_index
        and stats.term_label = terms.term_label
)

select species, term_name, gene_symbol, mean_log2_cpm, fraction_expressing, n_cells
from final
order by term_order, species, gene_order
