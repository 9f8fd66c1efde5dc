"""The math reward: a table of real-looking cases, extraction rules, verl loading, threads and asyncio."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from aent_test_support.deps import require

require("math_verify", "math", find_only=True)  # find_only: importing it here would defeat the lightness checks

import aent.reward as reward  # noqa: E402
from aent.reward import compute_score  # noqa: E402
from aent.reward.extract import (  # noqa: E402
    MAX_BOXES,
    extract,
    extract_answer,
    find_boxes,
    last_boxed,
    normalize_answer_text,
    normalize_for_match,
    normalize_ground_truth,
)

MATH = "lighteval/MATH"
GSM = "openai/gsm8k"
OPENR1 = "open-r1/OpenR1-Math-220k"

STEPS = "Let me work through it. First we simplify, then we substitute back.\n"

# (data_source, ground_truth, response, expected reason). Correct cases check equivalent spellings; wrong cases check
# that near misses are rejected.
CASES = [
    # fractions, decimals, \dfrac, \frac12
    (MATH, r"\frac{1}{2}", STEPS + r"The answer is $\boxed{\dfrac{1}{2}}$.", "correct"),
    (MATH, r"\frac{1}{2}", STEPS + r"So we get $\boxed{0.5}$", "correct"),
    (MATH, r"\frac{1}{2}", STEPS + r"$\boxed{\frac12}$", "correct"),
    (MATH, r"\frac{1}{2}", STEPS + r"$\boxed{\tfrac{1}{2}}$", "correct"),
    (MATH, r"\frac{1}{2}", STEPS + r"$\boxed{1/2}$", "correct"),
    (MATH, r"0.5", STEPS + r"$\boxed{\frac{1}{2}}$", "correct"),
    (MATH, r"\frac{3}{4}", STEPS + r"$\boxed{\frac{6}{8}}$", "correct"),
    (MATH, r"\frac{1}{2}", STEPS + r"$\boxed{\frac{1}{3}}$", "wrong"),
    (MATH, r"\frac{1}{3}", STEPS + r"$\boxed{0.33}$", "wrong"),
    (MATH, r"-\frac{2}{3}", STEPS + r"$\boxed{\frac{-2}{3}}$", "correct"),
    (MATH, r"-\frac{2}{3}", STEPS + r"$\boxed{\frac{2}{3}}$", "wrong"),
    # integers and big numbers
    (MATH, "42", STEPS + r"\boxed{42}", "correct"),
    (MATH, "42", STEPS + r"\boxed{ 42 }", "correct"),
    (MATH, "42", STEPS + r"\boxed{43}", "wrong"),
    (MATH, "1000000", STEPS + r"\boxed{10^6}", "correct"),
    (MATH, "10", STEPS + r"\boxed{10.0}", "correct"),
    (MATH, "-7", STEPS + r"\boxed{-7}", "correct"),
    (MATH, "-7", STEPS + r"\boxed{7}", "wrong"),
    # roots, pi, expressions
    (MATH, r"2\sqrt{3}", STEPS + r"$\boxed{\sqrt{12}}$", "correct"),
    (MATH, r"2\sqrt{3}", STEPS + r"$\boxed{2\sqrt3}$", "correct"),
    (MATH, r"2\sqrt{3}", STEPS + r"$\boxed{3\sqrt{2}}$", "wrong"),
    (MATH, r"\frac{\sqrt{2}}{2}", STEPS + r"$\boxed{\frac{1}{\sqrt{2}}}$", "correct"),
    (MATH, r"4\pi", STEPS + r"$\boxed{4 \pi}$", "correct"),
    (MATH, r"4\pi", STEPS + r"$\boxed{\pi \cdot 4}$", "correct"),
    (MATH, r"4\pi", STEPS + r"$\boxed{2\pi}$", "wrong"),
    (MATH, r"x^2+2x+1", STEPS + r"$\boxed{(x+1)^2}$", "correct"),
    (MATH, r"x^2+2x+1", STEPS + r"$\boxed{(x-1)^2}$", "wrong"),
    (MATH, r"3+2i", STEPS + r"$\boxed{2i+3}$", "correct"),
    # \left \right, \text, units, degrees, percentages
    (MATH, r"\left( 3, \frac{\pi}{2} \right)", STEPS + r"$\boxed{(3, \frac{\pi}{2})}$", "correct"),
    (MATH, r"\text{(C)}", STEPS + r"$\boxed{\text{(C)}}$", "correct"),
    (MATH, r"\text{(C)}", STEPS + r"$\boxed{\text{(D)}}$", "wrong"),
    (MATH, r"\text{Monday}", STEPS + r"$\boxed{\text{Monday}}$", "correct"),
    (MATH, "5", STEPS + r"$\boxed{5 \text{ cm}}$", "correct"),
    (MATH, r"12\text{ inches}", STEPS + r"$\boxed{12}$", "correct"),
    (MATH, "90", STEPS + r"$\boxed{90^\circ}$", "correct"),
    (MATH, r"30^\circ", STEPS + r"$\boxed{30}$", "correct"),
    (MATH, r"30^\circ", STEPS + r"$\boxed{60^\circ}$", "wrong"),
    (MATH, r"25\%", STEPS + r"$\boxed{25}$", "correct"),
    (MATH, r"25\%", STEPS + r"$\boxed{25\%}$", "correct"),
    (MATH, r"25\%", STEPS + r"$\boxed{0.25}$", "wrong"),  # a percentage question wants the percentage
    (MATH, r"25\%", STEPS + r"$\boxed{26\%}$", "wrong"),
    (MATH, r"\$18.90", STEPS + r"$\boxed{18.90}$", "correct"),
    # intervals, sets, tuples, matrices
    (MATH, r"[2, 5)", STEPS + r"$\boxed{[2,5)}$", "correct"),
    (MATH, r"[2, 5)", STEPS + r"$\boxed{[2,5]}$", "wrong"),
    (MATH, r"(-\infty, 3)", STEPS + r"$\boxed{(-\infty,3)}$", "correct"),
    (MATH, r"(-\infty, -2) \cup (2, \infty)", STEPS + r"$\boxed{(-\infty,-2)\cup(2,\infty)}$", "correct"),
    (MATH, r"\{1, 2, 3\}", STEPS + r"$\boxed{\{3, 2, 1\}}$", "correct"),
    (MATH, r"\{1, 2, 3\}", STEPS + r"$\boxed{\{1, 2\}}$", "wrong"),
    (MATH, r"(1, 2)", STEPS + r"$\boxed{(1,2)}$", "correct"),
    (MATH, r"(1, 2)", STEPS + r"$\boxed{(2,1)}$", "wrong"),
    (MATH, r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", STEPS + r"$\boxed{\begin{pmatrix}1\\2\end{pmatrix}}$", "correct"),
    (
        MATH,
        r"\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}",
        STEPS + r"$\boxed{\begin{pmatrix} 1 & 0 \\ 0 & 2 \end{pmatrix}}$",
        "wrong",
    ),
    (MATH, r"x = 3", STEPS + r"$\boxed{3}$", "correct"),
    (MATH, r"3", STEPS + r"$\boxed{x=3}$", "correct"),
    # nested and several boxes, no answer, cut-off responses
    (MATH, "5", STEPS + r"$\boxed{\boxed{5}}$", "correct"),
    (MATH, "5", STEPS + r"First guess \boxed{3}. On reflection the answer is \boxed{5}.", "correct"),
    (MATH, "3", STEPS + r"First guess \boxed{3}. On reflection the answer is \boxed{5}.", "wrong"),
    (MATH, r"\frac{1}{2}", STEPS + r"so $\boxed{\frac{1}{2}}$ ... wait, let me recheck \boxed{\frac{1}", "no_answer"),
    (MATH, "5", STEPS + "and so on, I am not sure.", "no_answer"),
    (MATH, "5", "", "no_answer"),
    (MATH, "5", STEPS + r"\boxed{}", "no_answer"),
    (MATH, "5", STEPS + r"\fbox{5}", "correct"),
    (MATH, "5", STEPS + r"so the answer is $\boxed 5$.", "correct"),
    # fallbacks: GSM8K marker and an answer phrase
    (GSM, "Natalia sold 48/2 = 24 clips in May. ... #### 72", "She sold 48 + 24 = 72 clips.\n#### 72", "correct"),
    (GSM, "#### 1000", STEPS + r"\boxed{1,000}", "correct"),
    (GSM, "1,000", STEPS + "#### 1000", "correct"),
    (GSM, "72", STEPS + r"The final answer is $72$.", "correct"),
    (GSM, "72", STEPS + r"\boxed{\$72}", "correct"),
    (GSM, "72", STEPS + "#### 71", "wrong"),
    # full-solution gold (MATH lighteval layout)
    (MATH, r"We compute ... so the result is $\boxed{\frac{7}{2}}$.", STEPS + r"$\boxed{3.5}$", "correct"),
    # OpenR1-Math answers
    (OPENR1, r"$\frac{\pi}{4}$", STEPS + r"$\boxed{\frac{\pi}{4}}$", "correct"),
    (OPENR1, r"2016", STEPS + r"$\boxed{2016}$", "correct"),
    (OPENR1, r"x \in [1, 2]", STEPS + r"$\boxed{[1,2]}$", "correct"),
    (OPENR1, r"f(x)=2x+1", STEPS + r"$\boxed{f(x) = 1 + 2x}$", "correct"),
    # fallbacks take the answer only, never the rest of the line (math-verify would take its last number)
    (MATH, "12", STEPS + "The answer is 13 because 3*4=12.", "wrong"),
    (MATH, "13", STEPS + "The answer is 13 because 3*4=12.", "correct"),
    (GSM, "12", STEPS + "#### 13 since 3*4 = 12", "wrong"),
    (MATH, "12", STEPS + "The answer is $13$, as 3*4=12.", "wrong"),
    (MATH, r"\frac{1}{2}", STEPS + r"The final answer is \frac{1}{2}; we are done.", "correct"),
    # an equation does not stand for its right-hand side unless it assigns a variable
    (MATH, "12", STEPS + r"\boxed{13 = 12}", "wrong"),
    (MATH, "12", STEPS + r"\boxed{13 \text{ because } 3*4=12}", "wrong"),
    (MATH, "12", STEPS + r"\boxed{x = 12}", "correct"),
    # several top-level boxes as one answer; the last box alone still counts
    (MATH, r"\{1, 2, 3\}", STEPS + r"$\boxed{1}, \boxed{2}, \boxed{3}$", "correct"),
    (MATH, "1, 2, 3", STEPS + r"$\boxed{3}, \boxed{1}, \boxed{2}$", "correct"),
    (MATH, r"(1, 2)", STEPS + r"$x=\boxed{1}$ and $y=\boxed{2}$", "correct"),
    (MATH, "3", STEPS + r"$\boxed{1}, \boxed{2}, \boxed{3}$", "correct"),
    (MATH, "5", STEPS + "".join(rf"\boxed{{{i}}} " for i in range(1, 11)), "wrong"),  # boxing every candidate
    (MATH, r"\{1, 2, 3\}", STEPS + r"$\boxed{1}, \boxed{2}$", "wrong"),
    # percent forms, unicode fractions and minus signs
    (MATH, "100", STEPS + r"\boxed{100%}", "correct"),
    (MATH, r"28\%", STEPS + r"\boxed{28 %}", "correct"),
    (MATH, r"28\%", STEPS + r"\boxed{28\,\%}", "correct"),
    (MATH, r"28\%", STEPS + r"\boxed{29%}", "wrong"),
    (MATH, r"\frac{1}{2}", STEPS + r"\boxed{½}", "correct"),
    (MATH, r"\frac{5}{2}", STEPS + r"\boxed{2½}", "correct"),
    (MATH, r"\frac{3}{4}", STEPS + r"\boxed{¼}", "wrong"),
    (MATH, "-3", STEPS + "\\boxed{\u22123}", "correct"),
    (MATH, "3", STEPS + "\\boxed{\u22123}", "wrong"),
    # a broken ground truth is a data error, never "wrong"
    (MATH, None, STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, "", STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, "  ", STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, float("nan"), STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, {"answer": "3"}, STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, [], STEPS + r"\boxed{3}", "bad_ground_truth"),
    (MATH, ["1", None], STEPS + r"\boxed{1, 2}", "bad_ground_truth"),
    (MATH, None, "no answer at all", "bad_ground_truth"),
    (GSM, "#### ", STEPS + "#### 3", "bad_ground_truth"),
    (MATH, 72, STEPS + r"\boxed{72}", "correct"),  # parquet may store a number
]


@pytest.fixture(scope="module", autouse=True)
def _warm_pool():
    reward.warmup()
    yield


@pytest.mark.parametrize("data_source,ground_truth,response,expected", CASES)
def test_case_table(data_source, ground_truth, response, expected):
    result = compute_score(data_source, response, ground_truth, {"index": 0})
    assert result["reason"] == expected, result
    assert result["acc"] is (expected == "correct")
    assert result["score"] == (1.0 if expected == "correct" else 0.0)
    assert set(result) == {"score", "acc", "pred", "reason", "format_ok", "bad_ground_truth"}
    assert result["bad_ground_truth"] == (1.0 if expected == "bad_ground_truth" else 0.0)
    if expected == "no_answer":
        assert result["pred"] is None


def test_every_reason_is_reachable():
    """REASONS lists exactly the reasons compute_score gives (the timeout one is in test_reward_adversarial.py)."""
    seen = {compute_score(ds, resp, gold)["reason"] for ds, gold, resp, _ in CASES}
    seen.add(compute_score(MATH, r"\boxed{9^{9^{9^{9}}}}", "3", timeout=0.5)["reason"])
    seen.add(compute_score(MATH, r"\boxed{" + "1+" * 1500 + "1}", "3")["reason"])  # over MAX_ANSWER_CHARS
    assert seen == set(reward.REASONS)


def test_last_boxed_rules():
    assert last_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"a \boxed{1} b \boxed{2} c") == "2"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{x=\boxed{5}}") == r"x=\boxed{5}"
    assert last_boxed(r"\boxed{\boxed{5}}") == "5"
    assert last_boxed(r"\boxed{1} then \boxed{2") is None  # cut off
    assert last_boxed(r"\boxed 7.") == "7"
    assert last_boxed("no box") is None
    assert last_boxed("{" * 100000 + r"\boxed{1}") == "1"  # linear, no recursion
    assert last_boxed(r"\boxed{\boxed{\boxed{5}}}") == "5"
    assert last_boxed(r"\boxed{\boxed{1} + \boxed{2}}") == r"\boxed{1} + \boxed{2}"
    assert last_boxed(r"\boxed{a\}b}") == r"a\}b"
    assert last_boxed(r"\boxedfoo{1}") is None
    boxes = find_boxes(r"\boxed{1}, \fbox{2}, \boxed 3, \boxed{}")
    assert boxes == (["1", "2", "3"], 3, True)
    assert find_boxes(r"\boxed{1}" * (MAX_BOXES + 4)).count == MAX_BOXES + 4
    assert extract(r"\boxed{1}" * (MAX_BOXES + 1)).boxes == []  # a long list of boxes is not one answer


def test_extract_answer_order():
    assert extract_answer("#### 5\nThe answer is 6. \\boxed{7}") == ("7", "boxed")
    assert extract_answer("#### 5\nThe answer is 6.") == ("5", "gsm8k_marker")
    assert extract_answer("So the final answer is: $6$.") == ("6", "answer_phrase")
    assert extract_answer("nothing here") == (None, None)
    assert extract_answer("The answer is 13 because 3*4=12.") == ("13", "answer_phrase")
    assert extract_answer("The answer is $-\\frac{1}{2}$ since x<0") == ("-\\frac{1}{2}", "answer_phrase")
    assert extract_answer("The answer is 3.5.") == ("3.5", "answer_phrase")
    assert extract_answer("The answer is (1, 2), found above") == ("(1, 2)", "answer_phrase")
    assert extract_answer("#### 1,000 dollars\nmore text") == ("1,000", "gsm8k_marker")


def test_ground_truth_normalisation():
    assert normalize_ground_truth(GSM, "He has 3,000 + 500 = 3,500.\n#### 3,500") == "3500"
    assert normalize_ground_truth(MATH, r"Thus $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert normalize_ground_truth(MATH, "1,000") == "1,000"  # a tuple in MATH is not a thousands separator
    assert normalize_ground_truth(OPENR1, r"$\frac{\pi}{4}$") == r"\frac{\pi}{4}"
    assert normalize_ground_truth("olympiadbench", ["$1$", "$2$"]) == "1, 2"
    assert normalize_ground_truth(MATH, r"$$\boxed{2}, \boxed{3}, \boxed{5}$$") == "2, 3, 5"
    assert normalize_ground_truth(MATH, np.array(["1", "2"])) == "1, 2"
    assert normalize_ground_truth(MATH, np.int64(7)) == "7"
    for bad in (None, "", " ", float("nan"), True, {}, [], ["1", ""], b"\xff"):
        assert normalize_ground_truth(MATH, bad) is None, bad


def test_answer_text_normalisation():
    assert normalize_answer_text("\u22123") == "-3"
    assert normalize_answer_text("½") == r"\frac{1}{2}"
    assert normalize_answer_text("2½") == r"(2+\frac{1}{2})"
    assert normalize_answer_text("100%") == r"100\%"
    assert normalize_answer_text("28 %") == r"28\%"
    assert normalize_answer_text(r"25\%") == r"25\%"


def test_exact_match_normal_form_is_conservative():
    assert normalize_for_match(r"\dfrac{1}{2}") == normalize_for_match(r"\frac{1}{2}")
    assert normalize_for_match(r"\left( 1, 2 \right)") == normalize_for_match("(1,2)")
    assert normalize_for_match(r"\pi r") != normalize_for_match(r"\pir")
    assert normalize_for_match("1 2") != normalize_for_match("12")
    assert normalize_for_match(r"\leftarrow") == r"\leftarrow"


def test_format_penalty_and_kwargs():
    boxed = compute_score(MATH, r"\boxed{3}", "3", format_penalty=0.25)
    assert boxed["score"] == 1.0 and boxed["format_ok"]
    unboxed = compute_score(MATH, "The answer is 3.", "3", format_penalty=0.25, reward_router_address=None)
    assert unboxed["score"] == 0.75 and unboxed["acc"] and not unboxed["format_ok"]
    missing = compute_score(MATH, "no idea", "3", format_penalty=0.25)
    assert missing["score"] == -0.25 and missing["reason"] == "no_answer"
    with pytest.raises(ValueError, match="timeout"):
        compute_score(MATH, r"\boxed{3}", "3", timeout=0)


def test_unknown_keyword_arguments_are_refused_with_the_known_ones():
    """reward_kwargs.timout=10 (a typo) must not do nothing silently."""
    for call in (
        lambda: compute_score(MATH, r"\boxed{3}", "3", timout=10),
        lambda: reward.compute_score_batch([MATH], [r"\boxed{3}"], ["3"], timout=10),
        lambda: asyncio.run(reward.compute_score_async(MATH, r"\boxed{3}", "3", timout=10)),
    ):
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert "['timout']" in msg and "timeout" in msg and "format_penalty" in msg and "reward_router_address" in msg
    # what verl's reward managers pass with a reward model is accepted
    assert compute_score(MATH, r"\boxed{3}", "3", reward_router_address="x", reward_model_tokenizer=None)["acc"]


@pytest.mark.parametrize("name", ["AENT_REWARD_TIMEOUT", "AENT_REWARD_STARTUP_TIMEOUT"])
def test_malformed_reward_environment_variables_name_the_variable(name, monkeypatch):
    # importing the reward with a malformed value works (it is read where it is used) ...
    env = dict(__import__("os").environ, **{name: "5s"})
    proc = subprocess.run([sys.executable, "-c", "import aent.reward"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    # ... and its use names it
    from aent.reward.pool import env_seconds

    for bad in ("5s", "0", "-1", "nan", "inf"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"environment variable {name} must be a number of seconds > 0"):
            env_seconds(name, 1.0)
    monkeypatch.setenv("AENT_REWARD_TIMEOUT", "5s")
    with pytest.raises(ValueError, match="AENT_REWARD_TIMEOUT"):
        compute_score(MATH, r"\boxed{3}", "4")
    monkeypatch.setenv(name, "2.5")
    assert env_seconds(name, 1.0) == 2.5
    monkeypatch.delenv(name)
    assert env_seconds(name, 1.0) == 1.0


def _verl_reward_fn(name, reward_kwargs):
    """The reward function verl 0.9 loads for reward.custom_reward_function.path=pkg://aent.reward and ``name``."""
    omegaconf = require("omegaconf", "verl")
    verl_reward = require("verl.trainer.ppo.reward", "verl")
    cfg = omegaconf.OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {"path": "pkg://aent.reward", "name": name, "reward_kwargs": reward_kwargs}
            }
        }
    )
    return verl_reward.get_custom_reward_fn(cfg)


def test_loaded_through_verl_pkg_path():
    """The exact path verl 0.9 takes for reward.custom_reward_function.path=pkg://aent.reward."""
    fn = _verl_reward_fn("compute_score", {"format_penalty": 0.5, "timeout": 3})
    result = fn(data_source=MATH, solution_str=r"so $\boxed{0.5}$", ground_truth=r"\frac12", extra_info={"index": 1})
    assert result["score"] == 1.0 and result["reason"] == "correct"
    assert fn(data_source=MATH, solution_str="3", ground_truth="3", extra_info={})["score"] == -0.5

    from verl.utils.import_utils import load_extern_object

    assert load_extern_object("pkg://aent.reward", "compute_score") is compute_score


def test_async_entry_point_through_verl():
    """verl awaits a coroutine reward function directly; results equal the sync ones."""
    fn = _verl_reward_fn("compute_score_async", SLACK)
    inputs = _mixed_inputs()[:24]

    async def run_all():
        return await asyncio.gather(
            *(fn(data_source=ds, solution_str=resp, ground_truth=gold, extra_info={}) for ds, resp, gold in inputs)
        )

    assert asyncio.run(run_all()) == [compute_score(ds, resp, gold, **SLACK) for ds, resp, gold in inputs]


def test_bad_ground_truth_reaches_verl_validation_metrics():
    """verl 0.9 turns every numeric key of the result into a validation metric per data source
    (val-aux/<data_source>/bad_ground_truth/mean@N); string keys such as reason are skipped."""
    metric_utils = require("verl.trainer.ppo.metric_utils", "verl")
    rows = [(MATH, r"\boxed{3}", "3"), (MATH, r"\boxed{3}", None), (MATH, r"\boxed{4}", "3"), (MATH, r"\boxed{3}", "")]
    results = [compute_score(*row) for row in rows]
    infos = {key: [r[key] for r in results] for key in results[0]}
    metrics = metric_utils.process_validation_metrics([MATH] * 4, ["u0", "u1", "u2", "u3"], infos)
    assert metrics[MATH]["bad_ground_truth"]["mean@1"] == pytest.approx(0.5)
    assert metrics[MATH]["acc"]["mean@1"] == pytest.approx(0.25)
    assert "reason" not in metrics[MATH]


def test_batch_entry_point_equals_single_calls():
    inputs = _mixed_inputs()
    data_sources, responses, golds = (list(column) for column in zip(*inputs))
    batch = reward.compute_score_batch(data_sources, responses, golds, format_penalty=0.5, **SLACK)
    assert batch == [compute_score(ds, resp, gold, format_penalty=0.5, **SLACK) for ds, resp, gold in inputs]
    with pytest.raises(ValueError, match="one data_source, ground_truth"):
        reward.compute_score_batch(data_sources[:2], responses[:3], golds[:3])
    with pytest.raises(ValueError, match="reward_kwargs.timeout"):
        reward.compute_score_batch(data_sources, responses, golds, timeout=-1)


# Equality tests between two ways of scoring use a long time limit: on a loaded machine a 5-s check can time out in
# one run and not in the other, which says nothing about the two ways.
SLACK = {"timeout": 60}


def _mixed_inputs():
    inputs = [(ds, resp, gold) for ds, gold, resp, _ in CASES]
    inputs += [(MATH, rf"\boxed{{{i / 8}}}", rf"\frac{{{i}}}{{8}}") for i in range(24)]
    inputs += [(MATH, rf"\boxed{{{i}}}", str(i + i % 3)) for i in range(24)]
    return inputs


def test_sixteen_threads_equal_serial():
    inputs = _mixed_inputs()
    reward._cache.clear()
    serial = [compute_score(ds, resp, gold, **SLACK) for ds, resp, gold in inputs]
    reward._cache.clear()  # make the threaded run do the same sympy work again
    with ThreadPoolExecutor(max_workers=16) as executor:
        threaded = list(executor.map(lambda args: compute_score(*args, **SLACK), inputs))
    assert threaded == serial
    assert sum(r["acc"] for r in serial) > len(serial) // 3


def test_asyncio_loop():
    inputs = _mixed_inputs()[:40]
    serial = [compute_score(ds, resp, gold, **SLACK) for ds, resp, gold in inputs]

    async def run_all():
        return await asyncio.gather(*(reward.compute_score_async(ds, resp, gold, **SLACK) for ds, resp, gold in inputs))

    assert asyncio.run(run_all()) == serial

    async def sync_call_inside_loop():
        return compute_score(MATH, r"\boxed{0.25}", r"\frac14")

    assert asyncio.run(sync_call_inside_loop())["acc"]


def test_import_is_light():
    code = (
        "import sys, aent, aent.reward; "
        "bad = [m for m in ('math_verify', 'sympy', 'pandas', 'verl', 'latex2sympy2_extended') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
