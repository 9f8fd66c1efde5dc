"""A math-verify worker process: reads (gold, prediction) pairs on stdin, writes verdicts on stdout.

Started by :mod:`aent.reward.pool` as ``python <this file>`` (a fresh interpreter, never a fork), so it neither
imports the ``aent`` package (and with it torch) nor re-runs the caller's ``__main__``. Each request runs in this
process's main thread with math-verify's own signal-based timeouts switched off; the parent enforces the time limit
by killing the whole process, which is the only way to stop sympy in the middle of a computation.

Protocol (``multiprocessing.connection`` framing over the stdin/stdout pipes):
  worker -> parent  ("ready", pid)                once math-verify is imported and has checked one answer
  parent -> worker  (request_id, gold, prediction)
  worker -> parent  (request_id, verdict, detail) verdict in {"correct", "wrong", "parse_error", "gold_parse_error",
                                                  "error"}
  With prediction None the worker only parses the gold answer: verdict "parsed" (to a sympy object) or
  "parse_error".
"""

import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection


def _exit_when_orphaned(parent_pid: int) -> None:
    """Stop this worker if its parent dies while a computation is running (stdin EOF is only seen between requests)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


class Checker:
    """math-verify's parse and verify with this reward's rules; gold answers are parsed once (GRPO scores each gold
    against a whole group of responses)."""

    def __init__(self):
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from math_verify.grader import is_assignment_relation, is_equation

        self._parse, self._verify = parse, verify
        self._is_equation, self._is_assignment = is_equation, is_assignment_relation
        self._latex = (LatexExtractionConfig(boxed_match_priority=0),)
        self._latex_expr = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
        self._gold_cache = {}

    def parse_gold(self, gold: str):
        parsed = self._gold_cache.get(gold)
        if parsed is None:
            parsed = self._parse("\\boxed{" + gold + "}", self._latex, parsing_timeout=None)
            if len(self._gold_cache) >= 4096:
                self._gold_cache.clear()
            self._gold_cache[gold] = parsed
        return parsed

    def verdict(self, gold: str, prediction: str):
        verdict, detail = self._verdict_once(gold, prediction)
        if verdict == "wrong" and ("\\%" in gold or "\\%" in prediction):
            # MATH's convention: "25\\%" and "25" are the same answer. math-verify keeps "25\\%" as an unparsed
            # string, so it would only accept the identical text.
            verdict, detail = self._verdict_once(gold.replace("\\%", ""), prediction.replace("\\%", ""))
            if verdict != "correct":
                verdict = "wrong"
        return verdict, detail

    def _verdict_once(self, gold: str, prediction: str):
        gold_parsed = self.parse_gold(gold)
        if not gold_parsed:
            return "gold_parse_error", ""
        pred_parsed = self._parse("\\boxed{" + prediction + "}", self._latex_expr, parsing_timeout=None)
        if not pred_parsed:
            return "parse_error", ""
        if not any(self._is_equation(g) for g in gold_parsed if not isinstance(g, str)) and any(
            self._is_equation(p) and not self._is_assignment(p) for p in pred_parsed if not isinstance(p, str)
        ):
            # math-verify compares the right-hand side of an equation answer with a plain gold ("1 and 9=1 -> 1,1"),
            # so "13=12" or "13 because 3*4=12" would match 12. Only an assignment ("x = 12") may stand for a value.
            return "wrong", "equation answer to a plain gold"
        if self._verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return "correct", ""
        return "wrong", ""


def main() -> int:
    # The protocol owns the original stdout; anything the libraries print goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = Connection(0, writable=False)
    replies = Connection(out_fd, readable=False)

    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()

    from sympy import Basic, MatrixBase

    # math-verify warns once that its timeout is disabled; the parent enforces one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    checker = Checker()
    # The first check in a fresh interpreter builds the parsers and sympy's caches (~1 s on a busy host); do it now, so
    # that it counts as start-up, not against the first real answer's time limit.
    checker.verdict("\\frac{1}{2}", "0.5")
    checker._gold_cache.clear()

    replies.send(("ready", os.getpid()))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return 0
        request_id, gold, prediction = request
        try:
            if prediction is None:  # only check that the gold answer parses to a sympy object
                parsed = checker.parse_gold(gold)
                ok = any(isinstance(item, (Basic, MatrixBase)) for item in parsed)
                verdict, detail = ("parsed" if ok else "parse_error"), ""
            else:
                verdict, detail = checker.verdict(gold, prediction)
        except Exception as exc:  # any failure of the checker is reported, never raised here
            verdict, detail = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            replies.send((request_id, verdict, detail))
        except (BrokenPipeError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main())
