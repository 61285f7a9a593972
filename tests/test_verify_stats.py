"""verify covers the statistics: a swapped or edited statistics file is caught."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.store.paths import files_root
from build_db.store.stats import final_file
from build_db.store.verify import verify_store


@pytest.fixture
def store_copy(tiny_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst, symlinks=True)
    return dst


def test_a_clean_store_verifies_with_its_statistics(tiny_store):
    assert verify_store(tiny_store) == []
    r = CliRunner().invoke(main, ["verify", str(tiny_store)])
    assert r.exit_code == 0 and r.output.count("statistics additive and recomputed") == 3


def test_another_species_statistics_file_is_caught(store_copy):
    # Macaque's Cluster file in Marmoset's place: internally additive, but not Marmoset's numbers.
    shutil.copy(
        final_file(files_root(store_copy), "term_gene_sums", "Macaque", "Cluster"),
        final_file(files_root(store_copy), "term_gene_sums", "Marmoset", "Cluster"),
    )
    found = verify_store(store_copy, ["Marmoset"])
    swapped = str(final_file(files_root(store_copy), "term_gene_sums", "Marmoset", "Cluster"))
    assert found[0].startswith(f"{swapped}: ") and "the build wrote" in found[0]  # not the build's file
    problems = found[1:]
    assert problems and all(p.startswith("Marmoset: statistics: ") for p in problems)
    assert any("is not the sum of its Cluster terms" in p for p in problems)
    assert any("differs from the same sums taken from the expression files" in p for p in problems)
    r = CliRunner().invoke(main, ["verify", str(store_copy), "--species", "Marmoset"])
    assert r.exit_code == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("level", ["Neighborhood", "Group"])
def test_an_edited_sum_breaks_additivity(store_copy, level):
    path = final_file(files_root(store_copy), "term_gene_sums", "Human", level)
    t = pq.read_table(path)
    i = t.schema.get_field_index("sum_raw")
    bumped = pc.add(t.column("sum_raw"), pa.array([1] + [0] * (t.num_rows - 1), type=pa.int64()))
    pq.write_table(t.set_column(i, "sum_raw", bumped), path)
    problems = verify_store(store_copy, ["Human"])
    assert problems and any("is not the sum of its" in p or "do not add up" in p for p in problems)


def test_a_gene_index_past_the_species_genes_is_caught(store_copy):
    # a row the *_gene_stats views' left joins would show with no symbol: verify names it instead
    path = final_file(files_root(store_copy), "term_gene_sums", "Human", "Class")
    t = pq.read_table(path)
    i = t.schema.get_field_index("gene_index")
    moved = pc.add(t.column("gene_index"), pa.array([0] * (t.num_rows - 1) + [10**6], type=pa.int32()))
    pq.write_table(t.set_column(i, "gene_index", moved), path)
    problems = verify_store(store_copy, ["Human"])
    assert any("gene_index 1000" in p and "is not one of the species'" in p for p in problems), problems


def test_region_sums_must_add_up_to_the_group(store_copy):
    path = final_file(files_root(store_copy), "region_group_gene_sums", "Macaque")
    t = pq.read_table(path)
    pq.write_table(t.slice(1), path)  # one region x Group x gene row lost
    changed, problem = verify_store(store_copy, ["Macaque"])
    assert changed.startswith(f"{path}: ")
    assert "the region x Group sums (by region_of_interest_label) do not add up to the Group's" in problem


def test_a_truncated_statistics_file_is_a_finding(store_copy):
    path = final_file(files_root(store_copy), "term_gene_sums", "Human", "Class")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:5000])
    shorter, problem = verify_store(store_copy, ["Human"])
    assert shorter == f"{path}: 5,000 bytes, the build wrote {size:,}"
    assert problem.startswith("Human: statistics: a file cannot be read") and "level=Class" in problem
    assert problem.endswith("rebuild the store")
    r = CliRunner().invoke(main, ["verify", str(store_copy), "--species", "Human"])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_a_missing_statistics_file_is_one_line(store_copy):
    path = final_file(files_root(store_copy), "donor_group_gene_sums", "Human")
    path.unlink()
    missing, problem = verify_store(store_copy, ["Human"])
    assert missing == f"{path}: missing"
    assert problem.startswith("Human: statistics file aggregates/donor_group_gene_sums/species=Human/")
