-- name: gene_set_by_level
-- title: A gene set across the terms of a taxonomy level (heatmap)
-- description: Mean log2(CPM+1) and fraction of expressing cells of each gene in every term of one
-- taxonomy level, for one species, from the precomputed statistics (terms without an expressing cell
-- show 0). Rows in taxonomy order, genes in the order given.
-- param species species = Human: Species
-- param genes genes = SLC17A6,SLC32A1,PTPRC,PLP1,AQP4,DRD1,DRD2: Gene symbols
-- param level level = Group: Taxonomy level
-- plot: heatmap x=gene_symbol y=term_name value=mean_log2_cpm
-- example: genes=DRD1,DRD2,PLP1 level=Class
with terms as (
    select species, term_label, term_name, term_order, n_cells
    from term_cell_counts
    where species = $species and level = $level
),

stats as materialized (  -- the measures of term_gene_stats (sql/shared/gene_stats_measures.sql)
    select species, gene_index, term_label, mean_log2_cpm, fraction_expressing
    from term_gene_stats
    where species = $species and level = $level and gene_index in $gene_indexes
),

final as (
    select
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

select term_name, gene_symbol, mean_log2_cpm, fraction_expressing, n_cells
from final
order by term_order, gene_order
