"""The AEnt actor loss for verl 0.9 engine workers (docs/METHOD.md, "Loss").

One callable serves the two calls verl's FSDP engine makes per micro-batch when the micro-batch carries the flag
``distillation_use_topk=True`` (the engine's logits-processor seam, see ``FSDPEngineWithLMHead.prepare_model_outputs``):

1. ``loss(student_logits=<(1, n_tokens, V) temperature-scaled logits>, data=micro_batch)``: the label log-probs AND
   the clamped entropy of the rows that can reach the loss (response positions after verl's one-token shift), from
   one op with one gradient (:func:`aent.logprobs_and_clamped_entropy`), returned as
   ``{"log_probs": (1, n_tokens), "aent_clamped_entropy": (1, n_tokens)}`` (0 on prompt and padding rows). The
   log-probs carry the op's gradient but the values of verl's own log-prob call on the same logits
   (:func:`engine_log_probs`, without autograd), so that they equal the old-log-prob pass's whatever the precision
   path. With ``distillation_only=True`` the engine stores them in ``model_output`` and computes nothing else from
   the logits: neither its own log-probs with autograd (flash-attn's cross-entropy, whose in-place backward would
   overwrite the logits) nor, with ``calculate_entropy=False``, its eager full-vocabulary entropy. docs/VERL.md weighs this against the other
   seams.
2. ``loss(model_output=..., data=micro_batch, dp_group=...)``: the run's own verl policy loss (``ppo_loss`` with
   ``entropy_coeff=0``, whatever ``policy_loss.loss_mode`` is), minus ``coef * agg(clamped entropy)``, aggregated
   with the run's ``loss_agg_mode`` and verl's global batch normalisation (``config.global_batch_info``).

The coefficient of the current step travels with the batch as the non-tensor value ``aent_coef``
(:func:`aent_step_flags` builds all per-step values). verl's ``actor/entropy`` metric is untouched: it comes from
the old-log-prob pass, which these flags do not reach.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch

import aent
from aent.kept import KeptSet
from aent.validate import check_chunk_size, check_clamp_p

__all__ = [
    "AEntPolicyLoss",
    "make_aent_loss",
    "aent_step_flags",
    "CLAMPED_ENTROPY_KEY",
    "COEF_KEY",
    "FUSED_KEY",
    "METRIC_ENTROPY_SUM",
    "METRIC_NUM_TOKENS",
    "METRIC_NONFINITE",
    "METRIC_CLAMPED_ENTROPY",
    "METRIC_COEF",
]

CLAMPED_ENTROPY_KEY = "aent_clamped_entropy"  # model_output key (per token, nested like log_probs)
LOGPROB_GAP_KEY = "aent_logprob_gap"  # model_output key: |AEnt op's log-prob - verl's| per token, no gradient
COEF_KEY = "aent_coef"  # non-tensor batch value: the coefficient of this step
FUSED_KEY = "aent_fused"  # non-tensor batch value: the update runs verl's fused-kernel forward (aent.verl.fused)

# Metric names as they reach the driver (verl prefixes the actor's metrics with "actor/" only when missing).
METRIC_CLAMPED_ENTROPY = "actor/aent_clamped_entropy"
METRIC_COEF = "actor/aent_coef"
METRIC_ENTROPY_SUM = "actor/aent_entropy_sum"
METRIC_NUM_TOKENS = "actor/aent_num_tokens"
METRIC_NONFINITE = "actor/aent_nonfinite_tokens"
METRIC_LOGPROB_GAP = "actor/aent_logprob_gap"
METRIC_LOSS_ENTROPY = "actor/aent_loss_entropy"
METRIC_COEF_MIN = "actor/aent_coef_min"
METRIC_COEF_MAX = "actor/aent_coef_max"


def aent_step_flags(coef: float, *, fused: bool = False) -> Dict[str, Any]:
    """Non-tensor values to put on every actor-update batch for one step (``batch.extra_info`` in the V1 trainer).

    ``distillation_use_topk=True`` makes verl's FSDP engine hand the logits to the loss; ``distillation_only=True``
    makes it take the log-probs from the loss (:func:`aent.logprobs_and_clamped_entropy`) instead of computing its
    own; ``calculate_entropy=False`` keeps verl's eager full-vocabulary entropy out of the update pass.

    ``fused=True`` (a run with ``actor_rollout_ref.model.use_fused_kernels=true``, no logits): the model's fused
    forward computes both with :func:`aent.linear_logprobs_and_clamped_entropy` (:mod:`aent.verl.fused`) and returns
    the clamped entropy as verl's ``entropy``, which ``calculate_entropy=True`` passes on to the loss.
    """
    coef = float(coef)
    if not (coef >= 0.0 and coef < float("inf")):
        raise ValueError(f"the AEnt coefficient must be a finite number >= 0, got {coef!r}")
    if fused:
        return {
            "distillation_use_topk": False,
            "distillation_only": False,
            "calculate_entropy": True,
            COEF_KEY: coef,
            FUSED_KEY: True,
        }
    return {"distillation_use_topk": True, "distillation_only": True, "calculate_entropy": False, COEF_KEY: coef}


def packed_labels_and_loss_rows(data, num_rows: int, device: torch.device):
    """Labels and loss rows of the packed logits the engine hands to the loss, on this sequence-parallel rank.

    Labels are the next token of each position (``roll(input_ids, -1)`` over the packed micro-batch, as verl builds
    ``input_ids_rmpad_rolled``). Loss rows are the positions whose log-prob reaches the loss: verl's own
    ``no_padding_2_padding`` (which the loss applies to the log-probs) maps a packed index to each response token,
    and the response mask keeps the ones that count. Under Ulysses sequence parallelism both are padded and sliced
    with verl's own ``ulysses_pad_and_slice_inputs``, as the engine slices its inputs.
    """
    from verl.utils.ulysses import get_ulysses_sequence_parallel_world_size, ulysses_pad_and_slice_inputs
    from verl.workers.utils.padding import no_padding_2_padding

    input_ids = data["input_ids"]
    if not input_ids.is_nested:
        raise RuntimeError(
            "AEnt expects verl's no-padding micro-batches (nested input_ids); got a padded batch. Keep verl's default "
            "pad_mode (no_padding)."
        )
    ids = input_ids.values().to(device)
    total = ids.shape[0]
    labels = torch.roll(ids, shifts=-1, dims=0)
    positions = no_padding_2_padding(torch.arange(total, device=device), data)  # (bsz, max_response_len)
    response_mask = data.select("response_mask").to_padded_tensor()["response_mask"].to(device=device, dtype=torch.bool)
    if response_mask.shape != positions.shape:
        response_mask = response_mask[:, : positions.shape[1]]
    rows = torch.zeros(total, dtype=torch.bool, device=device)
    rows[positions[response_mask]] = True
    sp_size = get_ulysses_sequence_parallel_world_size()
    if sp_size > 1:
        labels = ulysses_pad_and_slice_inputs(labels.unsqueeze(0), sp_size=sp_size)[0].squeeze(0)
        rows = ulysses_pad_and_slice_inputs(rows.unsqueeze(0).to(torch.int8), sp_size=sp_size)[0].squeeze(0).bool()
    if labels.shape[0] != num_rows:
        raise RuntimeError(
            f"AEnt: the engine handed {num_rows} logit rows but the micro-batch packs {labels.shape[0]} tokens on this "
            f"rank (sequence-parallel size {sp_size}); this verl version lays out its packed logits differently from "
            "verl 0.9.1. Please report it with your verl version."
        )
    return labels, rows


def engine_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The label log-probs of ``logits`` as verl's old-log-prob pass computes them, float32, without a gradient.

    verl 0.9.1's FSDP engine takes its log-probs from ``logprobs_from_logits`` in its own module
    (``verl.workers.engine.fsdp.transformer_impl``): flash-attn's cross-entropy where it is installed, torch_npu's on
    an NPU, else ``logprobs_from_logits_v2`` (float32 logits: logsumexp; bf16 logits: log_softmax in bf16). The
    same function on the same packed logits and labels gives the update the old-log-prob pass's values bit for bit,
    whatever the precision path, so the PPO ratio of an on-policy token is exactly 1. Called without autograd: no
    backward of its own runs (the in-place flash-attn backward never happens); the gradient is AEnt's op's.
    """
    from verl.workers.engine.fsdp import transformer_impl

    with torch.no_grad():
        return transformer_impl.logprobs_from_logits(logits=logits, labels=labels, inplace_backward=False).float()


class _ValueFrom(torch.autograd.Function):
    """``value`` in the forward, the gradient of ``source`` in the backward (both of the same shape)."""

    @staticmethod
    def forward(ctx, source, value):
        return value.to(source.dtype).clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class AEntPolicyLoss:
    """verl loss callable: the run's policy loss minus ``coef x`` aggregated clamped entropy (picklable for Ray).

    Args:
        actor_config: the run's ``verl.workers.config.ActorConfig`` (e.g. ``omega_conf_to_dataclass(
            config.actor_rollout_ref.actor)``). Its ``entropy_coeff`` must be 0: the entropy term is AEnt's.
        kept: the entropy's kept set, an :class:`aent.KeptSet` (``bottom_p``, ``top_k``, ``top_p``), or a number:
            the removed vocabulary fraction ``clamp_p`` of ``bottom_p`` (0 = full-vocabulary entropy bonus).
        chunk_size: rows per chunk of :func:`aent.restricted_entropy` (``None``: automatic).
        impl: implementation of :func:`aent.restricted_entropy` (``None``: ``"auto"``).
    """

    def __init__(
        self,
        actor_config: Any,
        kept: Union[KeptSet, float],
        *,
        chunk_size: Optional[int] = None,
        impl: Optional[str] = None,
    ):
        if getattr(actor_config, "entropy_coeff", 0.0) != 0.0:
            raise ValueError(
                f"actor_rollout_ref.actor.entropy_coeff={actor_config.entropy_coeff} would add verl's own "
                "full-vocabulary entropy bonus on top of AEnt's: set actor_rollout_ref.actor.entropy_coeff=0 "
                "(AEnt's coefficient is aent.coef_init; a plain entropy bonus is aent.clamp_p=0)"
            )
        policy_loss = getattr(actor_config, "policy_loss", None)
        if getattr(policy_loss, "loss_mode", None) == "aent":
            raise ValueError(
                "actor_rollout_ref.actor.policy_loss.loss_mode=aent names AEnt itself, not the policy loss AEnt adds "
                "its term to: the AEnt trainer resolves it on the driver (aent.verl.checks.apply_loss_mode); here, "
                "give the actor config a verl policy loss (e.g. loss_mode=vanilla)"
            )
        if not isinstance(kept, KeptSet):  # a number: bottom_p's clamp_p, refused under its verl name
            kept = KeptSet.bottom_p(check_clamp_p("aent.clamp_p", kept))
        chunk_size = check_chunk_size("aent.chunk_size", chunk_size)
        self.actor_config = actor_config
        self.kept = kept
        self.chunk_size = chunk_size
        self.impl = impl

    # -- the logits-processor call -------------------------------------------------------------------------
    def logits_outputs(self, student_logits: torch.Tensor, data) -> Dict[str, torch.Tensor]:
        """Label log-probs and clamped entropy of the engine's ``(1, n_tokens, V)`` logits, each ``(1, n_tokens)``.

        Only the loss rows are computed (0 elsewhere). The log-probs' values are verl's (:func:`engine_log_probs`),
        their gradient the op's; ``aent_logprob_gap`` holds ``|op's log-prob - verl's|`` per row, for the metric of
        the same name. Non-finite rows come back as NaN: the loss call counts them on response tokens, and the
        trainer stops the step with an error naming it.
        """
        logits = student_logits.squeeze(0)
        labels, rows = packed_labels_and_loss_rows(data, logits.shape[0], logits.device)
        log_probs, ent = aent.logprobs_and_clamped_entropy(
            logits, labels, self.kept, row_mask=rows, chunk_size=self.chunk_size, impl=self.impl, check_finite=False
        )
        verl_log_probs = engine_log_probs(logits, labels).masked_fill(~rows, 0.0)  # 0 off the loss rows, as the op
        gap = (log_probs.detach() - verl_log_probs).abs()  # the op's own values against verl's: rounding only
        log_probs = _ValueFrom.apply(log_probs, verl_log_probs)
        return {
            "log_probs": log_probs.unsqueeze(0),
            CLAMPED_ENTROPY_KEY: ent.unsqueeze(0),
            LOGPROB_GAP_KEY: gap.unsqueeze(0),
        }

    # -- the loss call -------------------------------------------------------------------------------------
    def __call__(self, model_output=None, data=None, dp_group=None, *, student_logits=None):
        if student_logits is not None:
            return self.logits_outputs(student_logits, data)
        return self.loss(model_output, data, dp_group)

    def loss(self, model_output, data, dp_group=None):
        from verl.trainer.ppo.core_algos import agg_loss
        from verl.utils import tensordict_utils as tu
        from verl.utils.metric import AggregationType, Metric
        from verl.workers.utils.losses import ppo_loss
        from verl.workers.utils.padding import no_padding_2_padding

        config = self.actor_config
        if tu.get_non_tensor_data(data=data, key=FUSED_KEY, default=False) and "entropy" in model_output:
            # the fused forward (aent.verl.fused) returned the clamped entropy as verl's entropy
            model_output[CLAMPED_ENTROPY_KEY] = model_output.pop("entropy")
        policy_loss, metrics = ppo_loss(config, model_output, data, dp_group)
        if CLAMPED_ENTROPY_KEY not in model_output:
            if torch.is_grad_enabled():
                raise RuntimeError(
                    "the AEnt loss got no clamped entropy from the engine: the actor-update batch lacks the per-step "
                    "flags. Run with trainer.v1.trainer_mode=aent, or put aent.verl.aent_step_flags(coef) on the "
                    "batch (distillation_use_topk=True, distillation_only=True, calculate_entropy=False, aent_coef)"
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
            zero = torch.zeros((), dtype=ent.dtype, device=ent.device)
            gap_max = zero
            if LOGPROB_GAP_KEY in model_output:  # from logits_outputs (absent where a caller built model_output)
                gap = no_padding_2_padding(model_output[LOGPROB_GAP_KEY], data).to(ent.dtype)
                gap = torch.where(response_mask & finite & torch.isfinite(gap), gap, zero)
                gap_max = gap.max() if gap.numel() else zero
            stats = torch.stack(
                [
                    (ent.detach() * mask_f).sum(),
                    mask_f.sum(),
                    (response_mask & ~finite).sum().to(ent.dtype),
                    gap_max,
                    ent_agg.detach().to(ent.dtype),
                ]
            ).tolist()  # one device synchronisation for all five
        ent_sum, num_tokens, nonfinite, gap_max, ent_term = stats
        # verl averages SUM metrics over data-parallel ranks and sums them over micro-batches: scaling the local
        # sums by dp_size makes the driver's value the total over the mini-batch.
        metrics[METRIC_ENTROPY_SUM] = Metric(AggregationType.SUM, ent_sum * dp_size)
        metrics[METRIC_NUM_TOKENS] = Metric(AggregationType.SUM, num_tokens * dp_size)
        metrics[METRIC_NONFINITE] = Metric(AggregationType.SUM, nonfinite * dp_size)
        # the update's log-probs are verl's values (engine_log_probs) with the gradient of AEnt's op: the largest
        # difference between the two on a response token is float rounding, unless they compute different things
        if LOGPROB_GAP_KEY in model_output:
            metrics[METRIC_LOGPROB_GAP] = Metric(AggregationType.MAX, gap_max)
        metrics[METRIC_COEF] = Metric(AggregationType.MEAN, coef)
        # the aggregate that entered the loss (summed like verl's pg_loss: loss = pg_loss - coef x this), and the
        # coefficient's range over micro-batches and ranks (one value when every rank trained with the same one)
        metrics[METRIC_LOSS_ENTROPY] = Metric(AggregationType.SUM, ent_term)
        metrics[METRIC_COEF_MIN] = Metric(AggregationType.MIN, coef)
        metrics[METRIC_COEF_MAX] = Metric(AggregationType.MAX, coef)
        return loss, metrics


def make_aent_loss(
    actor_config: Any, kept: Union[KeptSet, float], *, chunk_size: Optional[int] = None, impl: Optional[str] = None
):
    """The AEnt loss for ``actor_rollout_wg.set_loss_fn(...)`` or ``engine.train_batch(data, loss_function=...)``.

    ``actor_config`` is the run's actor config; one with ``entropy_coeff != 0`` is refused (two entropy bonuses).
    ``kept`` is the entropy's kept set (an :class:`aent.KeptSet`, or a number: ``bottom_p``'s ``clamp_p``).
    Each actor-update batch must carry :func:`aent_step_flags` ``(coef)``. The metrics it returns (under
    ``actor/``): ``aent_coef``, ``aent_entropy_sum`` and ``aent_num_tokens`` (their ratio over all mini-batches of a
    step is the token-weighted clamped entropy the controller consumes; the AEnt trainer logs it as
    ``actor/aent_clamped_entropy``) and ``aent_nonfinite_tokens``.
    """
    return AEntPolicyLoss(actor_config, kept, chunk_size=chunk_size, impl=impl)
