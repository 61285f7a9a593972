"""A damaged store is an error naming what is wrong, never a smaller or a different answer: a deleted or
bit-flipped file, a missing or unreadable catalog, a damaged build.json; through the CLI, the Python API,
a plain DuckDB client (as a BI tool opens the catalog) and the server (a 503, the store's fault)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

import build_db
from build_db.cli import main
from build_db.errors import StoreError
from build_db.store.paths import files_root
from build_db.tools.served import Server

API = "/api/v1"
TOTAL = "select count(*), sum(raw_count) from expression"


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    """A private copy of the tiny store, views pointed at it (as `hmba-db relocate` does after a copy)."""
    copy = Path(shutil.copytree(tiny_store, tmp_path / "store", symlinks=True))
    build_db.relocate(copy)
    return copy


def _bucket_file(store: Path, species: str = "Human", bucket: int = 1) -> Path:
    return (
        files_root(store)
        / "expression"
        / f"species={species}"
        / f"gene_bucket={bucket:04d}"
        / "part-0.parquet"
    )


def _flip(path: Path, at: float = 0.5) -> None:
    """One bit of a file changed in place: its size stays."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x04
    path.write_bytes(bytes(data))


def _sql(store: Path, sql: str):
    return CliRunner().invoke(main, ["sql", str(store), sql, "--format", "csv"])


def test_a_deleted_expression_file_is_an_error_never_a_smaller_answer(store):
    whole = _sql(store, TOTAL)
    assert whole.exit_code == 0
    gone = _bucket_file(store)
    gone.unlink()
    r = _sql(store, TOTAL)
    assert r.exit_code == 1 and str(gone) in r.output and "missing" in r.output, r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    with pytest.raises(StoreError, match="missing"):
        build_db.connect(store)
    # A BI tool opening the catalog itself, with no help of ours: the views name every file.
    plain = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    with pytest.raises(duckdb.IOException, match="gene_bucket=0001"):
        plain.execute(TOTAL).fetchall()
    plain.close()


def test_a_flipped_bit_in_an_expression_file_is_an_error_never_other_numbers(store):
    path = _bucket_file(store, "Marmoset", 0)
    before = _sql(store, TOTAL)
    assert before.exit_code == 0
    _flip(path)
    r = _sql(store, TOTAL)
    assert r.exit_code == 1 and str(path) in r.output and "bytes are not the build's" in r.output, r.output
    with pytest.raises(StoreError, match="CRC-32"):
        build_db.connect(store)
    v = CliRunner().invoke(main, ["verify", str(store)])
    assert v.exit_code == 1 and f"{path}: CRC-32" in v.output


def test_a_truncated_statistics_file_is_an_error(store):
    stats = sorted((files_root(store) / "aggregates").rglob("*.parquet"))[0]
    stats.write_bytes(stats.read_bytes()[:-100])
    r = CliRunner().invoke(main, ["query", str(store), "dotplot", "-p", "genes=PLP1"])
    assert r.exit_code == 1 and str(stats) in r.output and "bytes, the build wrote" in r.output


def test_a_file_the_server_reads_gone_while_it_serves_is_a_503(store):
    s = Server(store)
    try:
        path = f"{API}/query/umap_by_gene?species=Human&gene=PLP1&max_cells=50"
        assert s.get(path)[0] == 200
        bucket = (
            build_db.connect(store)
            .execute("select gene_bucket from genes where species = 'Human' and gene_symbol = 'PLP1'")
            .fetchall()[0][0]
        )
        _bucket_file(store, "Human", bucket).unlink()
        for p in (
            f"{API}/query/umap_by_gene?species=Human&gene=PLP1&max_cells=51",
            f"{API}/umap?species=Human&gene=PLP1&max_points=52",
        ):
            status, h, body = s.get(p)
            error = json.loads(body)["error"]
            assert status == 503 and f"gene_bucket={bucket:04d}" in error and "\n" not in error, (p, body)
    finally:
        assert s.stop() == 0


def test_a_damaged_statistics_file_is_the_store_s_503_not_the_client_s_400(store):
    s = Server(store)
    try:
        assert s.get(f"{API}/query/dotplot?genes=PLP1&level=Group")[0] == 200
        for f in (files_root(store) / "aggregates").rglob("*.parquet"):
            f.write_bytes(b"PAR1" + b"\0" * 64)  # not Parquet any more
        status, h, body = s.get(f"{API}/query/dotplot?genes=AQP4&level=Class")
        assert status == 503 and "run hmba-db verify" in json.loads(body)["error"], body
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("how", ["missing", "dangling", "garbage"])
def test_verify_fails_a_store_whose_catalog_no_reader_can_open(store, how):
    link = store / "catalog.duckdb"
    target = files_root(store) / "catalog.duckdb"
    if how == "missing":
        link.unlink()
    elif how == "dangling":
        target.unlink()
    else:
        target.write_bytes(b"not a database" * 1000)
    r = CliRunner().invoke(main, ["verify", str(store)])
    assert r.exit_code == 1 and "catalog.duckdb" in r.output and "Traceback" not in r.output, r.output
    assert "OK:" not in r.output


@pytest.mark.parametrize("text", ['{"build_id": "x", "spec', "[1, 2]", "{}", '{"species": {"Human": {}}}'])
def test_a_damaged_build_json_is_one_line_in_verify_and_info(store, text):
    record = files_root(store) / "build.json"
    record.write_text(text)
    for command in ("verify", "info"):
        r = CliRunner().invoke(main, [command, str(store)])
        assert r.exit_code == 1 and "build.json" in r.output, (command, r.output)
        assert r.output.count("\n") == 1 and "Traceback" not in r.output, (command, r.output)


def test_a_copy_is_checked_once_then_trusted(store, monkeypatch):
    """The CRC pass runs when a file is not the one last found intact (a copy is new to us), then a connect
    checks sizes only; a rewrite of a file, even with the same bytes, is checked again."""
    from build_db.store import integrity

    calls: list[str] = []
    real = integrity.crc32_of
    monkeypatch.setattr(integrity, "crc32_of", lambda p: calls.append(str(p)) or real(p))
    integrity._SEEN.clear()
    build_db.connect(store).close()
    n = len(calls)
    from build_db.store.catalog import CATALOG_ONLY

    # every data file but the catalog's own tables (written from it, after the list)
    assert n == len(integrity.list_files(files_root(store))) - len(CATALOG_ONLY)
    build_db.connect(store).close()
    assert len(calls) == n
    path = _bucket_file(store, "Macaque", 0)
    time.sleep(0.01)
    path.write_bytes(path.read_bytes())
    build_db.connect(store).close()
    assert calls[n:] == [str(path)]
