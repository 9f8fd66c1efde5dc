"""Agreement of ``aent.reward.compute_score`` with an answer checker's own labelled test corpus.

    python scripts/reward_agreement.py --corpus DIR [--show all|disagree|none] [--timeout 10]

DIR is the ``tests/`` folder of math-verify's source distribution (nobody here wrote it; fetch it with
``pip download --no-deps --no-binary :all: math-verify==0.9.0 -d /tmp/mv && tar xzf /tmp/mv/math_verify-0.9.0.tar.gz
-C /tmp/mv``, then ``--corpus /tmp/mv/math_verify-0.9.0/tests``). Nothing of it is copied into this repository: the
script reads the ``@pytest.mark.parametrize`` tables of every ``test_*.py`` there with ``ast`` (no code from the
corpus runs) and keeps the rows that have a gold text, a prediction text and an expected 0/1 label. Rows that ask
math-verify for non-default settings (another precision, ``strict=False``, ``allow_set_relation_comp=True``) are
left out, because the reward always uses the defaults.

Each row is scored twice:
  * "response": the prediction text as the model's whole response (the reward then needs a ``\\boxed{}`` or an
    "answer is" / ``####`` fallback, as in training);
  * "answer": the prediction as the model's boxed answer: unchanged if it has a box, else ``\\boxed{...}`` around it
    (outer ``$`` removed). This isolates the checking from the extraction.
Prints the agreement rates and, per class of disagreement, the rows (file:line, gold, prediction, label, reason).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, NamedTuple

DEFAULTS = {"precision": 6, "strict": True, "allow_set_relation_comp": False}


class Row(NamedTuple):
    where: str
    gold: str
    pred: str
    label: int


def read_corpus(folder: Path) -> List[Row]:
    """The (gold, pred, label) rows of every parametrize table in ``folder/test_*.py`` with default settings."""
    rows: List[Row] = []
    files = sorted(folder.glob("test_*.py"))
    if not files:
        raise SystemExit(f"--corpus {folder}: no test_*.py files there (point it at math-verify's tests/ folder)")
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if not (isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize"):
                    continue
                if len(deco.args) < 2 or not isinstance(deco.args[0], ast.Constant):
                    continue
                names = [n.strip() for n in str(deco.args[0].value).split(",")]
                label_name = next((n for n in ("expected", "result") if n in names), None)
                if "gold" not in names or "pred" not in names or label_name is None:
                    continue
                if not isinstance(deco.args[1], (ast.List, ast.Tuple)):
                    continue
                for element in deco.args[1].elts:
                    try:
                        values = ast.literal_eval(element)
                    except ValueError:
                        continue  # not a literal row
                    if not isinstance(values, tuple) or len(values) != len(names):
                        continue
                    row = dict(zip(names, values))
                    if any(name in row and row[name] != value for name, value in DEFAULTS.items()):
                        continue
                    if not (isinstance(row["gold"], str) and isinstance(row["pred"], str)):
                        continue
                    rows.append(Row(f"{path.name}:{element.lineno}", row["gold"], row["pred"], int(row[label_name])))
    return rows


def as_answer(pred: str) -> str:
    """The prediction as a model's boxed answer."""
    from aent.reward.extract import find_boxes

    if find_boxes(pred).count:
        return pred
    text = pred.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)]
            break
    return "\\boxed{" + text + "}"


def classify(label: int, result: Dict) -> str:
    if result["acc"] == bool(label):
        return "agree"
    if label:
        return f"checker accepts, reward says {result['reason']}"
    return "checker rejects, reward accepts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--corpus", type=Path, required=True, help="math-verify's tests/ folder")
    parser.add_argument("--show", choices=("all", "disagree", "none"), default="disagree")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per answer (default 10)")
    args = parser.parse_args()

    import aent.reward as reward

    rows = read_corpus(args.corpus)
    print(f"{len(rows)} labelled rows from {args.corpus} ({sum(r.label for r in rows)} equivalent, "
          f"{sum(1 - r.label for r in rows)} not)")  # fmt: skip
    for mode in ("response", "answer"):
        responses = [r.pred if mode == "response" else as_answer(r.pred) for r in rows]
        results = reward.compute_score_batch(
            ["math"] * len(rows), responses, [r.gold for r in rows], timeout=args.timeout
        )
        classes: Dict[str, List[int]] = defaultdict(list)
        for i, (row, result) in enumerate(zip(rows, results)):
            classes[classify(row.label, result)].append(i)
        agree = len(classes["agree"])
        print(f"\n## mode {mode}: agreement {agree}/{len(rows)} = {agree / len(rows):.1%}")
        counts = Counter({name: len(members) for name, members in classes.items() if name != "agree"})
        for name, n in counts.most_common():
            print(f"- {name}: {n}")
        if args.show == "none":
            continue
        for name in [*counts] if args.show == "disagree" else [*counts, "agree"]:
            print(f"\n### {mode} / {name}")
            for i in classes[name]:
                row, result = rows[i], results[i]
                print(f"  {row.where}  gold={row.gold!r}  pred={responses[i]!r}  label={row.label}  "
                      f"reason={result['reason']}  extracted={result['pred']!r}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
