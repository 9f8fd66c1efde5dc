"""``aent prepare-data``: small synthetic files in each source's public schema, round-tripped through verl's
``RLHFDataset`` with a tokenizer trained in the test (no hub)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from aent_test_support.deps import require

for _module in ("pandas", "pyarrow", "tqdm"):
    require(_module, "data", find_only=True)

import pandas as pd  # noqa: E402

from aent.data import INSTRUCTION, SOURCES, DataError, main, prepare, read_table  # noqa: E402
from aent.data.sources import openr1_answer_rejection  # noqa: E402
from aent.reward import compute_score  # noqa: E402

HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic sources in the public schemas


def math_lighteval_rows(n=6):
    types = ["Algebra", "Geometry", "Number Theory"]
    return [
        {
            "problem": f"What is ${i} + \\frac{{1}}{{2}}$?",
            "level": f"Level {1 + i % 5}",
            "type": types[i % 3],
            "solution": f"We add: ${i} + \\frac12 = \\boxed{{\\frac{{{2 * i + 1}}}{{2}}}}$.",
        }
        for i in range(n)
    ]


def gsm8k_rows(n=5):
    return [
        {
            "question": f"Tom has {1000 * i} apples and buys 500 more. How many apples does he have?",
            "answer": f"He has {1000 * i} + 500 = <<{1000 * i}+500={1000 * i + 500}>>{1000 * i + 500}.\n#### {1000 * i + 500:,}",
        }
        for i in range(n)
    ]


def openr1_rows():
    base = {"problem_type": "Algebra", "source": "olympiads", "is_reasoning_complete": [True, True]}
    answers = [
        ("math-word-problem", "\\frac{1}{2}", [True, False]),
        ("math-word-problem", "12", [False, True]),
        ("math-word-problem", "x^2+1", [True, True]),
        ("math-word-problem", "(1, 2)", [True, False]),
        ("math-word-problem", "$\\sqrt{3}$", [True, True]),
        ("math-word-problem", "42", [True, True]),
        ("math-word-problem", "7", [True, False]),
        ("math-word-problem", "100", [True, True]),
        ("proof", "proof", [False, False]),
        ("MCQ", "B", [True, True]),
        ("math-word-problem", "2 \\text{ or } 3", [True, True]),
        ("math-word-problem", "x=1; y=2", [True, True]),
        ("math-word-problem", "Monday", [True, True]),
        ("math-word-problem", "5", [False, False]),
        ("math-word-problem", "", [True, True]),
    ]
    rows = []
    for i, (qtype, answer, verified) in enumerate(answers):
        rows.append(
            {
                **base,
                "problem": f"Problem {i}: find the value.",
                "solution": f"... so the answer is $\\boxed{{{answer}}}$",
                "answer": answer,
                "question_type": qtype,
                "uuid": f"uuid-{i}",
                "generations": ["<think>...</think> \\boxed{1}", "<think>...</think> \\boxed{2}"],
                "correctness_math_verify": verified,
                "correctness_llama": None,
                "finish_reasons": None,
                "correctness_count": int(sum(verified)),
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            }
        )
    return rows


def math500_rows():
    return [
        {
            "problem": f"Compute ${i}^2$.",
            "solution": f"$\\boxed{{{i * i}}}$",
            "answer": str(i * i),
            "subject": "Algebra",
            "level": 1 + i % 5,
            "unique_id": f"test/algebra/{i}.json",
        }
        for i in range(4)
    ]


def aime24_rows():
    return [
        {
            "id": 60 + i,
            "problem": f"AIME problem {i}.",
            "solution": "...",
            "answer": str(100 + i),
            "url": "u",
            "year": "2024",
        }
        for i in range(3)
    ]


def amc23_rows():
    return [{"id": i, "question": f"AMC problem {i}.", "answer": float(10 + i), "url": "u"} for i in range(3)]


def minerva_rows():
    return [
        {
            "problem": f"A star has mass {i} ...",
            "solution": f"So $M = \\boxed{{{i}.5}}$ solar masses.",
            "idx": i,
            "type": "Astro",
        }
        for i in range(3)
    ]


def olympiadbench_rows():
    rows = []
    for i in range(3):
        rows.append(
            {
                "id": 1600 + i,
                "subfield": "Algebra",
                "context": None,
                "question": f"Olympiad problem {i}.",
                "solution": ["..."],
                "final_answer": [f"${i}$"] if i else ["$1$", "$2$"],
                "is_multiple_answer": i == 0,
                "unit": None,
                "answer_type": "Numerical",
                "error": None,
                "question_type": "Open-ended",
                "subject": "Math",
                "language": "English",
                "modality": "Text-only",
            }
        )
    rows.append({**rows[1], "id": 99, "subject": "Physics", "question": "A physics problem."})
    return rows


# name -> (rows, writer, expected ground truths)
CASES = {
    "math_train": (math_lighteval_rows(), "parquet", [f"\\frac{{{2 * i + 1}}}{{2}}" for i in range(6)]),
    "gsm8k_train": (gsm8k_rows(), "jsonl", [str(1000 * i + 500) for i in range(5)]),
    "gsm8k_test": (gsm8k_rows(2), "json", ["500", "1500"]),
    "openr1_40k": (openr1_rows(), "parquet", ["\\frac{1}{2}", "12", "x^2+1", "(1, 2)", "\\sqrt{3}", "42", "7", "100"]),
    "math_hard": (math_lighteval_rows(10), "save_to_disk", ["\\frac{9}{2}", "\\frac{19}{2}"]),
    "math500": (math500_rows(), "parquet", ["0", "1", "4", "9"]),
    "aime24": (aime24_rows(), "jsonl", ["100", "101", "102"]),
    "amc23": (amc23_rows(), "hub_folder", ["10", "11", "12"]),
    "minerva": (minerva_rows(), "jsonl", ["0.5", "1.5", "2.5"]),
    "olympiadbench": (olympiadbench_rows(), "jsonl", ["1, 2", "1", "2"]),
}


def write_source(rows, kind, folder):
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if kind == "parquet":
        path = folder / "train-00000-of-00001.parquet"
        df.to_parquet(path)
    elif kind == "jsonl":
        path = folder / "test.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path = folder / "test.json"
        path.write_text(json.dumps(rows))
    elif kind == "save_to_disk":
        datasets = require("datasets", "verl")
        path = folder / "saved"
        datasets.DatasetDict({"test": datasets.Dataset.from_pandas(df)}).save_to_disk(str(path))
    elif kind == "hub_folder":  # a hub snapshot: data/<split>-*.parquet
        (folder / "snapshot" / "data").mkdir(parents=True)
        df.to_parquet(folder / "snapshot" / "data" / "test-00000-of-00001.parquet")
        path = folder / "snapshot"
    else:
        raise AssertionError(kind)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer (no hub)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    require("tokenizers", "demo")
    require("transformers", "verl")
    from aent.experiments.tiny_model import build_bpe_tokenizer

    corpus = ["What is 1 + 1? Let's think step by step.", "\\boxed{\\frac{1}{2}} apples"] * 20
    return build_bpe_tokenizer(400, corpus)


# ---------------------------------------------------------------------------------------------------------------------
# Tests


def test_every_output_name_has_a_case():
    assert (
        set(CASES)
        == set(SOURCES)
        == {
            "math_train",
            "gsm8k_train",
            "gsm8k_test",
            "openr1_40k",
            "math_hard",
            "math500",
            "aime24",
            "amc23",
            "minerva",
            "olympiadbench",
        }
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_through_verl(name, tmp_path, tiny_tokenizer):
    rl_dataset = require("verl.utils.dataset.rl_dataset", "verl")
    omegaconf = require("omegaconf", "verl")
    rows, kind, expected_truths = CASES[name]
    source_path = write_source(rows, kind, tmp_path / "src")
    split = "test" if kind == "save_to_disk" else None
    # The parse check needs math-verify workers; the text rules alone already give the expected subset here.
    out = prepare(name, source_path, str(tmp_path / "out"), split=split, parse_check=HAS_MATH_VERIFY, progress=False)
    assert out == str(tmp_path / "out" / f"{name}.parquet")

    table = pd.read_parquet(out)
    assert list(table.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert table["data_source"].nunique() == 1 and table["data_source"][0] == SOURCES[name].data_source
    assert [rm["ground_truth"] for rm in table["reward_model"]] == expected_truths

    config = omegaconf.OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 4096,
            "filter_overlong_prompts": True,
            "truncation": "error",
            "cache_dir": str(tmp_path / "cache"),
            "filter_overlong_prompts_workers": 1,
        }
    )
    dataset = rl_dataset.RLHFDataset(data_files=[out], tokenizer=tiny_tokenizer, config=config)
    assert len(dataset) == len(expected_truths)
    for position in range(len(dataset)):
        item = dataset[position]
        (turn,) = item["raw_prompt"]
        assert turn["role"] == "user" and turn["content"].endswith(" " + INSTRUCTION)
        assert item["ability"] == "math"
        assert item["reward_model"] == {"style": "rule", "ground_truth": expected_truths[position]}
        assert item["extra_info"]["split"] == SOURCES[name].split
        assert item["index"] == item["extra_info"]["index"]
        assert turn["content"].startswith(item["extra_info"]["question"])
        # the chat template renders and tokenises
        ids = tiny_tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
        assert len(ids) > 0

    if HAS_MATH_VERIFY:
        # the reward accepts its own ground truth, boxed, for every prepared row
        for rm, ds in zip(table["reward_model"], table["data_source"]):
            result = compute_score(ds, f"... so $\\boxed{{{rm['ground_truth']}}}$", rm["ground_truth"])
            assert result["acc"], (name, rm, result)


def test_gsm8k_full_solution_scores_against_prepared_truth(tmp_path):
    require("math_verify", "math")
    out = prepare("gsm8k_test", write_source(gsm8k_rows(3), "jsonl", tmp_path), str(tmp_path / "o"), progress=False)
    table = pd.read_parquet(out)
    assert compute_score(
        table["data_source"][2], "2000 + 500 = 2,500\n#### 2,500", table["reward_model"][2]["ground_truth"]
    )["acc"]


def test_openr1_sampling_is_deterministic_and_filtered(tmp_path):
    rows = openr1_rows()
    src = write_source(rows, "parquet", tmp_path / "src")
    picked = []
    for seed in (0, 0, 1):
        out = prepare(
            "openr1_40k",
            src,
            str(tmp_path / f"o{seed}{len(picked)}"),
            num_samples=3,
            seed=seed,
            parse_check=False,
            progress=False,
        )
        picked.append([e["index"] for e in pd.read_parquet(out)["extra_info"]])
    assert picked[0] == picked[1] and len(picked[0]) == 3
    assert set(picked[0]) <= set(range(8))  # only the eight verifiable rows are ever drawn
    assert picked[2] != picked[0]  # another seed, another draw


@pytest.mark.parametrize(
    "answer,qtype,verified,reason",
    [
        ("\\frac{1}{2}", "math-word-problem", [True], None),
        ("x^2+1", None, None, None),
        ("\\sqrt{3}+\\pi", "math-word-problem", [False, True], None),
        ("proof", "proof", [True], "question_type"),
        ("B", "MCQ", [True], "question_type"),
        ("", "math-word-problem", [True], "empty"),
        ("notfound", "math-word-problem", [True], "not_an_answer"),
        ("2 \\text{ or } 3", "math-word-problem", [True], "multiple_answers"),
        ("x=1, y=2, z=3", "math-word-problem", [True], "multiple_answers"),
        ("Monday", "math-word-problem", [True], "words"),
        ("5", "math-word-problem", [False, False], "no_verified_generation"),
        ("1" * 80, "math-word-problem", [True], "too_long"),
    ],
)
def test_openr1_rule(answer, qtype, verified, reason):
    assert openr1_answer_rejection(answer, qtype, verified) == reason


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"query": "1+1?", "answer": "#### 2"}) + "\n")
    with pytest.raises(DataError) as info:
        prepare("gsm8k_train", str(path), str(tmp_path / "o"), progress=False)
    message = str(info.value)
    assert str(path) in message and "'question'" in message and "['answer', 'query']" in message
    # and the override fixes it
    out = prepare("gsm8k_train", str(path), str(tmp_path / "o"), problem_column="query", progress=False)
    assert pd.read_parquet(out)["reward_model"][0]["ground_truth"] == "2"


def test_missing_level_column_for_math_hard(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "\\boxed{1}"}) + "\n")
    with pytest.raises(DataError, match=r"math\.jsonl: missing column 'level'"):
        prepare("math_hard", str(path), str(tmp_path / "o"), progress=False)


def test_unreadable_file_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match="cannot read .*broken.parquet"):
        read_table(str(bad))
    assert main(["math500", "--input", str(bad), "--out-dir", str(tmp_path / "o")]) == 1
    assert "broken.parquet" in capsys.readouterr().err
    with pytest.raises(DataError, match="does not exist"):
        read_table(str(tmp_path / "nope.jsonl"))


def test_folder_with_several_splits_needs_split(tmp_path):
    folder = tmp_path / "snap"
    folder.mkdir()
    pd.DataFrame(gsm8k_rows(2)).to_parquet(folder / "train-00000-of-00001.parquet")
    pd.DataFrame(gsm8k_rows(3)).to_parquet(folder / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match="--split"):
        read_table(str(folder))
    assert len(read_table(str(folder), split="test")) == 3


def test_cli_via_aent_entry_point(tmp_path, capsys):
    from aent.cli import main as aent_main

    src = write_source(aime24_rows(), "jsonl", tmp_path)
    assert aent_main(["prepare-data", "aime24", "--input", src, "--out-dir", str(tmp_path / "out")]) == 0
    assert os.path.exists(tmp_path / "out" / "aime24.parquet")
    assert aent_main(["prepare-data", "--list"]) == 0
    assert "openr1_40k" in capsys.readouterr().out
