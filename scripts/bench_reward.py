"""Throughput and start-up cost of ``aent.reward.compute_score``.

    python scripts/bench_reward.py [--prompts 64] [--group 16] [--threads 16] [--workers N]

Measures, in one fresh process:
  * import time of ``aent.reward`` (the ``aent`` package, hence torch, is part of it),
  * the first call that needs math-verify (starts one worker process: interpreter + sympy + math-verify),
  * answers/second for a GRPO-like batch: ``--prompts`` problems x ``--group`` responses each, scored from
    ``--threads`` threads as verl's reward loop does; each group mixes the exact gold text, equivalent spellings
    (need sympy), wrong answers and responses without an answer,
  * the same batch again with every (gold, answer) pair unique and the verdict cache cleared (worst case).
Prints a markdown table row per measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

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
FILLER = "Let us set up the equation and simplify step by step. " * 40  # ~2 KB of reasoning before the answer


def make_batch(rng: random.Random, prompts: int, group: int, unique: bool):
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
            text = FILLER + (f"So the final answer is $\\boxed{{{answer}}}$." if answer is not None else "I give up.")
            batch.append(("lighteval/MATH", text, gold_u))
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=None, help="math-verify processes (default: AENT_REWARD_WORKERS)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.workers is not None:
        os.environ["AENT_REWARD_WORKERS"] = str(args.workers)

    t0 = time.perf_counter()
    import aent.reward as reward
    from aent.reward.pool import get_pool

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = reward.compute_score("lighteval/MATH", "\\boxed{0.5}", "\\frac12")
    first_s = time.perf_counter() - t0
    assert first["acc"], first
    t0 = time.perf_counter()
    reward.warmup()
    warm_s = time.perf_counter() - t0

    rng = random.Random(args.seed)
    host = f"{platform.node()} ({os.cpu_count()} cpus, {platform.processor() or platform.machine()})"
    print(
        f"# {time.strftime('%Y-%m-%d')} | python {sys.version.split()[0]} | {host} | "
        f"workers {get_pool().num_workers} | threads {args.threads}"
    )
    print(
        f"import aent.reward: {import_s:.2f} s; first call (starts one worker): {first_s:.2f} s; "
        f"starting the remaining workers: {warm_s:.2f} s"
    )
    print("| batch | answers | seconds | answers/s | correct | wrong | no_answer | timeout | parse_error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, unique in (
        ("GRPO-like groups (repeats hit the cache)", False),
        ("all pairs unique, cache cleared", True),
    ):
        batch = make_batch(rng, args.prompts, args.group, unique)
        reward._cache.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as executor:
            results = list(executor.map(lambda job: reward.compute_score(*job), batch))
        seconds = time.perf_counter() - t0
        counts = {k: sum(r["reason"] == k for r in results) for k in reward.REASONS}
        print(
            f"| {label} | {len(batch)} | {seconds:.2f} | {len(batch) / seconds:.0f} | {counts['correct']} | "
            f"{counts['wrong']} | {counts['no_answer']} | {counts['timeout']} | {counts['parse_error']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
