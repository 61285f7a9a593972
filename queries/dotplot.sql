-- name: dotplot
-- title: Dotplot of a gene set per taxonomy term (mean scaled per gene, fraction expressing)
-- description: For a level and one or more species: each gene's mean log2(CPM+1) per term scaled to the
-- gene's highest term in that species (0 to 1, so genes of different levels compare), and the fraction of
-- the term's cells expressing it, from the precomputed statistics. Terms with fewer than min_cells cells
-- are left out. Several species side by side at the Group level, the level their taxonomy shares. With
-- within, only the terms under one term of the level above (a drill-down, one level at a time).
-- param species species_list = Human: Species, comma-separated, or all
-- param genes genes = DRD1,DRD2,PPP1R1B,PENK,TAC1,SST,PVALB,CHAT,TH,SLC6A3: Gene symbols
-- param level level = Subclass: Taxonomy level
-- param min_cells int = 10: Smallest term shown
-- param within parent_term = all: Only the terms under this term of the level above, or all
-- plot: dotplot x=gene_symbol y=term_name color=scaled_mean size=fraction_expressing facet=species
-- example: genes=DRD1,DRD2,PLP1,AQP4 level=Class
with terms as (
    select counts.species, counts.term_label, counts.term_name, counts.term_order, counts.n_cells
    from term_cell_counts as counts
    join taxonomy_terms as tax
        on tax.term_label = counts.term_label
    where counts.species in $species and counts.level = $level and counts.n_cells >= $min_cells
        and (tax.parent_term_label = $within or $within = 'all')
),

stats as materialized (  -- the measures of term_gene_stats (sql/shared/gene_stats_measures.sql)
    select species, gene_index, term_label, mean_log2_cpm, fraction_expressing
    from term_gene_stats
    where species in $species and level = $level and gene_index in $gene_indexes
),

joined as (
    select
        terms.species,
        terms.term_name,
        terms.term_order,
        genes.gene_symbol,
        genes.gene_order,
        coalesce(stats.mean_log2_cpm, 0) as mean_log2_cpm,
        coalesce(stats.fraction_expressing, 0) as fraction_expressing,
        terms.n_cells
    from terms
    join selected_genes as genes
        on genes.species = terms.species
    left join stats
        on stats.species = genes.species
        and stats.gene_index = genes.gene_index
        and stats.term_label = terms.term_label
),

final as (
    select
        *,
        coalesce(
            mean_log2_cpm / nullif(max(mean_log2_cpm) over (partition by species, gene_symbol), 0), 0
        ) as scaled_mean
    from joined
)

select species, term_name, gene_symbol, scaled_mean, mean_log2_cpm, fraction_expressing, n_cells
from final
order by term_order, species, gene_order
