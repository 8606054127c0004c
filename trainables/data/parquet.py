"""A split's samples in Hugging Face datasets' Parquet shards, read with pyarrow alone.

The Hub stores an `Image` feature as a struct {bytes: binary, path: string} (the encoded PNG or JPEG
in `bytes`); a plain binary column is read the same way. A sample is a row: its image and mask are
decoded from the row's bytes. Rows are read one row group at a time and the last few groups are kept
per decoding thread, so decoding a split in order reads each group once.
"""

from __future__ import annotations

import bisect
import glob
import threading
from collections import OrderedDict
from pathlib import Path

from trainables.data.declaration import DataDeclaration
from trainables.data.labels import LabelReader, Sample
from trainables.errors import DatasetError, missing_folder

KEPT_GROUPS = 4  # row groups each decoding thread keeps


def list_rows(declaration: DataDeclaration, root: Path, role: str) -> tuple[list[Sample], list[str]]:
    """The role's rows, in shard (sorted by name) and row order; problems are raised (a shard is one file)."""
    import pyarrow.parquet as pq

    pattern = declaration.files[role]
    if not root.is_dir():
        raise DatasetError(f"parquet dataset at {root}: {missing_folder(root)}")
    shards = sorted(path for path in glob.glob(str(root / pattern), recursive=True) if Path(path).is_file())
    if not shards:
        raise DatasetError(f"parquet dataset at {root}: no file matches files.{role} = {pattern!r} under {root}")
    fetch = RowFetcher(declaration.image_column, declaration.label_column)
    labels = LabelReader(declaration)
    samples = []
    for shard in shards:
        try:
            metadata = pq.ParquetFile(shard).metadata
        except Exception as error:
            raise DatasetError(f"{shard}: not a readable Parquet file: {error}") from error
        names = metadata.schema.to_arrow_schema().names
        for column, key in ((declaration.image_column, "image_column"), (declaration.label_column, "label_column")):
            if column not in names:
                raise DatasetError(f"{shard}: no column {column!r} ({key}); its columns: {names}")
        samples += [Sample(shard, shard, labels, row, fetch) for row in range(metadata.num_rows)]
    return samples, []


class RowFetcher:
    """A row's (image bytes, mask bytes), from row groups cached per thread."""

    def __init__(self, image_column: str, label_column: str):
        self.columns = (image_column, label_column)
        self._local = threading.local()

    def __call__(self, sample: Sample) -> tuple[bytes, bytes]:
        groups, offset = self._group_of(sample.image, sample.row)
        table = self._group(sample.image, groups)
        values = []
        for column in self.columns:
            cell = table.column(column)[sample.row - offset].as_py()
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not isinstance(data, bytes):
                where = f" (path {cell.get('path')!r})" if isinstance(cell, dict) and cell.get("path") else ""
                raise DatasetError(f"{sample.image}, row {sample.row}: the {column!r} cell holds no encoded image "
                                   f"bytes{where}; expected a struct {{bytes, path}} or binary, as the Hub stores "
                                   f"an Image feature")
            values.append(data)
        return values[0], values[1]

    def _state(self):
        if not hasattr(self._local, "groups"):
            self._local.groups, self._local.starts = OrderedDict(), {}
        return self._local

    def _group_of(self, shard: str, row: int) -> tuple[int, int]:
        """(row group index, its first row)."""
        import pyarrow.parquet as pq

        state = self._state()
        if shard not in state.starts:
            metadata = pq.ParquetFile(shard).metadata
            starts, total = [], 0
            for group in range(metadata.num_row_groups):
                starts.append(total)
                total += metadata.row_group(group).num_rows
            state.starts[shard] = starts
        starts = state.starts[shard]
        group = bisect.bisect_right(starts, row) - 1
        return group, starts[group]

    def _group(self, shard: str, group: int):
        import pyarrow.parquet as pq

        state = self._state()
        key = (shard, group)
        if key not in state.groups:
            try:
                state.groups[key] = pq.ParquetFile(shard).read_row_group(group, columns=list(self.columns))
            except Exception as error:
                raise DatasetError(f"{shard}: cannot read row group {group}: {error}") from error
            while len(state.groups) > KEPT_GROUPS:
                state.groups.popitem(last=False)
        state.groups.move_to_end(key)
        return state.groups[key]
