"""A math-verify worker process: reads (gold, prediction) pairs on stdin, writes verdicts on stdout.

Started by :mod:`aent.reward.pool` as ``python <this file>`` (a fresh interpreter, never a fork), so it neither
imports the ``aent`` package (and with it torch) nor re-runs the caller's ``__main__``. Each request runs in this
process's main thread with math-verify's own signal-based timeouts switched off; the parent enforces the time limit
by killing the whole process, which is the only way to stop sympy in the middle of a computation.

Protocol (``multiprocessing.connection`` framing over the stdin/stdout pipes):
  worker -> parent  ("ready", pid)                once math-verify is imported
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


def _verdict(gold: str, prediction: str, parse, verify, latex_config, expr_config):
    verdict, detail = _verdict_once(gold, prediction, parse, verify, latex_config, expr_config)
    if verdict == "wrong" and ("\\%" in gold or "\\%" in prediction):
        # MATH's convention: "25\%" and "25" are the same answer. math-verify keeps "25\%" as an unparsed string,
        # so it would only accept the identical text.
        verdict, detail = _verdict_once(
            gold.replace("\\%", ""), prediction.replace("\\%", ""), parse, verify, latex_config, expr_config
        )
        if verdict != "correct":
            verdict = "wrong"
    return verdict, detail


def _verdict_once(gold: str, prediction: str, parse, verify, latex_config, expr_config):
    gold_parsed = parse("\\boxed{" + gold + "}", (latex_config,), parsing_timeout=None)
    if not gold_parsed:
        return "gold_parse_error", ""
    pred_parsed = parse("\\boxed{" + prediction + "}", (latex_config, expr_config), parsing_timeout=None)
    if not pred_parsed:
        return "parse_error", ""
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
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

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from sympy import Basic, MatrixBase

    # math-verify warns once that its timeout is disabled; the parent enforces one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    latex_config = LatexExtractionConfig(boxed_match_priority=0)
    expr_config = ExprExtractionConfig()

    replies.send(("ready", os.getpid()))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return 0
        request_id, gold, prediction = request
        try:
            if prediction is None:  # only check that the gold answer parses to a sympy object
                parsed = parse("\\boxed{" + gold + "}", (latex_config,), parsing_timeout=None)
                ok = any(isinstance(item, (Basic, MatrixBase)) for item in parsed)
                verdict, detail = ("parsed" if ok else "parse_error"), ""
            else:
                verdict, detail = _verdict(gold, prediction, parse, verify, latex_config, expr_config)
        except Exception as exc:  # noqa: BLE001 - any failure of the checker is reported, never raised here
            verdict, detail = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            replies.send((request_id, verdict, detail))
        except (BrokenPipeError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main())
