"""``aent prepare-data``: local MATH / GSM8K / OpenR1-Math / evaluation files -> verl parquet.

Usage::

    aent prepare-data math_train --input MATH-lighteval/train.parquet --out-dir data/
    aent prepare-data openr1_40k --input OpenR1-Math-220k/data/ --out-dir data/ --num-samples 40000 --seed 0
    aent prepare-data --list

Writes ``<out-dir>/<name>.parquet`` in verl's RL layout (see :mod:`aent.data.sources`). Inputs are local parquet,
jsonl/json, ``datasets`` ``save_to_disk`` folders, or folders of such files (a hub snapshot); nothing is
downloaded. docs/DATA.md says where to get each source file and the OpenR1 filtering rule.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any, Dict, List, Optional

from aent.data.readers import DataError, read_table
from aent.data.sources import (
    INSTRUCTION,
    SOURCES,
    Source,
    answer_to_text,
    gsm8k_answer,
    openr1_answer_rejection,
)
from aent.reward.extract import last_boxed

__all__ = ["DataError", "INSTRUCTION", "SOURCES", "build_rows", "main", "prepare", "read_table"]

OPENR1_DEFAULT_SAMPLES = 40_000
OPENR1_DEFAULT_SEED = 0


def _pick_column(df, candidates, path: str, what: str, override: Optional[str] = None, required: bool = True):
    columns = [str(c) for c in df.columns]
    if override is not None:
        if override not in columns:
            raise DataError(f"{path}: no column {override!r} ({what}); the file has columns {sorted(columns)}")
        return override
    for name in candidates:
        if name in columns:
            return name
    if required:
        raise DataError(
            f"{path}: missing column for {what}: expected one of {list(candidates)}, the file has columns "
            f"{sorted(columns)}. Name the right one with the matching --*-column option."
        )
    return None


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> Python values (parquet structs need one type per field)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def build_rows(
    df,
    source: Source,
    path: str,
    problem_column: Optional[str] = None,
    answer_column: Optional[str] = None,
    indices: Optional[List[int]] = None,
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """verl rows for the rows ``indices`` (default: all) of ``df``. Rows without an answer are dropped (counted)."""
    from tqdm.auto import tqdm

    problem_col = _pick_column(df, source.problem_columns, path, "the problem text", problem_column)
    answer_col = _pick_column(df, source.answer_columns, path, "the final answer", answer_column, required=False)
    solution_col = None
    if answer_col is None:
        solution_col = _pick_column(
            df,
            source.solution_columns or source.answer_columns,
            path,
            "the final answer (or a solution with a \\boxed{} answer)",
        )
    extra_cols = [c for c in source.extra_columns if c in df.columns]

    rows: List[Dict[str, Any]] = []
    dropped = 0
    positions = range(len(df)) if indices is None else indices
    problems = df[problem_col].tolist()
    answers = df[answer_col if answer_col is not None else solution_col].tolist()
    extras = {c: df[c].tolist() for c in extra_cols}
    for i in tqdm(positions, desc=f"{source.name}: rows", disable=not progress, unit="row", mininterval=1.0):
        problem = problems[i]
        raw = answers[i]
        if source.gsm8k_answer:
            gold = gsm8k_answer(raw)
        elif answer_col is not None:
            gold = answer_to_text(raw)
        else:
            gold = last_boxed(str(raw)) if raw is not None else None
        if not isinstance(problem, str) or not problem.strip() or not gold:
            dropped += 1
            continue
        problem = problem.strip()
        extra_info: Dict[str, Any] = {"split": source.split, "index": int(i), "question": problem, "answer": gold}
        for c in extra_cols:
            extra_info[c] = _plain(extras[c][i])
        rows.append(
            {
                "data_source": source.data_source,
                "prompt": [{"role": "user", "content": problem + " " + INSTRUCTION}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": gold},
                "extra_info": extra_info,
            }
        )
    if dropped:
        print(f"{source.name}: dropped {dropped} rows with an empty problem or no answer", file=sys.stderr)
    return rows


def _select_openr1(df, path: str, num_samples: int, seed: int, parse_check: bool, answer_column: Optional[str]):
    """Indices of ``num_samples`` verifiable OpenR1-Math rows, drawn with ``random.Random(seed)`` (deterministic)."""
    from collections import Counter

    from tqdm.auto import tqdm

    answer_col = _pick_column(df, ("answer",), path, "the final answer", answer_column)
    qtypes = df["question_type"].tolist() if "question_type" in df.columns else [None] * len(df)
    verified = df["correctness_math_verify"].tolist() if "correctness_math_verify" in df.columns else [None] * len(df)
    answers = [answer_to_text(a) for a in df[answer_col].tolist()]
    rejected: Counter = Counter()
    candidates = []
    for i, answer in enumerate(answers):
        why = openr1_answer_rejection(answer, qtypes[i], verified[i])
        if why is None:
            candidates.append(i)
        else:
            rejected[why] += 1
    random.Random(seed).shuffle(candidates)

    if not parse_check:
        chosen = candidates[:num_samples]
    else:
        from concurrent.futures import ThreadPoolExecutor

        from aent.reward.pool import get_pool

        pool = get_pool()
        chosen = []
        batch = 64
        with (
            ThreadPoolExecutor(max_workers=2 * pool.num_workers) as executor,
            tqdm(total=min(num_samples, len(candidates)), desc="openr1_40k: sympy parse check", unit="row") as bar,
        ):
            for start in range(0, len(candidates), batch):
                if len(chosen) >= num_samples:
                    break
                part = candidates[start : start + batch]
                verdicts = list(executor.map(lambda i: pool.verify(answers[i], None, 5.0)[0], part))
                for i, verdict in zip(part, verdicts):
                    if verdict == "parsed" and len(chosen) < num_samples:
                        chosen.append(i)
                        bar.update(1)
                    elif verdict != "parsed":
                        rejected["sympy_parse"] += 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items()))
    print(f"openr1_40k: {len(df)} rows, {len(candidates)} pass the text rules; rejected ({summary})", file=sys.stderr)
    if len(chosen) < num_samples:
        print(
            f"openr1_40k: only {len(chosen)} verifiable rows, fewer than --num-samples {num_samples}", file=sys.stderr
        )
    return sorted(chosen)


def prepare(
    name: str,
    input_path: str,
    out_dir: str,
    split: Optional[str] = None,
    num_samples: int = OPENR1_DEFAULT_SAMPLES,
    seed: int = OPENR1_DEFAULT_SEED,
    parse_check: bool = True,
    problem_column: Optional[str] = None,
    answer_column: Optional[str] = None,
    progress: bool = True,
) -> str:
    """Convert one source into ``<out_dir>/<name>.parquet`` and return that path."""
    import pandas as pd

    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r}; choose one of {sorted(SOURCES)}")
    source = SOURCES[name]
    df = read_table(input_path, split=split)
    if len(df) == 0:
        raise DataError(f"{input_path}: no rows")
    indices = None
    if source.row_filter is not None:
        mask, description = source.row_filter(df)
        if mask is None:
            raise DataError(f"{input_path}: missing {description}; the file has columns {sorted(map(str, df.columns))}")
        indices = [i for i, keep in enumerate(mask.tolist()) if keep]
        print(f"{name}: kept {len(indices)} of {len(df)} rows ({description})", file=sys.stderr)
    if name == "openr1_40k":
        if num_samples < 1:
            raise DataError(f"--num-samples must be >= 1, got {num_samples}")
        indices = _select_openr1(df, input_path, num_samples, seed, parse_check, answer_column)
    rows = build_rows(df, source, input_path, problem_column, answer_column, indices, progress)
    if not rows:
        raise DataError(f"{input_path}: no usable rows for {name}")
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(out_dir, f"{name}.parquet")
    pd.DataFrame(rows).to_parquet(out_path, index=False)
    print(f"{name}: wrote {len(rows)} rows to {out_path}", file=sys.stderr)
    return out_path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aent prepare-data",
        description="Convert a local source file into verl RL parquet (<out-dir>/<name>.parquet). See docs/DATA.md.",
    )
    parser.add_argument("name", nargs="?", choices=sorted(SOURCES), help="which data set to write")
    parser.add_argument(
        "--input", "-i", help="local .parquet / .jsonl / .json file, save_to_disk folder or folder of files"
    )
    parser.add_argument("--out-dir", "-o", default="data", help="output folder (default: data)")
    parser.add_argument("--split", help="split to read from a DatasetDict folder or a folder of split files")
    parser.add_argument("--num-samples", type=int, default=OPENR1_DEFAULT_SAMPLES, help="openr1_40k: rows to draw")
    parser.add_argument("--seed", type=int, default=OPENR1_DEFAULT_SEED, help="openr1_40k: sampling seed")
    parser.add_argument(
        "--no-parse-check", action="store_true", help="openr1_40k: skip the math-verify parse check of answers"
    )
    parser.add_argument("--problem-column", help="column with the problem text (default: by data set)")
    parser.add_argument("--answer-column", help="column with the final answer (default: by data set)")
    parser.add_argument("--list", action="store_true", help="list the data sets and where to get their sources")
    args = parser.parse_args(argv)

    if args.list or args.name is None:
        for source in SOURCES.values():
            print(f"{source.name:14s} data_source={source.data_source!r:30s} {source.where}")
        return 0 if args.list else 2
    if not args.input:
        parser.error("--input is required (a local file or folder; nothing is downloaded)")
    try:
        prepare(
            args.name,
            args.input,
            args.out_dir,
            split=args.split,
            num_samples=args.num_samples,
            seed=args.seed,
            parse_check=not args.no_parse_check,
            problem_column=args.problem_column,
            answer_column=args.answer_column,
        )
    except DataError as exc:
        print(f"aent prepare-data: error: {exc}", file=sys.stderr)
        return 1
    return 0
