-- expression_annotated_by_cell: the rows and columns of expression_annotated, read from the cell-major
-- files (expression_by_cell): for questions about cells (a taxonomy term, a region, a donor, a list of
-- cells) that want every gene. The files are sorted by cells.cell_rank (taxonomy order), and the join to
-- cells is on (species, cell_rank): a filter on cells becomes a range of cell_rank that DuckDB pushes into
-- the Parquet scan, so only those cells' row groups are read. A question about a few genes reads
-- expression_annotated instead (sorted by gene). hmba-db's own SQL entry points choose for you
-- (docs/sql.md, "Which view answers which question").
create or replace view expression_annotated_by_cell as
with final as (
    select
        e.species,
        e.gene_index,
        g.gene_identifier,
        g.gene_symbol,
        e.cell_index,
        c.cell_label,
        c.donor_label,
        c.region_of_interest_label,
        c.neighborhood_name,
        c.class_name,
        c.subclass_name,
        c.group_name,
        c.cluster_name,
        e.raw_count,
        log2(e.raw_count / c.total_counts * 1e6 + 1) as log2_cpm
    from expression_by_cell e
    join cells c
        on c.species = e.species
        and c.cell_rank = e.cell_rank
    join genes g
        on g.species = e.species
        and g.gene_index = e.gene_index
)

select * from final
