"""The manual's named-analysis reference (docs/analyses.md), generated from `queries/` and a real run.

    python -m build_db.tools.readme data/demo-store docs/analyses.md   # rewrite the section from a run
    python -m build_db.tools.readme --check docs/analyses.md           # headers, tables and commands only

Between `<!-- named-analyses:start -->` and `<!-- named-analyses:end -->`: per query its title, description,
parameter table, the example command with its output (first rows, numbers to 4 significant digits) and the
picture `--plot` draws. `make docs` runs it on the demo store; a test checks everything but the outputs.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pandas as pd

from ..access.queries import list_queries, run_query

START, END = "<!-- named-analyses:start -->", "<!-- named-analyses:end -->"
DOC = "docs/analyses.md"
ROWS = 8
STORE_SHOWN = "data/demo-store"  # the store name the examples show


def _cell(v):
    if isinstance(v, float):
        return "NULL" if v != v else f"{v:.4g}"
    return "NULL" if v is None else v


def _output(df: pd.DataFrame) -> str:
    shown = df.head(ROWS).astype(object).map(_cell)
    return shown.to_string(index=False)


def section(store: Path | None) -> str:
    """The section's text; with no store, the example outputs are `...` (what --check compares)."""
    con = None
    if store is not None:
        from ..access.connect import connect

        con = connect(store)
    out = []
    for q in list_queries().values():
        out.append(f"#### `{q.name}`: {q.title}\n\n{q.description}\n")
        out.append("| parameter | type | default | meaning |\n|---|---|---|---|")
        for p in q.params:
            default = "(required)" if p.default is None else p.default
            out.append(f"| `{p.name}` | {p.type} | {default} | {p.description} |")
        args = " ".join(f"--param {shlex.quote(f'{k}={v}')}" for k, v in q.example.items())
        out.append(f"\n```\n$ hmba-db query {STORE_SHOWN} {q.name}{' ' + args if args else ''}")
        out.append(_output(run_query(con, q.name, **q.example)) if con is not None else "...")
        out.append("```\n")
        plot = ""
        if q.plot:
            opts = ", ".join(f"{k}={v}" for k, v in q.plot.options.items())
            plot = f"; `--plot` draws a {q.plot.kind} of {opts}"
        out.append(f'Python: `build_db.run_query(store, "{q.name}", ...)`{plot}.\n')
    return "\n".join(out).rstrip() + "\n"


def _split(text: str) -> tuple[str, str, str]:
    if START not in text or END not in text:
        raise SystemExit(f"no {START} ... {END} section in that file")
    head, rest = text.split(START, 1)
    body, tail = rest.split(END, 1)
    return head, body, tail


def without_outputs(body: str) -> str:
    """The section with every example's output replaced by `...`."""
    return re.sub(r"(```\n\$ hmba-db query [^\n]*\n)(.*?)(```)", r"\1...\n\3", body, flags=re.S)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--check":
        readme = Path(argv[1] if len(argv) > 1 else DOC)
        _, body, _ = _split(readme.read_text())
        if without_outputs(body).strip() != section(None).strip():
            print(f"{readme}: the named analyses are out of date; run `make docs`", file=sys.stderr)
            return 1
        return 0
    store, readme = Path(argv[0]), Path(argv[1] if len(argv) > 1 else DOC)
    head, _, tail = _split(readme.read_text())
    readme.write_text(f"{head}{START}\n{section(store)}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
