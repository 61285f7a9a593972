"""Every `$ hmba-db ...` example of the README and docs/ runs (against the tiny store here; `make docs`
writes each one's output from a run on the demo store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.tools.docs import args_of, commands, pages, python_blocks, run_python

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
