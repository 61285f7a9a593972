-- name: markers
-- title: Top marker genes of a taxonomy term against the rest of its level
-- description: For every gene of one species: mean log2(CPM+1) in the term's cells and in all other cells
-- with a term at that level, their difference (log2 fold change), the fractions expressing, and Welch's t
-- statistic from the precomputed sums and sums of squares. A gene passes when at least min_fraction of
-- the term's cells express it, at most max_rest_fraction of the other cells do (0.5 by default, so genes
-- expressed nearly everywhere do not top the list; pass max_rest_fraction=1 for no limit), and its log2
-- fold change is at least min_log2fc; the n with the largest t are returned.
-- param species species = Human: Species
-- param level level = Group: Taxonomy level of the term
-- param term term = STRd D1 Matrix MSN: Taxonomy term, by name or label
-- param n int = 20: How many genes
-- param min_fraction float = 0.25: Smallest fraction of the term's cells expressing the gene
-- param max_rest_fraction float = 0.5: Largest fraction of the other cells expressing the gene
-- param min_log2fc float = 1.0: Smallest log2 fold change
-- plot: bar x=gene_symbol y=t_statistic
-- example: level=Subclass term=Astrocyte n=8
with sizes as (
    select
        sum(n_cells) filter (where term_label = $term)::bigint as n_in,
        sum(n_cells) filter (where term_label <> $term)::bigint as n_rest
    from term_cell_counts
    where species = $species and level = $level
),

level_sums as (
    select
        gene_index,
        sum(n_expressing) as n_expressing,
        sum(sum_log2_cpm) as sum_log2_cpm,
        sum(sumsq_log2_cpm) as sumsq_log2_cpm
    from term_gene_sums
    where species = $species and level = $level
    group by gene_index
),

term_sums as (
    select gene_index, n_expressing, sum_log2_cpm, sumsq_log2_cpm
    from term_gene_sums
    where species = $species and level = $level and term_label = $term
),

split as (
    select
        term_sums.gene_index,
        sizes.n_in,
        sizes.n_rest,
        term_sums.n_expressing as expr_in,
        level_sums.n_expressing - term_sums.n_expressing as expr_rest,
        term_sums.sum_log2_cpm as sum_in,
        level_sums.sum_log2_cpm - term_sums.sum_log2_cpm as sum_rest,
        term_sums.sumsq_log2_cpm as sumsq_in,
        level_sums.sumsq_log2_cpm - term_sums.sumsq_log2_cpm as sumsq_rest
    from term_sums
    join level_sums using (gene_index)
    cross join sizes
),

compared as (
    select
        gene_index,
        n_in,
        n_rest,
        sum_in / n_in as mean_in,
        sum_rest / n_rest as mean_rest,
        greatest(0, (sumsq_in - sum_in * sum_in / n_in) / nullif(n_in - 1, 0)) as var_in,
        greatest(0, (sumsq_rest - sum_rest * sum_rest / n_rest) / nullif(n_rest - 1, 0)) as var_rest,
        expr_in / n_in as fraction_in,
        expr_rest / n_rest as fraction_rest
    from split
),

final as (
    select
        genes.gene_symbol,
        genes.gene_identifier,
        compared.mean_in,
        compared.mean_rest,
        compared.mean_in - compared.mean_rest as log2_fold_change,
        compared.fraction_in,
        compared.fraction_rest,
        (compared.mean_in - compared.mean_rest)
            / nullif(sqrt(compared.var_in / compared.n_in + compared.var_rest / compared.n_rest), 0)
            as t_statistic,
        compared.n_in,
        compared.n_rest
    from compared
    join genes
        on genes.species = $species
        and genes.gene_index = compared.gene_index
    where compared.fraction_in >= $min_fraction
        and compared.fraction_rest <= $max_rest_fraction
        and compared.mean_in - compared.mean_rest >= $min_log2fc
)

select * from final
order by t_statistic desc nulls last, gene_symbol
limit $n
