"""Throughput, scaling and time-limit behaviour of the math reward (``aent.reward``) on a CPU.

    python scripts/bench_reward.py [--prompts 512] [--group 16] [--workers 1,2] [--csv benchmarks/reward.csv]

For each worker count (``AENT_REWARD_WORKERS``), in this one process:
  * start-up: the worker processes (interpreter + sympy + math-verify + one warm-up check each, plus the spare),
  * scores/s for one GRPO step: ``--prompts`` problems x ``--group`` responses (defaults: 512 x 16 = 8,192, the
    paper's setting (a)), each ~``--response-bytes`` of reasoning then an answer, scored with
    ``aent.reward.compute_score_batch``; each group mixes the exact gold text, equivalent spellings (need sympy),
    wrong answers and responses without an answer ("GRPO-like": repeats within a group hit the verdict cache),
  * the same step with every (gold, answer) pair unique and the cache cleared (worst case: every answer to sympy),
  * for both, the CPU seconds the workers and this process spent (Linux ``/proc``), hence answers per CPU-second:
    on a shared host the wall-clock rate measures the share of the CPU the run got; answers per CPU-second times
    the free cores estimates the rate on an idle host,
  * a hanging answer with ``timeout=1.5``: when the call returned, and how long the next call took (the warm
    spare serves it; no wait for a replacement).
Prints a table and appends one row per measurement to ``--csv`` (with date, device and versions; benchlib).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "scripts", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from benchlib import append_csv, environment, print_table  # noqa: E402

FIELDS = [
    "date_utc", "device", "torch", "math_verify", "sympy", "load_1min", "workers", "measurement", "answers",
    "seconds", "scores_per_s", "cpu_s", "answers_per_cpu_s", "correct", "wrong", "no_answer", "timeout", "parse_error", "bad_ground_truth",
]  # fmt: skip

# (gold, equivalent spellings, wrong answers): MATH-like answers of the kinds seen in training
ANSWER_KINDS = [
    ("\\frac{{{a}}}{{{b}}}", ["\\dfrac{{{a}}}{{{b}}}", "{a}/{b}"], ["\\frac{{{b}}}{{{a}}}", "{a}"]),
    ("{n}", ["{n}.0", "{n}\\text{{ units}}"], ["{m}", "-{n}"]),
    ("{a}\\sqrt{{{c}}}", ["\\sqrt{{{a2c}}}"], ["{b}\\sqrt{{{c}}}", "{a}"]),
    ("({a}, {b})", ["\\left({a},{b}\\right)"], ["({b}, {a})", "({a}, {m})"]),
    ("[{a}, {b2})", ["[{a},{b2})"], ["({a}, {b2})", "[{a}, {b2}]"]),
    ("x^2+{a}x+{b}", ["{b}+{a}x+x^2"], ["x^2+{b}x+{a}"]),
    ("{a}\\pi", ["{a} \\pi", "\\pi{a}"], ["{b}\\pi"]),
    ("{n}^\\circ", ["{n}"], ["{m}^\\circ"]),
]
FILLER_SENTENCE = "Let us set up the equation and simplify step by step. "


def make_batch(rng: random.Random, prompts: int, group: int, unique: bool, response_bytes: int):
    filler = FILLER_SENTENCE * max(1, response_bytes // len(FILLER_SENTENCE))
    batch = []
    for p in range(prompts):
        gold_t, equiv_t, wrong_t = ANSWER_KINDS[p % len(ANSWER_KINDS)]
        a, b = rng.randint(2, 50), rng.randint(51, 99)
        c = rng.choice([2, 3, 5, 7])
        values = dict(a=a, b=b, c=c, a2c=a * a * c, b2=b + 1, n=rng.randint(100, 9999), m=rng.randint(10, 99))
        gold = gold_t.format(**values)
        for r in range(group):
            u = rng.random()
            if u < 0.45:
                answer = gold  # the exact text (shortcut)
            elif u < 0.65:
                answer = rng.choice(equiv_t).format(**values)
            elif u < 0.93:
                answer = rng.choice(wrong_t).format(**values)
                if unique:
                    answer = f"{answer}+{p * group + r + 1}"
            else:
                answer = None
            if unique and answer is not None and u >= 0.45 and u < 0.65:
                gold_u, answer = f"{gold}+{p * group + r + 1}", f"{answer}+{p * group + r + 1}"
            else:
                gold_u = gold
            text = filler + (f"So the final answer is $\\boxed{{{answer}}}$." if answer is not None else "I give up.")
            batch.append(("lighteval/MATH", text, gold_u))
    return batch


def _cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (Linux /proc; 0 where unreadable)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _math_verify_version() -> str:
    from importlib.metadata import version

    return version("math-verify")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--response-bytes", type=int, default=1000, help="reasoning text before each answer")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: AENT_REWARD_WORKERS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "reward.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    args = parser.parse_args()
    if args.prompts < 1 or args.group < 1:
        parser.error("--prompts and --group must be >= 1")

    import aent.reward as reward
    from aent.reward import pool as pool_module

    counts = [int(w) for w in args.workers.split(",")] if args.workers else [pool_module.default_num_workers()]
    env = environment("cpu", extra=("sympy",))
    env["math_verify"] = _math_verify_version()
    rows = []

    def record(workers, measurement, n, seconds, results=(), cpu_s=None):
        row = dict(env, workers=workers, measurement=measurement, answers=n, seconds=f"{seconds:.2f}")
        if cpu_s:
            row["cpu_s"] = f"{cpu_s:.1f}"
            row["answers_per_cpu_s"] = f"{n / cpu_s:.0f}"
        row["load_1min"] = f"{os.getloadavg()[0]:.1f}"
        if results:
            row["scores_per_s"] = f"{n / seconds:.0f}"
            for reason in reward.REASONS:
                row[reason] = sum(r["reason"] == reason for r in results)
        rows.append(row)
        print(f"workers {workers}: {measurement}: {n} in {seconds:.2f} s", flush=True)

    for workers in counts:
        os.environ["AENT_REWARD_WORKERS"] = str(workers)
        reward.shutdown()
        t0 = time.perf_counter()
        reward.warmup()
        record(workers, f"start-up ({workers} workers + 1 spare)", workers + 1, time.perf_counter() - t0)
        for label, unique in (("GRPO-like step (repeats hit the cache)", False), ("unique pairs, cache cleared", True)):
            batch = make_batch(random.Random(args.seed), args.prompts, args.group, unique, args.response_bytes)
            reward._cache.clear()
            pids = pool_module.get_pool().worker_pids()
            cpu0, own0 = _cpu_seconds(pids), time.process_time()
            t0 = time.perf_counter()
            results = reward.compute_score_batch(*(list(column) for column in zip(*batch)))
            seconds = time.perf_counter() - t0
            # CPU of the workers and of this process (extraction, threads): what the step costs whatever the load
            cpu_s = _cpu_seconds(pids) - cpu0 + time.process_time() - own0
            record(workers, label, len(batch), seconds, results, cpu_s)
        t0 = time.perf_counter()
        hang = reward.compute_score("lighteval/MATH", r"\boxed{9^{9^{9^{9}}}}", "3", timeout=1.5)
        record(workers, f"hanging answer, timeout=1.5 ({hang['reason']})", 1, time.perf_counter() - t0)
        reward._cache.clear()  # the next call must reach a worker
        t0 = time.perf_counter()
        reward.compute_score("lighteval/MATH", r"\boxed{\sqrt{12}}", r"2\sqrt{3}")
        record(workers, "the next call after it", 1, time.perf_counter() - t0)
    reward.shutdown()

    print()
    cols = ["workers", "measurement", "answers", "seconds", "scores_per_s", "cpu_s", "answers_per_cpu_s", "timeout"]
    print_table(rows, cols + ["load_1min"])
    if not args.no_csv:
        append_csv(args.csv, rows, FIELDS)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
