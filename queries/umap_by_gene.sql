-- name: umap_by_gene
-- title: UMAP coordinates of cells coloured by one gene
-- description: Each cell's UMAP position with its log2(CPM+1) of one gene (0 where not detected) and its
-- Group, for one species; at most max_cells cells, a fixed pseudo-random subset when there are more. Only
-- cells with UMAP coordinates are drawn: the release gives them to cells with a cluster (about two thirds).
-- param species species = Human: Species
-- param gene gene = DRD1: Gene symbol
-- param max_cells int = 100000: Most cells returned
-- plot: scatter x=x y=y color=log2_cpm
-- example: gene=PLP1 max_cells=5
with gene_rows as (
    select cell_index, log2_cpm
    from expression
    where species = $species and gene_bucket in $gene_buckets and gene_index in $gene_indexes
),

final as (
    select
        cells.cell_label,
        cells.x,
        cells.y,
        coalesce(gene_rows.log2_cpm, 0) as log2_cpm,
        cells.group_name,
        cells.cell_index
    from cells
    left join gene_rows using (cell_index)
    where cells.species = $species and cells.x is not null
)

select cell_label, x, y, log2_cpm, group_name
from final
-- A multiplicative hash (a bijection on 32-bit integers): the same subset on every engine.
order by (cell_index * 2654435761) % 4294967296
limit $max_cells
