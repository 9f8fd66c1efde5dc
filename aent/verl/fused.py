"""AEnt in verl's fused-kernel path (``actor_rollout_ref.model.use_fused_kernels=true``): the actor update's log-probs
and clamped entropy straight from the hidden states, with no logits (targets verl 0.9.1; docs/VERL.md).

With fused kernels verl replaces the actor model's ``forward`` (``verl/models/transformers/monkey_patch.py::
patch_forward_with_backends``) by ``dense_common.forward_with_torch_backend`` or ``forward_with_triton_backend``
(``fused_kernel_options.impl_backend``): the base model's hidden states, ``lm_head.weight`` and the rolled labels
(``shift_labels``, built by the engine's ``prepare_model_inputs``) go to verl's fused linear + log-prob + entropy op,
and the forward returns ``CausalLMOutputForPPO(log_probs, entropy)``, which ``prepare_model_outputs`` reads. No hook
reaches the loss with logits in this branch, so AEnt serves the forward itself, for the update micro-batches only:

* the engine's ``FSDPEngineWithLMHead.forward_step`` is wrapped (once, when verl's engine module is imported, by the
  ``verl.plugins`` entry point): a micro-batch carrying ``aent_fused=True`` (:func:`aent.verl.aent_step_flags` with
  ``fused=True``) runs with an AEnt request in a context variable; any other micro-batch (the old-log-prob and
  reference passes, a run without AEnt) is verl's, untouched;
* on the first such micro-batch the model class's forward, which must be one of verl's two dense fused forwards, is
  wrapped: with a request it runs verl's own ``forward_base_model`` and then
  :func:`aent.linear_logprobs_and_clamped_entropy` on the hidden states, ``lm_head.weight`` and verl's labels, only
  on the rows that reach the loss, and returns the clamped entropy as ``entropy`` (the update asks for it with
  ``calculate_entropy=True``); without a request it is verl's forward;
* the AEnt loss takes ``entropy`` as the clamped entropy on such micro-batches (:mod:`aent.verl.loss`).

:func:`check_verl_layout` (run at start-up by :func:`aent.verl.checks.check_config`) fails loudly when the installed
verl is laid out differently; :data:`UNCOVERED_MODEL_TYPES` are refused by name.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any, NamedTuple, Optional

from aent.verl.loss import COEF_KEY, FUSED_KEY

__all__ = [
    "UNCOVERED_MODEL_TYPES",
    "VERL_TARGET",
    "check_verl_layout",
    "startup_problems",
    "install_engine_seam",
    "model_type_problem",
]

VERL_TARGET = "0.9.1"

# verl 0.9.1 gives these model types fused forwards of their own (multi-modal inputs, their own base-model call) in
# patch_forward_with_backends; AEnt serves only the dense text forward of dense_common.
UNCOVERED_MODEL_TYPES = {
    "qwen2_vl": "verl.models.transformers.qwen2_vl",
    "qwen2_5_vl": "verl.models.transformers.qwen2_vl",
    "qwen3_vl": "verl.models.transformers.qwen3_vl",
    "qwen3_vl_moe": "verl.models.transformers.qwen3_vl",
    "glm4v": "verl.models.transformers.glm4v",
    "qwen3_5": "verl.models.transformers.qwen3_5",
    "qwen3_5_moe": "verl.models.transformers.qwen3_5",
}

_REQUEST: contextvars.ContextVar = contextvars.ContextVar("aent_fused_request", default=None)


class _Request(NamedTuple):
    data: Any  # the micro-batch (labels and loss rows come from it)
    kept: Any
    chunk_size: Optional[int]
    impl: Optional[str]


def model_type_problem(model_type: Optional[str]) -> Optional[str]:
    """Why AEnt cannot serve verl's fused forward of ``model_type`` (None when it can)."""
    if model_type in UNCOVERED_MODEL_TYPES:
        return (
            f"model type {model_type!r} has its own fused forward in verl ({UNCOVERED_MODEL_TYPES[model_type]}), "
            "which AEnt does not serve (it serves verl's dense text forward, verl.models.transformers.dense_common)"
        )
    return None


def _layout_error(what: str) -> RuntimeError:
    import verl

    return RuntimeError(
        f"AEnt's fused-kernel seam targets verl {VERL_TARGET}, but the installed verl {verl.__version__} is laid out "
        f"differently: {what}. Run with actor_rollout_ref.model.use_fused_kernels=false (AEnt's logits seam), or use "
        f"verl {VERL_TARGET}"
    )


def check_verl_layout() -> None:
    """Raise ``RuntimeError`` naming what changed when the installed verl is not laid out as verl 0.9.1 is at the
    places the fused seam relies on (the patched forwards, their arguments and output, the engine methods)."""
    try:
        from verl.models.transformers import dense_common, monkey_patch
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    except ImportError as err:
        raise _layout_error(f"cannot import its fused-forward or engine modules ({err})") from None

    for name in ("forward_base_model", "forward_with_torch_backend", "forward_with_triton_backend"):
        if not callable(getattr(dense_common, name, None)):
            raise _layout_error(f"verl.models.transformers.dense_common.{name} is missing")
    for name in ("forward_with_torch_backend", "forward_with_triton_backend"):
        params = inspect.signature(getattr(dense_common, name)).parameters
        for arg in ("input_ids", "position_ids", "temperature", "shift_labels"):
            if arg not in params:
                raise _layout_error(f"dense_common.{name} takes no {arg!r} argument")
    fields = getattr(getattr(dense_common, "CausalLMOutputForPPO", None), "__dataclass_fields__", {})
    if not {"log_probs", "entropy"} <= set(fields):
        raise _layout_error("dense_common.CausalLMOutputForPPO has no log_probs/entropy fields")
    patch_src = inspect.getsource(getattr(monkey_patch, "patch_forward_with_backends", lambda: None))
    if "dense_common" not in patch_src or "model.__class__.forward" not in patch_src:
        raise _layout_error("patch_forward_with_backends no longer installs dense_common's forwards on the model class")
    for model_type in UNCOVERED_MODEL_TYPES:
        if f'"{model_type}"' not in patch_src:
            raise _layout_error(f"patch_forward_with_backends no longer singles out model type {model_type!r}")
    step = getattr(FSDPEngineWithLMHead, "forward_step", None)
    if step is None or list(inspect.signature(step).parameters) != [
        "self",
        "micro_batch",
        "loss_function",
        "forward_only",
    ]:
        raise _layout_error("FSDPEngineWithLMHead.forward_step(micro_batch, loss_function, forward_only) changed")
    inputs_src = inspect.getsource(FSDPEngineWithLMHead.prepare_model_inputs)
    if 'extra_args["shift_labels"]' not in inputs_src or 'extra_args["temperature"]' not in inputs_src:
        raise _layout_error("prepare_model_inputs no longer hands the fused forward its shift_labels and temperature")
    outputs_src = inspect.getsource(FSDPEngineWithLMHead.prepare_model_outputs)
    if "output.log_probs" not in outputs_src or "output.entropy" not in outputs_src:
        raise _layout_error("prepare_model_outputs no longer reads the fused forward's log_probs and entropy")


COVERED_BACKENDS = ("torch", "triton", "liger")  # fused_kernel_options.impl_backend values verl patches the forward for


def startup_problems(config: Any, select) -> list:
    """What stops a run with ``actor_rollout_ref.model.use_fused_kernels=true`` from training AEnt without logits
    (``select(config, key, default)`` reads a key); empty when it can."""
    import json
    import os

    problems = []
    backend = select(config, "actor_rollout_ref.model.fused_kernel_options.impl_backend", None)
    if backend not in COVERED_BACKENDS:
        problems.append(
            f"actor_rollout_ref.model.fused_kernel_options.impl_backend={backend}: verl patches no fused forward for "
            f"it, so the update would have no log-probs: set it to one of {COVERED_BACKENDS}"
        )
    if select(config, "actor_rollout_ref.model.use_remove_padding", True) is not True:
        problems.append(
            "actor_rollout_ref.model.use_remove_padding=false with use_fused_kernels=true: AEnt's fused forward "
            "reads verl's packed micro-batches: set actor_rollout_ref.model.use_remove_padding=true"
        )
    path = select(config, "actor_rollout_ref.model.path", None)
    config_json = os.path.join(str(path), "config.json") if path else None
    if config_json and os.path.isfile(config_json):  # a hub name is checked in the workers, where it is loaded
        try:
            with open(config_json) as f:
                model_config = json.load(f)
        except (OSError, ValueError):
            model_config = {}
        problem = model_type_problem(model_config.get("model_type"))
        if problem:
            problems.append(
                f"actor_rollout_ref.model.use_fused_kernels=true: {problem}: set "
                "actor_rollout_ref.model.use_fused_kernels=false (AEnt then reads the logits)"
            )
        strategy = select(config, "actor_rollout_ref.actor.strategy", "fsdp")
        if strategy == "fsdp2" and not model_config.get("tie_word_embeddings", False):
            problems.append(
                f"actor_rollout_ref.model.use_fused_kernels=true with strategy=fsdp2 and an untied output layer "
                f"({config_json}: tie_word_embeddings is false): FSDP2 shards lm_head as a unit of its own and verl "
                f"{VERL_TARGET}'s fused forward reads its weight without calling it, so the update fails (verl's own "
                "fused update too): set actor_rollout_ref.model.use_fused_kernels=false"
            )
    try:
        check_verl_layout()
    except RuntimeError as err:
        problems.append(str(err))
    return problems


# -- the model forward ---------------------------------------------------------------------------------------------
def _aent_forward(
    self,
    request: _Request,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    cache_position=None,
    logits_to_keep=0,
    temperature=1.0,
    shift_labels=None,
    **loss_kwargs,
):
    """verl's dense fused forward (``dense_common.forward_with_torch_backend``) with AEnt's op in place of verl's."""
    from verl.models.transformers.dense_common import CausalLMOutputForPPO, forward_base_model

    import aent
    from aent.verl.loss import packed_labels_and_loss_rows

    if shift_labels is None:
        raise RuntimeError(
            "AEnt's fused-kernel seam needs verl's packed micro-batches (the engine passes shift_labels only with "
            "actor_rollout_ref.model.use_remove_padding=true): set actor_rollout_ref.model.use_remove_padding=true"
        )
    outputs = forward_base_model(
        self,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        output_attentions=output_attentions,
        output_hidden_states=output_hidden_states,
        cache_position=cache_position,
    )
    hidden = outputs[0]  # (1, n_tokens, H)
    weight = self.lm_head.weight
    if type(weight).__name__ == "DTensor":
        raise RuntimeError(
            "the output layer's weight reached the fused forward still sharded (a DTensor): FSDP2 shards an untied "
            "lm_head as a unit of its own, and verl 0.9.1's fused forward reads lm_head.weight without calling "
            "lm_head (verl's own fused update fails the same way). Use a model with tie_word_embeddings=true, or "
            "actor_rollout_ref.model.use_fused_kernels=false"
        )
    rolled = shift_labels.reshape(-1)
    n = rolled.shape[0]
    if hidden.shape[:-1] != (1, n):
        raise _layout_error(f"the base model returned hidden states {tuple(hidden.shape)} for {n} packed labels")
    own_labels, rows = packed_labels_and_loss_rows(request.data, n, hidden.device)
    if not bool((own_labels == rolled.to(own_labels.device)).all()):
        raise _layout_error("the engine's shift_labels are not the next tokens of the packed micro-batch")
    log_probs, ent = aent.linear_logprobs_and_clamped_entropy(
        hidden[0].to(weight.dtype),
        weight,
        rolled,
        request.kept,
        temperature=float(temperature),
        row_mask=rows,
        chunk_size=request.chunk_size,
        impl=request.impl,
        check_finite=False,  # counted on response tokens by the loss; the trainer stops the step
    )
    return CausalLMOutputForPPO(
        log_probs=log_probs.unsqueeze(0),
        entropy=ent.unsqueeze(0),
        past_key_values=outputs.past_key_values,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def _serving(verl_forward):
    @functools.wraps(verl_forward)
    def forward(self, *args, **kwargs):
        request = _REQUEST.get()
        if request is None:
            return verl_forward(self, *args, **kwargs)
        return _aent_forward(self, request, *args, **kwargs)

    forward._aent_serves = verl_forward
    return forward


def _install_forward(module) -> None:
    """Wrap the actor model class's forward (verl's dense fused forward) so that it serves AEnt requests."""
    from verl.models.transformers import dense_common

    verl_forwards = (dense_common.forward_with_torch_backend, dense_common.forward_with_triton_backend)
    seen = []
    for sub in module.modules():
        forward = getattr(type(sub), "forward", None)
        if getattr(forward, "_aent_serves", None) is not None:
            return
        if any(forward is f for f in verl_forwards):
            owner = next(cls for cls in type(sub).__mro__ if cls.__dict__.get("forward") is forward)
            owner.forward = _serving(forward)
            return
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "model_type"):
            seen.append(f"{type(sub).__name__} (model type {config.model_type!r})")
    problem = next((model_type_problem(s.split("'")[1]) for s in seen if "'" in s), None)
    raise RuntimeError(
        "AEnt's fused-kernel seam found none of verl's dense fused forwards in the actor model "
        f"({', '.join(seen) or type(module).__name__}): "
        + (problem or "verl did not patch it (fused_kernel_options.impl_backend must be torch or triton)")
        + ". Run with actor_rollout_ref.model.use_fused_kernels=false"
    )


# -- the engine ----------------------------------------------------------------------------------------------------
def _wrap_forward_step(original):
    @functools.wraps(original)
    def forward_step(self, micro_batch, loss_function, forward_only):
        from verl.utils import tensordict_utils as tu

        from aent.verl.loss import AEntPolicyLoss

        fused_engine = bool(tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False))
        if not tu.get_non_tensor_data(data=micro_batch, key=FUSED_KEY, default=False):
            if fused_engine and tu.get_non_tensor_data(data=micro_batch, key=COEF_KEY, default=None) is not None:
                raise RuntimeError(
                    "an AEnt update batch reached an engine with use_fused_kernels=true without the fused flags: "
                    "build its flags with aent.verl.aent_step_flags(coef, fused=True)"
                )
            return original(self, micro_batch, loss_function, forward_only)
        if not fused_engine:
            raise RuntimeError(
                "the batch carries aent.verl.aent_step_flags(coef, fused=True) but the engine runs without fused "
                "kernels: use aent_step_flags(coef) (actor_rollout_ref.model.use_fused_kernels=false)"
            )
        if not isinstance(loss_function, AEntPolicyLoss):
            raise RuntimeError(
                f"the batch carries AEnt's fused flags but the engine's loss is {type(loss_function).__name__}, not "
                "the AEnt loss (aent.verl.make_aent_loss)"
            )
        _install_forward(self.module)
        token = _REQUEST.set(_Request(micro_batch, loss_function.kept, loss_function.chunk_size, loss_function.impl))
        try:
            return original(self, micro_batch, loss_function, forward_only)
        finally:
            _REQUEST.reset(token)

    forward_step._aent_wrapped = True
    return forward_step


def install_engine_seam(transformer_impl=None) -> None:
    """Wrap ``FSDPEngineWithLMHead.forward_step`` of verl's engine module (idempotent). Called by the plugin when
    ``verl.workers.engine.fsdp.transformer_impl`` is imported."""
    if transformer_impl is None:
        from verl.workers.engine.fsdp import transformer_impl
    cls = getattr(transformer_impl, "FSDPEngineWithLMHead", None)
    step = getattr(cls, "forward_step", None)
    if step is None or getattr(step, "_aent_wrapped", False):
        return
    cls.forward_step = _wrap_forward_step(step)
