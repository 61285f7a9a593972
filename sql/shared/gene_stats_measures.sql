-- The measures of the three *_gene_stats views, from a row `sums` of their *_gene_sums tables: written
-- once here and put in place of {gene_stats_measures} when a view is created (store/catalog.py view_sql).
-- Zeros are counted through n_cells: mean = sum / n_cells, the variance from the sum of squares.
        sums.n_cells,
        sums.n_expressing,
        sums.n_expressing / sums.n_cells as fraction_expressing,
        sums.sum_raw / sums.n_cells as mean_raw,
        sums.sum_log2_cpm / sums.n_cells as mean_log2_cpm,
        case when sums.n_cells > 1 then
            greatest(0, (sums.sumsq_log2_cpm - sums.sum_log2_cpm ^ 2 / sums.n_cells) / (sums.n_cells - 1))
        end as var_log2_cpm,
        sums.sum_raw / sums.sum_total_counts * 1e6 as pseudobulk_cpm,
        sums.n_cpm_gt_1 / sums.n_cells as fraction_cpm_gt_1
