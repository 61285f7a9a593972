"""The defaults a user can change from the command line, declared once: the library takes them from here,
and so do the CLI's options and their help (which must not import the heavy modules to say them).

Each number says why it is what it is.
"""

from __future__ import annotations

# Worker processes of a build: this machine kind has 2 cores, and gzip decompression and the sort are both
# CPU-bound, so a third worker only adds memory.
JOBS = 2
# Target non-zeros per bucket (gene and cell buckets alike): ~64 buckets of 100-300 MB for full Human,
# 3-5 ms single-gene look-ups, and a sort that needs ~1 GB per worker (docs/architecture.md, decision 1).
BUCKET_TARGET_NNZ = 80_000_000
# At most this many genes per gene bucket: a sorted bucket's statistics accumulators (genes x groups x
# fields, dense) stay cache-friendly, and small stores still get several buckets per species.
MAX_BUCKET_GENES = 1024
# Hours a replaced build's snapshot stays for readers that opened it before the rebuild: a dashboard left
# open over a working day, at the cost of one more build's disk meanwhile.
KEEP_OLD_HOURS = 24.0

# Untrusted SQL (`sql --safe`, `POST /api/v1/sql`): the time and row caps, and the sandbox's resources.
SQL_TIMEOUT = 30.0
SQL_MAX_ROWS = 100_000
SQL_MEMORY_LIMIT = "2GB"  # a tenth of this machine kind's memory: several sandboxed users fit
SQL_THREADS = 2
SQL_TEMP_LIMIT = "4GB"  # spill space for sorts and joins larger than memory

# `hmba-db serve`
SERVE_HOST = "127.0.0.1"  # this machine only, unless told otherwise (the data are not public)
SERVE_PORT = 8000
SERVE_TIMEOUT = 30.0  # seconds a named query or a look-up may run before a 504
SERVE_MAX_EXPORT_MB = 1024.0  # an AnnData download past this is a 413 with its estimated size
SERVE_SQL_WORKERS = 2  # sandbox processes answering /api/v1/sql at once

# The notebook's marker genes: the demo's question, the benchmarks' gene set, the BI dashboards' heatmap
# (the explorer page's first genes, in app.js, are the same seven).
NOTEBOOK_GENES = ["SLC17A6", "SLC32A1", "PTPRC", "PLP1", "AQP4", "DRD1", "DRD2"]
