"""The AEnt actor loss for verl 0.9 engine workers (SPEC section 2).

One callable serves the two calls verl's FSDP engine makes per micro-batch when the micro-batch carries the flag
``distillation_use_topk=True`` (the engine's logits-processor seam, see ``FSDPEngineWithLMHead.prepare_model_outputs``):

1. ``loss(student_logits=<(1, n_tokens, V) temperature-scaled logits>, data=micro_batch)``: the clamped entropy of
   every row, from the same forward pass as the log-probs, returned as ``{"aent_clamped_entropy": (1, n_tokens)}``
   (gradients kept). The engine stores it in ``model_output`` next to ``log_probs``.
2. ``loss(model_output=..., data=micro_batch, dp_group=...)``: the run's own verl policy loss (``ppo_loss`` with
   ``entropy_coeff=0``, whatever ``policy_loss.loss_mode`` is), minus ``coef * agg(clamped entropy)``, aggregated
   with the run's ``loss_agg_mode`` and verl's global batch normalisation (``config.global_batch_info``).

The coefficient of the current step travels with the batch as the non-tensor value ``aent_coef``
(:func:`aent_step_flags` builds all per-step values).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import aent
from aent.validate import check_chunk_size, check_clamp_p

__all__ = [
    "AEntPolicyLoss",
    "make_aent_loss",
    "aent_step_flags",
    "CLAMPED_ENTROPY_KEY",
    "COEF_KEY",
    "METRIC_ENTROPY_SUM",
    "METRIC_NUM_TOKENS",
    "METRIC_NONFINITE",
    "METRIC_CLAMPED_ENTROPY",
    "METRIC_COEF",
]

CLAMPED_ENTROPY_KEY = "aent_clamped_entropy"  # model_output key (per token, nested like log_probs)
COEF_KEY = "aent_coef"  # non-tensor batch value: the coefficient of this step

# Metric names as they reach the driver (verl prefixes the actor's metrics with "actor/" only when missing).
METRIC_CLAMPED_ENTROPY = "actor/aent_clamped_entropy"
METRIC_COEF = "actor/aent_coef"
METRIC_ENTROPY_SUM = "actor/aent_entropy_sum"
METRIC_NUM_TOKENS = "actor/aent_num_tokens"
METRIC_NONFINITE = "actor/aent_nonfinite_tokens"


def aent_step_flags(coef: float) -> Dict[str, Any]:
    """Non-tensor values to put on every actor-update batch for one step (``batch.extra_info`` in the V1 trainer).

    ``distillation_use_topk=True`` makes verl's FSDP engine hand the logits to the loss; ``distillation_only=False``
    keeps the log-probs; ``calculate_entropy=True`` keeps verl's own full-vocabulary entropy (``actor/entropy``) and
    stops flash-attn's cross-entropy backward from writing into the shared logits in place.
    """
    coef = float(coef)
    if not (coef >= 0.0 and coef < float("inf")):
        raise ValueError(f"the AEnt coefficient must be a finite number >= 0, got {coef!r}")
    return {"distillation_use_topk": True, "distillation_only": False, "calculate_entropy": True, COEF_KEY: coef}


class AEntPolicyLoss:
    """verl loss callable: the run's policy loss minus ``coef x`` aggregated clamped entropy (picklable for Ray).

    Args:
        actor_config: the run's ``verl.workers.config.ActorConfig`` (e.g. ``omega_conf_to_dataclass(
            config.actor_rollout_ref.actor)``). Its ``entropy_coeff`` must be 0: the entropy term is AEnt's.
        clamp_p: removed vocabulary fraction in ``[0, 1)`` (SPEC section 1); 0 = full-vocabulary entropy bonus.
        chunk_size: rows per chunk of :func:`aent.clamped_entropy` (``None``: automatic).
        impl: implementation of :func:`aent.clamped_entropy` (``None``: ``"auto"``).
    """

    def __init__(
        self, actor_config: Any, clamp_p: float, *, chunk_size: Optional[int] = None, impl: Optional[str] = None
    ):
        if getattr(actor_config, "entropy_coeff", 0.0) != 0.0:
            raise ValueError(
                f"actor_rollout_ref.actor.entropy_coeff={actor_config.entropy_coeff} would add verl's own "
                "full-vocabulary entropy bonus on top of AEnt's: set actor_rollout_ref.actor.entropy_coeff=0 "
                "(AEnt's coefficient is aent.coef_init; a plain entropy bonus is aent.clamp_p=0)"
            )
        clamp_p = check_clamp_p("aent.clamp_p", clamp_p)
        chunk_size = check_chunk_size("aent.chunk_size", chunk_size)
        self.actor_config = actor_config
        self.clamp_p = float(clamp_p)
        self.chunk_size = chunk_size
        self.impl = impl

    # -- the logits-processor call -------------------------------------------------------------------------
    def clamped_entropy_of_logits(self, student_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-row clamped entropy of the engine's ``(1, n_tokens, V)`` logits, as ``{key: (1, n_tokens)}``.

        Non-finite rows come back as NaN and are counted on response tokens by the loss call (a per-call check
        here would add a device synchronisation per micro-batch).
        """
        ent = aent.clamped_entropy(
            student_logits, self.clamp_p, chunk_size=self.chunk_size, impl=self.impl, check_finite=False
        )
        return {CLAMPED_ENTROPY_KEY: ent}

    # -- the loss call -------------------------------------------------------------------------------------
    def __call__(self, model_output=None, data=None, dp_group=None, *, student_logits=None):
        if student_logits is not None:
            return self.clamped_entropy_of_logits(student_logits)
        return self.loss(model_output, data, dp_group)

    def loss(self, model_output, data, dp_group=None):
        from verl.trainer.ppo.core_algos import agg_loss
        from verl.utils import tensordict_utils as tu
        from verl.utils.metric import AggregationType, Metric
        from verl.workers.utils.losses import ppo_loss
        from verl.workers.utils.padding import no_padding_2_padding

        config = self.actor_config
        policy_loss, metrics = ppo_loss(config, model_output, data, dp_group)
        if CLAMPED_ENTROPY_KEY not in model_output:
            if torch.is_grad_enabled():
                raise RuntimeError(
                    "the AEnt loss got no clamped entropy from the engine: the actor-update batch lacks the per-step "
                    "flags. Run with trainer.v1.trainer_mode=aent, or put aent.verl.aent_step_flags(coef) on the "
                    "batch (distillation_use_topk=True, distillation_only=False, calculate_entropy=True, aent_coef)"
                )
            return policy_loss, metrics  # forward-only evaluation: no bonus to add
        coef = tu.get_non_tensor_data(data=data, key=COEF_KEY, default=None)
        if coef is None:
            raise RuntimeError(
                f"the AEnt loss needs this step's coefficient as the non-tensor batch value {COEF_KEY!r} "
                "(see aent.verl.aent_step_flags)"
            )
        coef = float(coef)

        ent = no_padding_2_padding(model_output[CLAMPED_ENTROPY_KEY], data)  # (bsz, response_len), float32
        response_mask = data.select("response_mask").to_padded_tensor()["response_mask"].to(torch.bool)
        finite = torch.isfinite(ent)
        # masked-out positions must not turn the aggregate into NaN (0 * NaN); counted ones stop the run upstream
        ent = torch.where(response_mask & finite, ent, torch.zeros((), dtype=ent.dtype, device=ent.device))
        batch_info = config.global_batch_info  # filled by ppo_loss for this micro-batch
        ent_agg = agg_loss(loss_mat=ent, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode, **batch_info)
        loss = policy_loss - coef * ent_agg

        dp_size = int(batch_info.get("dp_size", 1) or 1)
        with torch.no_grad():
            mask_f = response_mask.to(ent.dtype)
            stats = torch.stack(
                [(ent.detach() * mask_f).sum(), mask_f.sum(), (response_mask & ~finite).sum().to(ent.dtype)]
            ).tolist()  # one device synchronisation for all three
        ent_sum, num_tokens, nonfinite = stats
        # verl averages SUM metrics over data-parallel ranks and sums them over micro-batches: scaling the local
        # sums by dp_size makes the driver's value the total over the mini-batch.
        metrics[METRIC_ENTROPY_SUM] = Metric(AggregationType.SUM, ent_sum * dp_size)
        metrics[METRIC_NUM_TOKENS] = Metric(AggregationType.SUM, num_tokens * dp_size)
        metrics[METRIC_NONFINITE] = Metric(AggregationType.SUM, nonfinite * dp_size)
        batch_num_tokens = batch_info.get("batch_num_tokens")
        if batch_num_tokens:
            # token-mean over the mini-batch on every rank (what the trainer later recomputes over the whole step)
            metrics[METRIC_CLAMPED_ENTROPY] = Metric(AggregationType.SUM, ent_sum / float(batch_num_tokens) * dp_size)
        else:
            metrics[METRIC_CLAMPED_ENTROPY] = Metric(AggregationType.MEAN, ent_sum / max(num_tokens, 1.0))
        metrics[METRIC_COEF] = Metric(AggregationType.MEAN, coef)
        return loss, metrics


def make_aent_loss(actor_config: Any, clamp_p: float, *, chunk_size: Optional[int] = None, impl: Optional[str] = None):
    """The AEnt loss for ``actor_rollout_wg.set_loss_fn(...)`` or ``engine.train_batch(data, loss_function=...)``.

    ``actor_config`` is the run's actor config; one with ``entropy_coeff != 0`` is refused (two entropy bonuses).
    Each actor-update batch must carry :func:`aent_step_flags` ``(coef)``. The metrics it returns (under
    ``actor/``): ``aent_clamped_entropy`` (token-mean over the mini-batch, nats), ``aent_coef``,
    ``aent_entropy_sum`` and ``aent_num_tokens`` (their ratio over all mini-batches of a step is the token-weighted
    clamped entropy the controller consumes) and ``aent_nonfinite_tokens``.
    """
    return AEntPolicyLoss(actor_config, clamp_p, chunk_size=chunk_size, impl=impl)
