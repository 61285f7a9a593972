"""The command line: every command documented (help with an example, a README section), errors as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from build_db.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"hmba-db {name}" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    assert f"hmba-db {name}" in (ROOT / "README.md").read_text()


def test_every_make_target_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    targets = [
        line.split(":")[0]
        for line in (ROOT / "Makefile").read_text().splitlines()
        if "## " in line and not line.startswith("\t")
    ]
    assert {"demo", "test", "bench", "lint", "clean"} <= set(targets)
    for t in targets:
        assert f"make {t}" in readme, t


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "build_db", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: hmba-db" in out.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "full")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'full'} already exists and is not empty; choose a new directory or pass --force"
    ]


def test_synth_rejects_bad_scale(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "r"), "--scale", "2"])
    assert result.exit_code == 1 and "Error: --scale must be in (0, 1], got 2.0" in result.output
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "r"), "--genes", "10"])
    assert result.exit_code == 2 and "at least 100 genes" in result.output


def test_demo_answers_the_notebook_question(tiny_release, tmp_path, capsys):
    """The store's answer is printed and equals the h5ad scan's (demo fails otherwise)."""
    from build_db.store.build import build
    from build_db.tools.demo import main as demo

    store = build(tiny_release, tmp_path / "store", quiet=True).store
    assert demo([str(tiny_release), str(store)]) == 0
    out = capsys.readouterr().out
    for species in ("Human", "Macaque", "Marmoset"):
        assert f"{species}: mean log2(CPM+1) per Group" in out
    assert "answers agree to" in out and "STRd D1 Matrix MSN" in out and "DRD1" in out


def test_readme_data_dictionary_is_current():
    from build_db.store.schema import data_dictionary

    readme = (ROOT / "docs" / "data-dictionary.md").read_text()
    block = readme.split("<!-- data-dictionary:start -->")[1].split("<!-- data-dictionary:end -->")[0]
    assert block.strip() == data_dictionary().strip(), (
        "run: python -m build_db.store.schema --write docs/data-dictionary.md"
    )


def test_readme_named_analyses_are_current():
    """Titles, descriptions, parameter tables and example commands come from queries/; the outputs from
    `make readme` (a run on the demo store)."""
    from build_db.tools.docs import main as readme

    assert readme(["--check", str(ROOT / "docs" / "analyses.md")]) == 0, "run: make demo && make docs"


def test_the_readme_is_a_front_door_to_the_manual():
    """Short, and every page of docs/ linked from it (and every link alive)."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    assert links == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([\w.-]+\.md)\)", page.read_text()):
            assert (ROOT / "docs" / target).exists(), f"{page.name} links {target}"


def test_json_has_no_infinity(tiny_store):
    """`--format json` wrote Infinity, which strict JSON parsers reject: null, and a note on stderr."""
    import json

    r = CliRunner().invoke(
        main, ["sql", str(tiny_store), "select 'inf'::double as x, 1.5 as y", "--format", "json"]
    )
    assert r.exit_code == 0, r.output

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    assert json.loads(r.stdout, parse_constant=refuse) == [{"x": None, "y": 1.5}]
    assert "column x: 1 infinite value(s) written as null" in r.stderr
