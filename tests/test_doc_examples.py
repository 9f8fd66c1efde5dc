"""Every ```python block of README.md and docs/*.md runs, so that a renamed function, argument or metric breaks a test
and not a reader.

The blocks are found by a glob and run as written, statement by statement, in one namespace per block. Names a block
uses without defining them (the reader's own ``model``, ``loader``, ``actor_rollout_wg``, ...) come from
:data:`STAND_INS`: a tiny random Qwen2 model and batches for the custom-trainer loops, verl's real config and actor
dataclass with a stand-in worker group for verl's. A block that uses a name without a stand-in fails and names it:
add one here. Conventions a block can use:

* a comment line holding a Python literal right after an expression (``# {'score': 1.0, ...}``) is the value the
  expression must give;
* a statement whose comment says ``CUDA tensors only`` runs only where CUDA is available.
"""

from __future__ import annotations

import ast
import builtins
import textwrap
from typing import Any, Callable, Dict

import pytest
import torch
from docblocks import REPO, fenced_blocks

BLOCKS = fenced_blocks("python")


# -- stand-ins for the reader's own objects ------------------------------------------------------------------------
class _Batch:
    """A batch of the custom-trainer loop: ``input_ids`` and a ``response_mask`` (prompt positions 0)."""

    def __init__(self, input_ids: torch.Tensor, prompt_len: int):
        self.input_ids = input_ids
        self.response_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        self.response_mask[:, prompt_len:] = True


def _tiny_model():
    from aent.experiments.tiny_model import build_qwen2

    return build_qwen2("test", seed=0, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)


def _policy_loss(logits: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """A real differentiable policy-gradient-shaped loss: minus the mean log-prob of the next tokens."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.response_mask[:, 1:].float()
    return -(picked * mask).sum() / mask.sum()


def _logits() -> torch.Tensor:
    return torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)


class _ActorWorkerGroup:
    """verl's actor worker group as the custom-trainer loop uses it: ``set_loss_fn`` once, then ``update_actor``.

    The update runs the installed loss's own metric names (``aent.verl.loss``), so a renamed metric fails the block.
    """

    def __init__(self):
        self.loss_fn = None

    def set_loss_fn(self, loss_fn):
        from aent.verl.loss import AEntPolicyLoss

        assert isinstance(loss_fn, AEntPolicyLoss)
        self.loss_fn = loss_fn

    def update_actor(self, batch):
        from aent.verl.loss import COEF_KEY, METRIC_COEF, METRIC_ENTROPY_SUM, METRIC_NUM_TOKENS

        assert self.loss_fn is not None, "set_loss_fn first"
        assert batch.extra_info["distillation_use_topk"] is True and COEF_KEY in batch.extra_info
        return {
            "metrics": {
                METRIC_ENTROPY_SUM: [3.0, 1.0],
                METRIC_NUM_TOKENS: [20.0, 20.0],
                METRIC_COEF: [batch.extra_info[COEF_KEY]] * 2,
            }
        }


class _UpdateBatch:
    def __init__(self):
        self.extra_info: Dict[str, Any] = {}


def _verl_config():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="aent_grpo_math")


def _reduce_metrics(metrics):
    from verl.utils.metric import reduce_metrics

    return reduce_metrics(metrics)


def _loader():
    model = _STATE["model"]
    gen = torch.Generator().manual_seed(1)
    return [_Batch(torch.randint(0, model.config.vocab_size, (2, 7), generator=gen), prompt_len=3) for _ in range(2)]


_STATE: Dict[str, Any] = {}

# name -> factory, called once per block that uses the name
STAND_INS: Dict[str, Callable[[], Any]] = {
    # custom-trainer loops (README "In your own trainer", docs/DEMO.md)
    "model": lambda: _STATE.setdefault("model", _tiny_model()),
    "loader": lambda: _loader(),
    "temperature": lambda: 0.7,
    "my_policy_loss": lambda: _policy_loss,
    "optimizer": lambda: torch.optim.SGD(_STATE["model"].parameters(), lr=1e-3),
    "checkpoint": dict,
    "logits": _logits,
    "response_mask": lambda: torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool),
    "coef": lambda: __import__("aent").build_coefficient(
        0.002, lr=0.002, entropy_low=0.15, entropy_high=0.24, coef_min=6e-4, coef_max=9e-3
    ),
    "clamp_p": lambda: 0.33,
    "pg_loss": lambda: torch.zeros((), requires_grad=True),
    "token_weighted_mean_of": lambda: lambda values, mask: float((values * mask).sum() / mask.sum()),
    "labels": lambda: torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2)),
    "ppo_clip_loss": lambda: lambda log_probs: -log_probs.mean(),
    "step": lambda: 1,
    # verl custom trainers (docs/VERL.md)
    "config": _verl_config,
    "actor_rollout_wg": _ActorWorkerGroup,
    "batch": _UpdateBatch,
    "num_steps": lambda: 3,
    "reduce_metrics": lambda: _reduce_metrics,
}


def _free_names(tree: ast.Module) -> set:
    """Names the block reads but neither assigns, imports nor gets from builtins (in any scope, conservatively)."""
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound - set(dir(builtins))


def test_blocks_are_found():
    files = {param.values[0].name for param in BLOCKS}
    assert {"README.md", "VERL.md"} <= files and len(BLOCKS) >= 4


@pytest.mark.parametrize("path, line, code", BLOCKS)
def test_python_block_runs(path, line, code):
    where = f"{path.relative_to(REPO)}, block at line {line}"
    code = textwrap.dedent(code)
    tree = ast.parse(code, filename=where)
    missing = sorted(_free_names(tree) - set(STAND_INS))
    assert not missing, f"{where} uses {missing} without defining them: add a stand-in to STAND_INS in {__file__}"
    _STATE.clear()
    namespace: Dict[str, Any] = {"__name__": "__doc_example__"}
    for name in sorted(_free_names(tree), key=lambda n: (n != "model", n)):  # the model first: others use it
        namespace[name] = STAND_INS[name]()
    lines = code.splitlines()
    for stmt in tree.body:
        source = "\n".join(lines[stmt.lineno - 1 : stmt.end_lineno])
        if "CUDA tensors only" in source and not torch.cuda.is_available():
            continue
        if isinstance(stmt, ast.Expr):
            value = eval(compile(ast.Expression(stmt.value), where, "eval"), namespace)
            following = lines[stmt.end_lineno].strip() if stmt.end_lineno < len(lines) else ""
            if following.startswith("# "):
                try:
                    expected = ast.literal_eval(following[2:])
                except (ValueError, SyntaxError):
                    continue  # a plain comment
                assert value == expected, (
                    f"{where}, line {line + stmt.lineno}: got {value!r}, the text says {expected!r}"
                )
        else:
            exec(compile(ast.Module(body=[stmt], type_ignores=[]), where, "exec"), namespace)
