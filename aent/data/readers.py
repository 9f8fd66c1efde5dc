"""Reading local source files: parquet, jsonl/json, a ``datasets`` ``save_to_disk`` folder, or a folder of such files
(a Hugging Face hub snapshot or ``datasets`` cache). Nothing here downloads anything."""

from __future__ import annotations

import glob
import json
import os
from typing import List, Optional


class DataError(ValueError):
    """A source file that cannot be used; the message names the file and, where relevant, the column."""


_SPLIT_WORDS = ("train", "test", "validation", "valid", "dev")


def _read_file(path: str):
    import pandas as pd

    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            return pd.read_parquet(path)
        if lower.endswith(".jsonl"):
            return pd.read_json(path, lines=True, dtype=False)
        if lower.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                # Some ".json" files are really one object per line.
                return pd.read_json(path, lines=True, dtype=False)
            if isinstance(payload, dict):
                # {"data": [...]} or {"column": [...]} layouts
                lists = [v for v in payload.values() if isinstance(v, list)]
                if len(payload) == 1 and lists and all(isinstance(r, dict) for r in lists[0]):
                    payload = lists[0]
                else:
                    return pd.DataFrame(payload)
            if not isinstance(payload, list):
                raise DataError(
                    f"{path}: expected a list of records or a dict of columns, got {type(payload).__name__}"
                )
            return pd.DataFrame.from_records(payload)
        if lower.endswith(".arrow"):
            import pyarrow as pa

            with open(path, "rb") as f:
                try:
                    table = pa.ipc.open_stream(f).read_all()
                except pa.ArrowInvalid:
                    f.seek(0)
                    table = pa.ipc.open_file(f).read_all()
            return table.to_pandas()
    except DataError:
        raise
    except Exception as exc:  # every reader failure becomes one clear message
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise DataError(f"cannot read {path}: unknown file type (expected .parquet, .jsonl, .json or .arrow)")


def _load_saved_dataset(path: str, split: Optional[str]):
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{path} is a `datasets` save_to_disk folder; reading it needs `pip install datasets`") from exc
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise DataError(f"cannot read {path} with datasets.load_from_disk: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded.keys())
        if split is None:
            if len(splits) != 1:
                raise DataError(f"{path} holds the splits {splits}; choose one with --split")
            split = splits[0]
        if split not in loaded:
            raise DataError(f"{path} has no split {split!r} (it has {splits}); fix --split")
        loaded = loaded[split]
    return loaded.to_pandas()


def _data_files_in(folder: str) -> List[str]:
    found = []
    for pattern in ("*.parquet", "*.jsonl", "*.json", "*.arrow"):
        found.extend(glob.glob(os.path.join(folder, "**", pattern), recursive=True))
    # ``datasets`` metadata, not data
    skip = {"dataset_info.json", "state.json", "dataset_dict.json"}
    found = [f for f in found if os.path.basename(f) not in skip and "/." not in f[len(folder) :]]
    # prefer one format: parquet over jsonl/json over arrow
    for ext in (".parquet", ".jsonl", ".json", ".arrow"):
        of_ext = sorted(f for f in found if f.lower().endswith(ext))
        if of_ext:
            return of_ext
    return []


def _split_of(path: str) -> Optional[str]:
    name = os.path.basename(path).lower()
    for word in _SPLIT_WORDS:
        if name.startswith(word) or f"{word}-" in name or f"{word}." in name or f"_{word}" in name:
            return word
    parent = os.path.basename(os.path.dirname(path)).lower()
    return parent if parent in _SPLIT_WORDS else None


def read_table(path: str, split: Optional[str] = None):
    """A pandas DataFrame from a local file or folder (see the module docstring).

    ``split`` picks a split of a ``DatasetDict`` folder, or the files of a folder whose names carry the split
    (``train-00000-of-00002.parquet``, ``test.jsonl``).
    """
    import pandas as pd

    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    if os.path.isfile(path):
        return _read_file(path)
    # save_to_disk writes state.json (a Dataset) or dataset_dict.json (a DatasetDict); a `datasets` cache folder has
    # only dataset_info.json next to its .arrow files and is read file by file below.
    if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json")):
        return _load_saved_dataset(path, split)
    files = _data_files_in(path)
    if not files:
        raise DataError(f"no .parquet, .jsonl, .json or .arrow files under {path}")
    splits = {_split_of(f) for f in files}
    if split is not None:
        files = [f for f in files if _split_of(f) == split]
        if not files:
            raise DataError(
                f"no files of split {split!r} under {path} (found splits {sorted(s or '?' for s in splits)})"
            )
    elif len(splits - {None}) > 1:
        raise DataError(
            f"{path} holds files of several splits {sorted(s for s in splits if s)}; choose one with --split"
        )
    frames = [_read_file(f) for f in files]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
