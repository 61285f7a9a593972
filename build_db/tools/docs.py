"""The generated parts of the README and docs/, from `queries/` and real runs on the demo store.

    python -m build_db.tools.docs data/demo-store        # regenerate (what `make docs` runs)
    python -m build_db.tools.docs --check                # the named analyses' headers, tables, commands

Two parts. In docs/analyses.md, between `<!-- named-analyses:start -->` and `<!-- named-analyses:end -->`:
per query its title, description, parameter table, the example command with its output (first rows,
numbers to 4 significant digits) and the picture `--plot` draws. Everywhere else: the output of every
`$ hmba-db sql|query|info|verify|check ...` example, as the command prints it now, and in ```python blocks
what each statement followed by `# ...` lines returns (or raises). Tests run every such command and block
(tests/test_docs.py) and check the named analyses' text against queries/.
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
    root = Path(__file__).resolve().parents[2]
    if argv and argv[0] == "--check":
        doc = Path(argv[1]) if len(argv) > 1 else root / DOC
        _, body, _ = _split(doc.read_text())
        if without_outputs(body).strip() != section(None).strip():
            print(f"{doc}: the named analyses are out of date; run `make docs`", file=sys.stderr)
            return 1
        return 0
    store = Path(argv[0])
    doc = root / DOC
    head, _, tail = _split(doc.read_text())
    doc.write_text(f"{head}{START}\n{section(store)}{END}{tail}")
    from click.testing import CliRunner

    from ..cli import main as cli

    def run(args: list[str]) -> str:
        args = [str(store) if a == STORE_SHOWN else a for a in args]
        r = CliRunner().invoke(cli, args)
        # as a terminal shows it: the answer, then the lines about it (CliRunner's mixed output may put
        # the stderr line written last first)
        return (r.stdout + r.stderr).replace(str(store.absolute()), str(Path(STORE_SHOWN).absolute()))

    for page in pages(root):
        rerun(page, run)
        rerun_python(page, str(store.absolute()))
    from .served import Server
    from .shots import take

    server = Server(store, "--log-level", "warning")
    try:
        for page in pages(root):
            rerun_curl(page, server.url, root)
        take(server.url, root / "docs" / "img")  # the explorer's views, for docs/explorer.md
    finally:
        server.stop()
    return 0


# --- `$ curl ...` examples of the server (docs/serve.md), run against `hmba-db serve` on the store ---

SHOWN_URL = "http://localhost:8000"  # the address the examples show
LIST_ITEMS = 3  # items of a long JSON list shown; the rest summed up
TEXT_LINES = 8  # lines of a CSV answer shown


def fenced_examples(lines: list[str]):
    """Each fenced block's `$ ` lines: (their line numbers, the block's closing line), in page order."""
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        starts = [j for j in range(i + 1, end) if lines[j].startswith("$ ")]
        if starts:
            yield starts, end
        i = end + 1


def curl_commands(text: str) -> list[tuple[int, int, str]]:
    """(the `$ curl` line, the line after its output, the command) of each fenced example."""
    lines = text.split("\n")
    found = []
    for starts, end in fenced_examples(lines):
        if all(lines[j].startswith("$ curl ") for j in starts):
            for k, j in enumerate(starts):
                found.append((j, starts[k + 1] if k + 1 < len(starts) else end, lines[j][2:]))
    return found


def curl(command: str, base_url: str) -> tuple[int, str]:
    """Run a `curl -s [-X M] [-H h] [-d data] [-o file] URL` example with urllib: (status, what to show)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    args = shlex.split(command)[1:]
    method, headers, data, saved, url = None, {}, None, None, None
    while args:
        a = args.pop(0)
        if a == "-s":
            continue
        if a == "-X":
            method = args.pop(0)
        elif a == "-H":
            k, _, v = args.pop(0).partition(":")
            headers[k.strip()] = v.strip()
        elif a == "-d":
            data = args.pop(0).encode()
        elif a == "-o":
            saved = args.pop(0)
        else:
            url = a
    if url is None or not url.startswith(SHOWN_URL):
        raise SystemExit(f"{command}: an example's URL starts with {SHOWN_URL}")
    path = urllib.parse.quote(url[len(SHOWN_URL) :], safe="/?&=,:;'()%*+!$@")
    req = urllib.request.Request(base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, body, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers.get("content-type", "")
    if saved:
        return status, ""
    if "json" in kind:
        return status, _json(_shorten(json.loads(body)))
    text = body.decode().rstrip("\n").split("\n")
    more = [f"... ({len(text) - TEXT_LINES:,} more lines)"] if len(text) > TEXT_LINES else []
    return status, "\n".join(text[:TEXT_LINES] + more)


def _json(v, indent: str = "") -> str:
    """JSON a reader scans: a value on one line when it fits in 100 characters, else one item a line."""
    import json

    flat = json.dumps(v, ensure_ascii=False)
    if len(indent) + len(flat) <= 100 or not isinstance(v, dict | list) or not v:
        return flat
    inner = indent + " "
    if isinstance(v, dict):
        items = [f"{inner}{json.dumps(k)}: {_json(x, inner)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return "[\n" + ",\n".join(f"{inner}{_json(x, inner)}" for x in v) + f"\n{indent}]"


def _shorten(v):
    if isinstance(v, list) and len(v) > LIST_ITEMS:
        return [_shorten(x) for x in v[:LIST_ITEMS]] + [f"... {len(v) - LIST_ITEMS:,} more"]
    if isinstance(v, list):
        return [_shorten(x) for x in v]
    if isinstance(v, dict):
        return {k: _shorten(x) for k, x in v.items()}
    if isinstance(v, str) and len(v) > 160:
        return v[:150] + f"... ({len(v):,} characters)"
    return v


def rerun_curl(page: Path, base_url: str, root: Path) -> None:
    text = page.read_text()
    lines = text.split("\n")
    for start, stop, command in reversed(curl_commands(text)):
        _, shown = curl(command, base_url)
        shown = shown.replace(f"{Path(root).absolute()}/", "")  # paths as a reader's checkout has them
        blank = [""] if stop < len(lines) and lines[stop].startswith("$ ") else []
        lines[start + 1 : stop] = ([shown] if shown else []) + blank
    page.write_text("\n".join(lines))


# --- every `$ hmba-db ...` example of the README and docs/, re-run ---

RUNNABLE = ("sql", "query", "queries", "info", "verify", "check", "connect-info")  # fast and read-only
PAGES = ("README.md", "docs")


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def commands(text: str) -> list[tuple[int, int, str, int]]:
    """Each runnable example: (first line, line after its output, the command text, line after the
    command) in a page, from fenced blocks whose `$` lines are all `hmba-db` commands we can run."""
    lines = text.split("\n")
    found = []
    for starts, end in fenced_examples(lines):
        if all(lines[j].startswith("$ hmba-db ") and lines[j].split()[2] in RUNNABLE for j in starts):
            for k, j in enumerate(starts):
                stop = starts[k + 1] if k + 1 < len(starts) else end
                m = j
                while True:  # the command goes on while its quotes are open or a line ends with "\"
                    text_so_far = "\n".join(lines[j : m + 1])[2:]
                    try:
                        shlex.split(text_so_far.replace("\\\n", " "))
                        complete = not lines[m].endswith("\\")
                    except ValueError:
                        complete = False
                    if complete or m + 1 >= stop:
                        break
                    m += 1
                found.append((j, stop, text_so_far, m + 1))
    return found


def prose_commands(text: str) -> list[str]:
    """The concrete `hmba-db ...` commands outside `$` examples: inline code spans with arguments and
    plain fenced lines (`hmba-db export mapmycells data/store ...`). Placeholders (`STORE`, `DEST`, ...:
    an argument in capitals) mark a synopsis, not an example, and are left out."""
    found = []
    spans = re.findall(r"`(hmba-db [^`]+)`", text)
    fenced = [ln for ln in text.split("\n") if ln.startswith("hmba-db ")]
    for command in spans + fenced:
        args = args_of(command)
        if len(args) < 2 or any(re.fullmatch(r"[A-Z_]{3,}|\[.*\]|\.\.\.", a) for a in args):
            continue
        if args[:2] == ["export", "mapmycells"] and len(args) == 2:
            continue
        found.append(command)
    return found


def args_of(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "), comments=True)[1:]  # without the leading `hmba-db`


def rerun(page: Path, run) -> None:
    """Replace each example's output with what `run(args)` prints now (outside the generated section)."""
    text = page.read_text()
    lines = text.split("\n")
    for start, stop, command, after in reversed(commands(text)):
        if START in text and _inside_section(text, lines, start):
            continue
        output = run(args_of(command)).rstrip("\n").split("\n")
        blank = [""] if stop < len(lines) and lines[stop].startswith("$ ") else []
        lines[after:stop] = output + blank
    page.write_text("\n".join(lines))


def _inside_section(text: str, lines: list[str], line_no: int) -> bool:
    before = "\n".join(lines[:line_no])
    return before.count(START) > before.count(END)


# --- Python examples: each statement followed by `# ...` lines shows what it returns (or raises) ---


NOT_RUN = "<!-- not run:"  # before a ```python block that needs what tests cannot have (a cluster, a bucket)


def python_blocks(text: str) -> list[tuple[int, int]]:
    """(first code line, closing fence line) of every ```python block, but those after a `<!-- not run:
    reason -->` line."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        if lines[i].strip() == "```python" and before.startswith(NOT_RUN):
            i = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```")) + 1
            continue
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append((i + 1, end))
            i = end
        i += 1
    return out


def run_python(code: list[str], store: str) -> list[str]:
    """Execute a block statement by statement (`data/demo-store` read as `store`); return the block with
    each statement's following comment lines replaced by what it returns, or by `Error: message` when it
    raises. A statement that raises with no comment after it is an error of the example: raised."""
    import ast
    import contextlib
    import os
    import tempfile

    kept: list[str] = []
    after: dict[int, bool] = {}  # a kept line is followed by output lines: its statement shows a value
    for c in code:
        if _is_output(c):
            if kept:
                after[len(kept) - 1] = True
        else:
            kept.append(c)
    tree = ast.parse("\n".join(kept))
    namespace: dict = {}
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for node in tree.body:
            end = node.end_lineno or node.lineno
            text = "\n".join(kept[node.lineno - 1 : end])
            runnable = text.replace('"data/demo-store"', repr(os.fspath(store)))
            out += kept[node.lineno - 1 : end]
            wants = after.get(end - 1, False)
            try:
                if isinstance(node, ast.Expr):
                    value = eval(compile(runnable, "<docs>", "eval"), namespace)  # noqa: S307 - our docs
                    shown_text = str(value)
                else:
                    exec(compile(runnable, "<docs>", "exec"), namespace)  # noqa: S102 - our docs
                    shown_text = ""
            except Exception as e:  # noqa: BLE001 - an example may show the error a user gets
                if not wants:
                    raise
                shown_text = f"{type(e).__name__}: {e}"
            if wants:
                out += [("# " + ln).rstrip() for ln in shown_text.rstrip().split("\n")]
            if node is not tree.body[-1] and kept[end : end + 1] == [""]:
                out.append("")
    return out


def _is_output(line: str) -> bool:
    return line.startswith("#")


def rerun_python(page: Path, store: str) -> None:
    lines = page.read_text().split("\n")
    for start, end in reversed(python_blocks("\n".join(lines))):
        lines[start:end] = run_python(lines[start:end], store)
    page.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
