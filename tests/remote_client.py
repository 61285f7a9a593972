"""Run in the side environment (.venv-remote: DuckDB 1.5.5 with httpfs from PyPI) by tests/test_remote.py:
open a published store by URL and print, as JSON lines, every named query's answer or one named question.

    python tests/remote_client.py URL queries            # every named query with its example parameters
    python tests/remote_client.py URL attach SQL         # plain DuckDB: ATTACH the published catalog, run SQL
    python tests/remote_client.py URL mean SPECIES GENE  # analyses.mean_expression_from_rows (bucket files)
"""

from __future__ import annotations

import json
import sys


def main(url: str, what: str, *args: str) -> None:
    if what == "attach":
        import duckdb

        from build_db.access.remote import load_httpfs

        con = duckdb.connect()
        load_httpfs(con)
        con.execute(f"attach '{url.rstrip('/')}/published.duckdb' as hmba (read_only)")
        con.execute("use hmba")
        print(json.dumps({"rows": [list(r) for r in con.execute(args[0]).fetchall()]}, default=str))
        return
    import build_db

    con = build_db.connect(url)
    if what == "queries":
        for q in build_db.list_queries().values():
            df = build_db.run_query(con, q.name, **q.example)
            print(json.dumps({"name": q.name, "frame": json.loads(df.to_json(orient="split"))}))
    elif what == "mean":
        from build_db import analyses

        df = analyses.mean_expression_from_rows(con, args[0], args[1])  # the gene's rows: one bucket's file
        print(json.dumps({"frame": json.loads(df.to_json(orient="split"))}))


if __name__ == "__main__":
    main(*sys.argv[1:])
