"""Results as JSON, CSV and Parquet, the same numbers for the CLI and the server.

JSON numbers are exact: floats as their shortest round-trip text, DuckDB's HUGEINT and DECIMAL as integers
(or floats), timestamps in ISO 8601. JSON has no NaN or Infinity (parsers reject them), so a NaN is `null`
and an infinite value is `null` too, with a note naming the column: `notes` says how many there were.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from decimal import Decimal

import numpy as np
import pandas as pd


def json_value(v):
    """One value as JSON takes it (None for NaN and infinities)."""
    if v is None or type(v) is str:  # most values of a text column: no isinstance chain for them
        return v
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dt.datetime | dt.date | pd.Timestamp):
        return v.isoformat()
    if isinstance(v, list | tuple | np.ndarray):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if v is pd.NA or v is pd.NaT:
        return None
    return str(v) if not isinstance(v, str) else v


def _column(series: pd.Series) -> tuple[list, int]:
    """A column's values as JSON values, and how many infinite values became null."""
    if pd.api.types.is_float_dtype(series.dtype):
        a = series.to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = int(np.isinf(a).sum())
        values = a.astype(object)
        values[~np.isfinite(a)] = None
        return values.tolist(), infinite
    if pd.api.types.is_integer_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype):
        if series.isna().any():
            return [None if pd.isna(x) else int(x) for x in series], 0
        return series.to_numpy().tolist(), 0
    if pd.api.types.is_bool_dtype(series.dtype):
        return [None if pd.isna(x) else bool(x) for x in series], 0
    return [json_value(x) for x in series.tolist()], 0


def frame_rows(df: pd.DataFrame) -> tuple[list[str], list[list], list[str]]:
    """A DataFrame as JSON columns and rows, and the notes about values JSON cannot hold."""
    columns, notes = [str(c) for c in df.columns], []
    values = []
    for c in df.columns:
        col, infinite = _column(df[c])
        values.append(col)
        if infinite:
            notes.append(f"column {c}: {infinite:,} infinite value(s) written as null (JSON has no Infinity)")
    rows = [list(r) for r in zip(*values, strict=True)] if values else []
    return columns, rows, notes


def json_bytes(value) -> bytes:
    """A JSON document as the server sends it, compact: dicts, lists, str, int, float (finite), None, and
    NumPy arrays written as lists (orjson: each float's shortest round-trip digits, as json.dumps, though
    written 0.000015 where json.dumps writes 1.5e-05)."""
    import orjson

    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # what orjson does not take: an integer past 64 bits (a HUGEINT)
        return json.dumps(
            value, separators=(",", ":"), allow_nan=False, default=lambda a: np.asarray(a).tolist()
        ).encode()


def records_json(df: pd.DataFrame) -> tuple[str, list[str]]:
    """The rows as a JSON array of objects (`hmba-db query --format json`), and the notes."""
    columns, rows, notes = frame_rows(df)
    body = ",\n".join(json.dumps(dict(zip(columns, r, strict=True))) for r in rows)
    return ("[\n" + body + "\n]" if rows else "[]"), notes


def _exact(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns as their shortest round-trip text (pandas writes 15-16 digits: not the same number)."""
    floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c].dtype)]
    if not floats:
        return df
    df = df.copy()
    for c in floats:
        df[c] = [repr(float(x)) if x == x else "" for x in df[c].tolist()]
    return df


def frame_csv(df: pd.DataFrame) -> str:
    """CSV with exact numbers (the JSON's, as text)."""
    return _exact(df).to_csv(index=False)


TABLE_WIDTH = 60  # characters of a value shown in the CLI's --format table


def frame_text(df: pd.DataFrame, fmt: str) -> tuple[str, list[str]]:
    """A DataFrame as `hmba-db sql` and `query` print it (csv, json or an aligned table), and the lines they
    say on stderr about it (values JSON cannot hold, values the table cuts)."""
    if fmt == "csv":
        return frame_csv(df), []
    if fmt == "json":
        text, notes = records_json(df)
        return text + "\n", [f"note: {note}" for note in notes]
    if df.empty:
        return " | ".join(map(str, df.columns)) + "\n(0 rows)\n", []
    long = [
        c for c in df.columns if df[c].dtype == object and df[c].astype(str).str.len().max() > TABLE_WIDTH
    ]
    said = (
        [
            f"(values of {', '.join(map(str, long))} longer than {TABLE_WIDTH} characters are cut here; "
            "--format csv or json shows them whole)"
        ]
        if long
        else []
    )
    return df.to_string(index=False, na_rep="NULL", max_colwidth=TABLE_WIDTH) + "\n", said


def frame_parquet(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink, compression="zstd")
    return sink.getvalue()


def write_stream(reader, fmt: str, out) -> list[str]:
    """Write an Arrow batch reader as CSV or a JSON array of objects, batch by batch (a result larger than
    memory never becomes one DataFrame); returns the notes about values JSON cannot hold."""
    import pyarrow as pa

    first, infinite = True, dict[str, int]()
    if fmt == "json":
        out.write("[")
    for batch in reader:
        if batch.num_rows == 0:
            continue
        if fmt == "csv":
            _exact(batch.to_pandas()).to_csv(out, index=False, header=first)
        else:
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                if pa.types.is_floating(column.type):
                    n = int(np.isinf(column.to_numpy(zero_copy_only=False)).sum())
                    if n:
                        infinite[name] = infinite.get(name, 0) + n
            rows = (json.dumps(json_value(r)) for r in batch.to_pylist())
            out.write(("" if first else ",") + "\n" + ",\n".join(rows))
        first = False
    if fmt == "csv" and first:
        out.write(",".join(reader.schema.names) + "\n")
    if fmt == "json":
        out.write("\n]\n")
    return [
        f"column {c}: {n:,} infinite value(s) written as null (JSON has no Infinity)"
        for c, n in infinite.items()
    ]
