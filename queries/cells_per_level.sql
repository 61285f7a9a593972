-- name: cells_per_level
-- title: Cells per taxonomy term, per species
-- description: How many cells of each species fall in each term of a taxonomy level, and what share of
-- the species' cells with a cluster that is; terms in taxonomy order with the taxonomy's colors.
-- param species species_list = all: Species, comma-separated, or all
-- param level level = Class: Taxonomy level
-- plot: bar x=term_name y=n_cells facet=species color=color
-- example: species=Human,Marmoset level=Neighborhood
with counts as (
    select species, term_name, term_order, color, n_cells
    from term_cell_counts
    where species in $species and level = $level
),

final as (
    select
        species,
        term_name,
        n_cells,
        n_cells / sum(n_cells) over (partition by species) as share_of_species,
        color,
        term_order
    from counts
)

select species, term_name, n_cells, share_of_species, color
from final
order by term_order, species
