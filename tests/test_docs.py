"""Every `$ hmba-db ...` example of the README and docs/ runs (against the tiny store here; `make docs`
writes each one's output from a run on the demo store)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.tools.docs import (
    args_of,
    commands,
    curl,
    curl_commands,
    pages,
    prose_commands,
    python_blocks,
    run_python,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [
    (page.relative_to(ROOT), command)
    for page in pages(ROOT)
    for _, _, command, _ in commands(page.read_text())
]


def test_the_pages_have_examples():
    assert len(EXAMPLES) >= 15 and {str(p) for p, _ in EXAMPLES} >= {"README.md", "docs/sql.md"}


@pytest.mark.parametrize("page,command", EXAMPLES, ids=[f"{p}:{c.split()[1]}" for p, c in EXAMPLES])
def test_every_example_runs(page, command, tiny_store, tiny_release, tmp_path):
    where = {"data/demo-store": tiny_store, "data/demo-release": tiny_release, "data/release": tiny_release}
    args = [
        str(where[a]) if a in where else str(tmp_path / a[5:]) if a.startswith("data/") else a
        for a in args_of(command)
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, f"{page}: {command}\n{r.output}"
    assert "Traceback" not in r.output


PYTHON = [
    (page.relative_to(ROOT), start, end)
    for page in pages(ROOT)
    for start, end in python_blocks(page.read_text())
]


@pytest.mark.parametrize("page,start,end", PYTHON, ids=[f"{p}:{s}" for p, s, _ in PYTHON])
def test_every_python_example_runs(page, start, end, tiny_store):
    """Each statement runs; one followed by `# ...` lines may show an error, the others may not raise."""
    import re

    code = (ROOT / page).read_text().split("\n")[start:end]
    shown = run_python(code, str(tiny_store))
    assert [ln for ln in shown if not ln.startswith("#")] == [ln for ln in code if not ln.startswith("#")]
    errors = re.compile(r"^# \w+(Error|Exception): ")
    # An error only where the page shows one: a value the page shows must come out as a value here too.
    assert [ln.split(":")[0] for ln in shown if errors.match(ln)] == [
        ln.split(":")[0] for ln in code if errors.match(ln)
    ]


PROSE = [
    (page.relative_to(ROOT), command) for page in pages(ROOT) for command in prose_commands(page.read_text())
]
# What makes a prose example affordable here, appended to its arguments (each still runs as written
# otherwise): a smaller synthetic release; the local bucket instead of the real one (below); clusters of the
# tiny store's size.
CHEAPER = {
    "synth": ["--genes", "200", "--species", "Marmoset", "--quiet"],
    "export mapmycells": ["--min-cells", "1"],
}


def test_the_prose_examples_are_found():
    assert {c.split()[1] for _, c in PROSE} >= {"synth", "build", "download", "export", "sql", "info"}


@pytest.mark.parametrize("page,command", PROSE, ids=[f"{p}:{c.split()[1]}" for p, c in PROSE])
def test_every_prose_example_runs(page, command, tiny_store, tiny_release, tmp_path, monkeypatch):
    """The commands quoted in prose and plain blocks (synth, build, download, export) run too, against the
    tiny release and store (`data/store` is a fresh build of the tiny release for build, a copy otherwise)."""
    import shutil

    from .httpserver import serve

    monkeypatch.chdir(tmp_path)  # what an example writes to a relative path lands here, not in the checkout
    args = args_of(command)
    where = {"data/demo-store": tiny_store, "data/release": tiny_release}
    if args[0] == "build":
        where["data/store"] = tmp_path / "store"
    elif "data/store" in args:
        shutil.copytree(tiny_store.parent, tmp_path / "copy", symlinks=True)
        where["data/store"] = tmp_path / "copy" / tiny_store.name
    if args[0] == "synth":
        where["data/release"] = tmp_path / "release"
    run = [
        str(where[a]) if a in where else str(tmp_path / a[5:]) if a.startswith("data/") else a for a in args
    ]
    run += CHEAPER.get(args[0], CHEAPER.get(" ".join(args[:2]), []))
    if args[0] == "serve":
        return _serve_runs(page, command, run)
    server = None
    if args[0] == "download":
        server, url, _ = serve(tiny_release)
        run += ["--base-url", url]
    try:
        r = CliRunner().invoke(main, run, catch_exceptions=False)
    finally:
        if server:
            server.shutdown()
    assert r.exit_code == 0, f"{page}: {command}\n{r.output}"
    assert "Traceback" not in r.output


def _serve_runs(page, command, run):
    """`hmba-db serve` runs until stopped: started as a user starts it, asked for its health (with the token
    the example passes, a shell substitution standing for one), stopped. A published store's URL is served
    in tests/test_remote.py::test_serve_a_published_store (it needs the side DuckDB with httpfs)."""
    from build_db.tools.served import Server

    if run[1].startswith(("http://", "https://", "s3://")):
        pytest.skip("a published store: tests/test_remote.py::test_serve_a_published_store serves one")
    run = ["a-token" if "$(" in a else a for a in run]
    token = run[run.index("--token") + 1] if "--token" in run else None
    if "--token-file" in run:  # the example's file (/etc/hmba/token) stands for one holding a token
        i = run.index("--token-file")
        held = Path(tempfile.mkdtemp()) / "token"
        held.write_text("a-token\n")
        run[i + 1], token = str(held), "a-token"
    if "--port" in run:  # the example's port may be taken here: the test's own free port instead
        i = run.index("--port")
        del run[i : i + 2]
    server = Server(run[1], *run[2:])
    try:
        status, body = server.json(
            "/api/v1/health", **({"Authorization": f"Bearer {token}"} if token else {})
        )
    finally:
        server.stop()
    assert status == 200 and body["status"] == "ok", f"{page}: {command}\n{body}"


def test_examples_not_run_say_which_test_covers_them():
    """A ```python block may be left out of the runs only after `<!-- not run: ... tests/X.py ... -->`,
    naming the test that does the same where we can (a local server for a bucket, local[2] for a cluster)."""
    import re

    marks = [
        ln for page in pages(ROOT) for ln in page.read_text().split("\n") if ln.startswith("<!-- not run:")
    ]
    assert len(marks) <= 3
    for ln in marks:
        named = re.findall(r"tests/\w+\.py", ln)
        assert named and all((ROOT / n).is_file() for n in named), ln


def test_the_checkout_holds_no_generated_data():
    """Examples and tests write under tmp_path or the ignored data/: git tracks no store or h5 file."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    generated = [f for f in tracked if f.endswith((".h5", ".h5ad", ".parquet", ".duckdb"))]
    assert not generated, generated


CURL = [
    (page.relative_to(ROOT), command, "\n".join(page.read_text().split("\n")[start + 1 : stop]))
    for page in pages(ROOT)
    for start, stop, command in curl_commands(page.read_text())
]


@pytest.fixture(scope="module")
def doc_server(tiny_store):
    from build_db.tools.served import Server

    s = Server(tiny_store, "--log-level", "warning")
    yield s
    s.stop()


def test_the_server_page_has_curl_examples():
    assert len([c for p, c, _ in CURL if str(p) == "docs/serve.md"]) >= 12


@pytest.mark.parametrize("page,command,shown", CURL, ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(CURL)])
def test_every_curl_example_answers(page, command, shown, doc_server):
    """Each `$ curl` example answers on the tiny store: 200, or a 4xx where the page shows an error."""
    status, _ = curl(command, doc_server.url)
    shows_error = re.match(r'\{\s*"error"', shown.lstrip()) is not None
    assert (400 <= status < 500) if shows_error else status == 200, (command, status)
