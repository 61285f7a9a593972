"""h5ad files as the ABC release writes them, read and written in row chunks with h5py.

We never load a whole AnnData: a Human matrix is ~5 billion non-zeros. The writer appends CSR row blocks
to resizable datasets; the reader hands out row ranges. Both follow anndata's on-disk format (encoding
attributes, `obs`/`var` dataframes with `_index`), so anndata itself reads what we write.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ReleaseError

# The ABC writer's settings (docs/release.md, 'Expression matrices'): gzip level 4, chunks of at most 20,000
# elements.
GZIP_LEVEL = 4
CHUNK = 20_000
INT32_LIMIT = 2**31 - 1

_DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}
_STR = {"encoding-type": "string-array", "encoding-version": "0.2.0"}


def _set(obj: h5py.HLObject, attrs: dict) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = v


def _column_order(names: list[str]) -> np.ndarray:
    # anndata writes an empty column order as an empty float array (h5py cannot type an empty str array).
    return np.array(names, dtype=h5py.string_dtype()) if names else np.array([], dtype=np.float64)


def _growable(group: h5py.Group, name: str, dtype, compress: bool = True) -> h5py.Dataset:
    kwargs = {"compression": "gzip", "compression_opts": GZIP_LEVEL} if compress else {}
    return group.create_dataset(
        name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,), track_times=False, **kwargs
    )


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + len(values),))
    ds[n:] = values


def _write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    ds = group.create_dataset(
        name,
        data=np.array(values, dtype=object),
        dtype=h5py.string_dtype(),
        compression="gzip",
        compression_opts=GZIP_LEVEL,
        chunks=(min(CHUNK, max(1, len(values))),),
        track_times=False,
    )
    _set(ds, _STR)


def _write_categorical(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """anndata's own encoding of a string column with repeats: categories + int codes, -1 for missing."""
    series = pd.Categorical([v if v else None for v in values])
    sub = group.create_group(name)
    _set(sub, {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
    _write_strings(sub, "categories", list(series.categories))
    codes = sub.create_dataset(
        "codes", data=series.codes, compression="gzip", compression_opts=GZIP_LEVEL, track_times=False
    )
    _set(codes, {"encoding-type": "array", "encoding-version": "0.2.0"})


class CsrWriter:
    """Append cell rows to an h5ad CSR matrix; `close()` writes shape and index attributes.

    `index_dtype` is int32 unless the caller expects >= 2^31-1 non-zeros (as the ABC writer decides).
    """

    def __init__(self, path: Path, var: pd.DataFrame, dtype, index_dtype=np.int32):
        self.path = Path(path)
        self.n_vars = len(var)
        self.dtype = np.dtype(dtype)
        self.index_dtype = np.dtype(index_dtype)
        self.f = h5py.File(self.path, "w")
        _set(self.f, {"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = self.f.create_group("X")
        self.data = _growable(x, "data", self.dtype)
        self.indices = _growable(x, "indices", self.index_dtype)
        self.indptr_parts = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.labels = _growable(self.f.create_group("obs"), "cell_label", h5py.string_dtype())
        var_group = self.f.create_group("var")
        extra = [c for c in var.columns if c != var.index.name]
        _set(
            var_group,
            {
                "_index": var.index.name,
                "column-order": _column_order(extra),
                "encoding-type": "dataframe",
                "encoding-version": "0.2.0",
            },
        )
        _write_strings(var_group, var.index.name, list(var.index))
        for c in extra:
            _write_categorical(var_group, c, list(var[c].fillna("")))
        for name in ("layers", "obsm", "obsp", "uns", "varm", "varp"):
            _set(self.f.create_group(name), _DICT)

    def append(self, block: sp.csr_matrix, labels: Sequence[str]) -> None:
        if block.shape[1] != self.n_vars or block.shape[0] != len(labels):
            raise ValueError(
                f"block shape {block.shape} does not match {len(labels)} labels x {self.n_vars} genes"
            )
        _append(self.data, block.data.astype(self.dtype, copy=False))
        _append(self.indices, block.indices.astype(self.index_dtype, copy=False))
        self.indptr_parts.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz += block.nnz
        _append(self.labels, np.asarray(labels, dtype=object))

    def close(self) -> None:
        if self.index_dtype == np.int32 and self.nnz >= INT32_LIMIT:
            raise ValueError(f"{self.path}: {self.nnz} non-zeros need int64 indices; pass index_dtype=int64")
        indptr = np.concatenate(self.indptr_parts).astype(self.index_dtype)
        x = self.f["X"]
        x.create_dataset(
            "indptr",
            data=indptr,
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            chunks=(min(CHUNK, len(indptr)),),
            track_times=False,
        )
        _set(
            x,
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": np.array([len(indptr) - 1, self.n_vars], dtype=np.int64),
            },
        )
        obs = self.f["obs"]
        _set(self.labels, _STR)
        _set(
            obs,
            {
                "_index": "cell_label",
                "column-order": _column_order([]),
                "encoding-type": "dataframe",
                "encoding-version": "0.2.0",
            },
        )
        self.f.close()


def read_strings(group: h5py.Group, name: str) -> np.ndarray:
    """A string column of an anndata dataframe, plain or categorical, as an object array ('' for missing)."""
    obj = group[name]
    if isinstance(obj, h5py.Group):
        if obj.attrs.get("encoding-type") != "categorical":
            raise ValueError(f"column {name!r} has encoding {obj.attrs.get('encoding-type')!r}")
        cats = obj["categories"].asstr()[...]
        codes = obj["codes"][...]
        out = np.where(codes >= 0, cats[np.maximum(codes, 0)] if len(cats) else "", "")
        return out.astype(object)
    return obj.asstr()[...].astype(object)


def _damaged(what: str):
    """Turn h5py's errors on a damaged chunk (a failed inflate, a bad checksum) into one ReleaseError line
    naming the file and the dataset."""

    def wrap(method):
        @functools.wraps(method)
        def read(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (OSError, KeyError, ValueError) as e:
                detail = " ".join(str(e).split()) or type(e).__name__
                raise ReleaseError(
                    f"{self.path}: {what} cannot be read ({detail}); the file is damaged: delete it and "
                    "download it again",
                    path=self.path,
                ) from e

        return read

    return wrap


class CsrReader:
    """Row-range access to an h5ad's CSR `X` without reading the whole matrix.

    Validates the structure on open and raises ReleaseError naming the file and the fix.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise ReleaseError(
                f"{self.path}: not a readable HDF5/h5ad file ({e}); delete it and download it again",
                path=self.path,
            ) from e
        try:
            self._open()
        except Exception:
            self.f.close()
            raise

    def _fail(self, what: str) -> ReleaseError:
        return ReleaseError(f"{self.path}: {what}", path=self.path)

    def _open(self) -> None:
        f = self.f
        if "X" not in f:
            raise self._fail("no 'X' matrix; this is not an HMBA-BG expression h5ad")
        x = f["X"]
        enc = x.attrs.get("encoding-type")
        if isinstance(enc, bytes):
            enc = enc.decode()
        if not isinstance(x, h5py.Group) or enc != "csr_matrix":
            raise self._fail(f"'X' has encoding {enc!r}, expected 'csr_matrix' (cells x genes)")
        for name in ("data", "indices", "indptr"):
            if name not in x:
                raise self._fail(f"'X/{name}' is missing; the file is truncated or not a CSR h5ad")
        if "shape" not in x.attrs:
            raise self._fail("'X' has no 'shape' attribute; the file is truncated or not a CSR h5ad")
        dims = [int(v) for v in x.attrs["shape"]]
        if len(dims) != 2:
            raise self._fail(f"'X' has shape {dims}, not cells x genes; the file is damaged or not a matrix")
        self.shape: tuple[int, int] = (dims[0], dims[1])
        self.data = x["data"]
        self.indices = x["indices"]
        self.indptr_ds = x["indptr"]
        self.dtype = self.data.dtype
        if self.indptr_ds.shape[0] != self.shape[0] + 1:
            raise self._fail(
                f"'X/indptr' has {self.indptr_ds.shape[0]} entries for {self.shape[0]} rows "
                "(expected rows + 1); the file is truncated"
            )
        if self.data.shape != self.indices.shape:
            raise self._fail(
                f"'X/data' ({self.data.shape[0]}) and 'X/indices' ({self.indices.shape[0]}) "
                "differ in length; the file is truncated"
            )
        for group in ("obs", "var"):
            if group not in f or "_index" not in f[group].attrs:
                raise self._fail(f"'{group}' dataframe or its '_index' attribute is missing")
        self.obs_index_name = _attr_str(f["obs"].attrs["_index"])
        self.var_index_name = _attr_str(f["var"].attrs["_index"])

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @_damaged("X/indptr")
    def indptr(self) -> np.ndarray:
        return self.indptr_ds[...].astype(np.int64)

    @_damaged("obs (the cell labels)")
    def obs_names(self) -> np.ndarray:
        return read_strings(self.f["obs"], self.obs_index_name)

    @_damaged("obs (the cell labels)")
    def obs_label(self, row: int) -> str:
        ds = self.f["obs"][self.obs_index_name]
        if isinstance(ds, h5py.Group):  # categorical index
            return str(read_strings(self.f["obs"], self.obs_index_name)[row])
        v = ds[row]
        return v.decode() if isinstance(v, bytes) else str(v)

    @_damaged("var (the gene identifiers)")
    def var_names(self) -> np.ndarray:
        return read_strings(self.f["var"], self.var_index_name)

    @_damaged("a var column")
    def var_column(self, name: str) -> np.ndarray:
        return read_strings(self.f["var"], name)

    def var_columns(self) -> list[str]:
        return [k for k in self.f["var"].keys() if k != self.var_index_name]

    @_damaged("X (data, indices or indptr)")
    def rows(self, start: int, stop: int, indptr: np.ndarray | None = None) -> sp.csr_matrix:
        """Rows [start, stop) as CSR; pass the whole indptr (from indptr()) to avoid re-reading it."""
        if indptr is None:
            ip = self.indptr_ds[start : stop + 1].astype(np.int64)
        else:
            ip = indptr[start : stop + 1]
        lo, hi = int(ip[0]), int(ip[-1])
        return sp.csr_matrix(
            (self.data[lo:hi], self.indices[lo:hi], ip - lo), shape=(stop - start, self.shape[1])
        )

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> CsrReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
