"""Tools around the product: the demo, the benchmarks, the h5ad-scan baseline and TileDB-SOMA's side of the
bench."""
