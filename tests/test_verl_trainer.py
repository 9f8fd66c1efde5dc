"""The AEnt trainer modes on the driver (``aent``, ``aent_colocate_async``, ``aent_separate_async``: one mixin on each
of verl's V1 trainers), with stubbed worker groups: the flags and the coefficient carried by the update batch, the
controller fed with the token-weighted clamped entropy, checkpoint save/load of its state, the refused resume without
it, PPO with a critic through critic warm-up, and the real loss's metrics through verl's own aggregation."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
from aent_test_support.deps import require

require("verl", "verl")

from hydra import compose, initialize_config_dir  # noqa: E402

import aent  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# what each AEnt mode needs on top of the recipe to pass verl's own constructor checks of its base trainer
MODE_OVERRIDES = {
    "aent": [],
    "aent_colocate_async": ["trainer.v1.trainer_mode=aent_colocate_async"],
    "aent_separate_async": [
        "trainer.v1.trainer_mode=aent_separate_async",
        "trainer.v1.separate_async.parameter_sync_step=4",  # train_batch_size 512 = 4 x ppo_mini_batch_size 128
        "actor_rollout_ref.rollout.nnodes=1",
        "actor_rollout_ref.rollout.n_gpus_per_node=8",
        "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
    ],
}


def _config(tmp_path, *overrides, recipe="aent_grpo_math"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=recipe, overrides=[f"trainer.default_local_dir={tmp_path}/ckpt", *overrides])


class Batch:
    """What the V1 trainer hands to the worker group: a key/value batch reference with ``extra_info``."""

    made = 0

    def __init__(self):
        Batch.made += 1
        self.extra_info = {}
        self.keys = [f"b{Batch.made}k{i}" for i in range(4)]
        self.tags = [{} for _ in range(4)]
        self.partition_id = "train"


class StubActorWorkerGroup:
    """Answers ``update_actor`` as verl's workers do: per-mini-batch metric lists (here two mini-batches)."""

    def __init__(self, script, trainer=None):
        self.script = list(script)  # per update: (entropy sums, token counts) of its mini-batches
        self.trainer = trainer
        self.update_batches, self.loss_fns, self.saved, self.loaded = [], [], [], []
        self.extra_info_types = []

    def set_loss_fn(self, loss_fn):
        self.loss_fns.append(loss_fn)

    def update_actor(self, batch):
        # the trainer's worker-group attribute is this object during the call (no swapped proxy)
        assert self.trainer is None or self.trainer.actor_rollout_wg is self
        self.update_batches.append(dict(batch.extra_info))
        # what the workers receive: verl deep-copies extra_info when it splits the batch, Ray pickles it
        self.extra_info_types.append(
            (type(copy.deepcopy(batch.extra_info)), type(pickle.loads(pickle.dumps(batch.extra_info))))
        )
        sums, tokens = self.script.pop(0)
        return {
            "metrics": {
                "mfu": [0.5] * len(sums),
                "actor/pg_loss": [0.1] * len(sums),
                "actor/aent_entropy_sum": list(sums),
                "actor/aent_num_tokens": list(tokens),
                "actor/aent_nonfinite_tokens": [0.0] * len(sums),
                "actor/aent_coef": [batch.extra_info["aent_coef"]] * len(sums),
            }
        }

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self.saved.append((local_path, global_step))

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.loaded.append(local_path)


class StubDataLoader:
    def __init__(self):
        self.state = {"epoch": 0}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def _trainer(cfg, script):
    from verl.trainer.ppo.v1 import get_trainer_cls

    # the real constructor of the mode's registered class: checks, controller, verl's own trainer set-up
    trainer = get_trainer_cls(cfg.trainer.v1.trainer_mode)(cfg)
    trainer.actor_rollout_wg = StubActorWorkerGroup(script, trainer)
    trainer.train_dataloader = StubDataLoader()
    trainer.distillation_config = None
    trainer.global_steps = 1
    return trainer


@pytest.fixture
def one_update_per_step(monkeypatch):
    """Runs verl's real ``PPOTrainer.step`` with the rollout/reward/advantage stages reduced to the actor update."""
    from verl.trainer.ppo.v1 import PPOTrainerSeparateAsync
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    def step_once(self, metrics, timing_raw, sample_batch_size):
        return self._update_actor(Batch(), metrics)

    monkeypatch.setattr(PPOTrainer, "_step_once", step_once)
    for cls in (PPOTrainer, PPOTrainerSeparateAsync):  # the latter waits for its rollout pool there
        monkeypatch.setattr(cls, "prepare_step", lambda self: {})


@pytest.mark.parametrize("mode", sorted(MODE_OVERRIDES))
def test_each_mode_is_registered_on_its_verl_trainer_and_runs_under_its_name(tmp_path, mode):
    from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, get_trainer_cls

    from aent.verl.checks import AENT_MODES
    from aent.verl.trainer import AEntTrainerMixin

    verl_base = {"sync": PPOTrainerSync, "colocate_async": PPOTrainerColocateAsync}.get(
        AENT_MODES[mode], PPOTrainerSeparateAsync
    )
    cls = get_trainer_cls(mode)
    assert cls.__mro__[1:3] == (AEntTrainerMixin, verl_base)  # one piece of AEnt logic in front of verl's trainer
    trainer = _trainer(_config(tmp_path, *MODE_OVERRIDES[mode]), [])
    assert trainer.trainer_mode == AENT_MODES[mode]  # verl's base classes branch on their own mode name
    expected_sync_steps = 4 if mode == "aent_separate_async" else 1
    assert trainer.parameter_sync_step == expected_sync_steps  # read from trainer.v1.<verl mode>


def test_loss_is_installed_once_after_init(tmp_path):
    from aent.verl.loss import AEntPolicyLoss

    trainer = _trainer(_config(tmp_path, "aent.chunk_size=64"), [])

    class StubCheckpointManager:
        def __init__(self):
            self.updated = []

        def update_weights(self, step):
            self.updated.append(step)

    trainer.checkpoint_manager = StubCheckpointManager()
    trainer.on_init_end()
    (loss_fn,) = trainer.actor_rollout_wg.loss_fns
    assert isinstance(loss_fn, AEntPolicyLoss)
    assert loss_fn.kept == aent.KeptSet.bottom_p(0.33) and loss_fn.chunk_size == 64
    assert loss_fn.actor_config.loss_agg_mode == "token-mean" and loss_fn.actor_config.entropy_coeff == 0
    assert trainer.checkpoint_manager.updated == [1]  # verl's sync on_init_end still runs


@pytest.mark.parametrize("mode", sorted(MODE_OVERRIDES))
def test_step_flags_and_controller_update(tmp_path, one_update_per_step, mode):
    """One controller update per global step from the token-weighted entropy of ALL its updates (separate_async runs
    parameter_sync_step=4 updates per step); the coefficient travels with each update batch."""
    # warmup 0 so the controller moves from step 1; entropies below the band make the coefficient rise
    per_step = [([10.0, 30.0], [100.0, 300.0]), ([5.0, 50.0], [200.0, 300.0]), ([90.0, 90.0], [300.0, 300.0])]
    updates = 4 if mode == "aent_separate_async" else 1
    # each update of a step gets its own measurements: scaled copies, so the token weighting matters
    script = [
        ([x * (u + 1) for x in sums], [t * (2 * u + 1) for t in tokens])
        for sums, tokens in per_step
        for u in range(updates)
    ]
    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=0", *MODE_OVERRIDES[mode]), script)
    reference = aent.AdaptiveCoefficient(
        init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3, warmup_steps=0
    )
    for step in range(1, len(per_step) + 1):
        trainer.global_steps = step
        metrics = {}
        coef_sent = reference.value
        trainer.step(metrics, {})
        step_updates = script[(step - 1) * updates : step * updates]
        sent = trainer.actor_rollout_wg.update_batches[-updates:]
        assert len(trainer.actor_rollout_wg.update_batches) == step * updates
        for extra in sent:
            assert extra["aent_coef"] == coef_sent  # one coefficient for all updates of the step
            # AEnt's flags, kept over the ones verl's _update_actor writes (it writes distillation_only=False)
            assert extra["distillation_use_topk"] is True and extra["calculate_entropy"] is False
            assert extra["distillation_only"] is True
            assert extra["global_batch_size"] == 128 * 16  # verl's own values are still there
        assert all(types == (dict, dict) for types in trainer.actor_rollout_wg.extra_info_types)
        measured = sum(sum(s) for s, _ in step_updates) / sum(sum(t) for _, t in step_updates)
        reference.update(measured, step)
        assert metrics["actor/aent_clamped_entropy"] == pytest.approx(measured, rel=1e-12)
        assert metrics["actor/aent_coef"] == coef_sent
        assert metrics["actor/aent_coef_next"] == pytest.approx(reference.value, rel=1e-12)
        assert trainer.coefficient.value == pytest.approx(reference.value, rel=1e-12)
        assert trainer.coefficient.num_updates == step  # once per global step, not once per update
    assert trainer.coefficient.value != 0.002


def test_entropy_is_measured_and_used_when_the_coefficient_is_zero(tmp_path, one_update_per_step):
    cfg = _config(tmp_path, "aent.coef_init=0", "aent.coef_min=0", "aent.warmup_steps=0")
    trainer = _trainer(cfg, [([1.0], [100.0]), ([1.0], [100.0])])
    trainer.step({}, {})
    assert trainer.actor_rollout_wg.update_batches[0]["aent_coef"] == 0.0
    assert trainer.coefficient.value > 0.0  # 0.01 nats is below the band: the controller raised it
    trainer.global_steps = 2
    trainer.step({}, {})
    # Algorithm 1 from lambda = 0: lambda <- 0 - lr * (H - H_low) with H = 1 / 100 nats
    assert trainer.actor_rollout_wg.update_batches[1]["aent_coef"] == pytest.approx(0.002 * (0.15 - 0.01), rel=1e-9)


def test_non_finite_tokens_stop_the_step_with_a_clear_error(tmp_path, one_update_per_step):
    trainer = _trainer(_config(tmp_path), [([1.0], [10.0])])

    def with_nan(batch):
        out = StubActorWorkerGroup.update_actor(trainer.actor_rollout_wg, batch)
        out["metrics"]["actor/aent_nonfinite_tokens"] = [3.0]
        return out

    trainer.actor_rollout_wg.update_actor = with_nan
    with pytest.raises(FloatingPointError, match="3 response tokens"):
        trainer.step({}, {})


def test_checkpoint_save_then_load_restores_the_controller(tmp_path, one_update_per_step):
    cfg = _config(tmp_path, "aent.warmup_steps=0")
    trainer = _trainer(cfg, [([1.0], [100.0]), ([2.0], [100.0])])
    for step in (1, 2):
        trainer.global_steps = step
        trainer.step({}, {})
    trainer._save_checkpoint()
    saved = trainer.coefficient.state_dict()
    path = tmp_path / "ckpt" / "global_step_2" / "aent_controller.json"
    assert json.loads(path.read_text())["coefficient"] == saved
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "2"

    resumed = _trainer(_config(tmp_path, "aent.warmup_steps=0"), [([1.0], [100.0])])
    assert resumed.coefficient.value == 0.002
    resumed._load_checkpoint()  # trainer.resume_mode=auto finds global_step_2
    assert resumed.global_steps == 2
    assert resumed.coefficient.state_dict() == saved
    assert resumed.actor_rollout_wg.loaded == [str(tmp_path / "ckpt" / "global_step_2" / "actor")]
    # the resumed run sends the restored coefficient with its next update
    resumed.global_steps = 3
    resumed.step({}, {})
    assert resumed.actor_rollout_wg.update_batches[0]["aent_coef"] == saved["value"]

    by_path = _trainer(
        _config(tmp_path, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path}/ckpt/global_step_2"),
        [],
    )
    by_path._load_checkpoint()
    assert by_path.coefficient.value == saved["value"]


def test_the_target_controller_and_top_k_kept_set_through_a_checkpoint(tmp_path, one_update_per_step):
    """skywork_math's target controller drives the steps (gate closed: coefficient 0 on the next batch) and comes
    back from aent_controller.json; tre_topk_math's loss carries its kept set."""
    cfg = _config(tmp_path, "aent.coef_init=0.001", recipe="skywork_math")
    # entropies 0.1 (below the 0.2 target: +delta, gate open) then 0.5 (above: -delta, gate closed)
    trainer = _trainer(cfg, [([10.0], [100.0]), ([50.0], [100.0])])
    for step in (1, 2):
        trainer.global_steps = step
        trainer.step({}, {})
    sent = [batch["aent_coef"] for batch in trainer.actor_rollout_wg.update_batches]
    assert sent == [0.001, pytest.approx(0.0011)]
    assert trainer.coefficient.value == 0.0 and trainer.coefficient.coef == pytest.approx(0.001)
    trainer._save_checkpoint()
    state = json.loads((tmp_path / "ckpt" / "global_step_2" / "aent_controller.json").read_text())["coefficient"]
    assert state["kind"] == "target" and state["gate"] is False and state["step"] == 2
    resumed = _trainer(_config(tmp_path, "aent.coef_init=0.001", recipe="skywork_math"), [([10.0], [100.0])])
    resumed._load_checkpoint()
    assert resumed.coefficient.state_dict() == trainer.coefficient.state_dict()
    resumed.global_steps = 3
    resumed.step({}, {})
    assert resumed.actor_rollout_wg.update_batches[0]["aent_coef"] == 0.0  # the closed gate: no bonus on step 3
    assert resumed.coefficient.value == pytest.approx(0.0011)  # 0.1 < 0.2: reopened, +delta

    topk = _trainer(_config(tmp_path / "topk", recipe="tre_topk_math"), [])
    assert topk.build_aent_loss().kept == aent.KeptSet.top_k(2)


def test_resume_with_another_kind_of_coefficient_is_refused(tmp_path):
    from aent.verl.checks import StartupError

    trainer = _trainer(_config(tmp_path), [])
    trainer._save_checkpoint()
    constant = _trainer(_config(tmp_path, "aent.lr=0"), [])
    with pytest.raises(StartupError, match="same kind of coefficient"):
        constant._load_checkpoint()


def test_resume_without_controller_state_stops_unless_the_user_opts_in(tmp_path, caplog):
    from aent.verl.checks import StartupError

    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=0"), [])
    trainer._save_checkpoint()
    os.remove(tmp_path / "ckpt" / "global_step_1" / "aent_controller.json")  # e.g. a checkpoint of a GRPO run
    resumed = _trainer(_config(tmp_path, "aent.warmup_steps=0"), [])
    with pytest.raises(StartupError) as info:
        resumed._load_checkpoint()
    msg = str(info.value)
    assert "aent_controller.json" in msg and "aent.resume_without_controller=true" in msg
    assert "trainer.resume_mode=disable" in msg and "past the warm-up" in msg

    opted_in = _trainer(_config(tmp_path, "aent.warmup_steps=0", "++aent.resume_without_controller=true"), [])
    with caplog.at_level("WARNING"):
        opted_in._load_checkpoint()
    assert opted_in.global_steps == 1 and opted_in.coefficient.value == 0.002  # coef_init
    assert "aent.resume_without_controller=true" in caplog.text


def test_a_corrupt_controller_file_stops_the_resume_naming_the_file_and_the_fix(tmp_path):
    from aent.verl.checks import StartupError

    trainer = _trainer(_config(tmp_path), [])
    trainer._save_checkpoint()
    path = tmp_path / "ckpt" / "global_step_1" / "aent_controller.json"
    for broken in (path.read_text()[:20], "", "[1, 2]"):  # truncated, empty, not an object
        path.write_text(broken)
        with pytest.raises(StartupError) as info:
            _trainer(_config(tmp_path), [])._load_checkpoint()
        msg = str(info.value)
        assert str(path) in msg and "truncated or corrupt" in msg
        assert "trainer.resume_from_path" in msg and "aent.resume_without_controller=true" in msg


@pytest.mark.parametrize(
    "overrides,asked_mode,asked_loss",
    [([], "aent", "vanilla"), (["actor_rollout_ref.actor.policy_loss.loss_mode=aent"], "aent", "aent")],
    ids=["trainer_mode", "loss_mode"],
)
def test_the_tracked_config_shows_what_the_user_ran(tmp_path, overrides, asked_mode, asked_loss):
    """verl logs the trainer's config to the tracker when fit starts; the trainer has by then switched the mode to
    verl's base mode, so the config carries the user's request (aent_run) and every AEnt option as it runs."""
    from omegaconf import OmegaConf

    from aent.verl.options import AEntOptions

    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=5", *overrides), [])
    assert trainer.config.trainer.v1.trainer_mode == "sync"  # what verl's base class runs under
    tracked = OmegaConf.to_container(trainer.config, resolve=True)  # what fit() hands to verl's Tracking
    assert tracked["aent_run"] == {
        "trainer.v1.trainer_mode": asked_mode,
        "actor_rollout_ref.actor.policy_loss.loss_mode": asked_loss,
        "aent_trainer_mode": "aent",
    }
    assert set(tracked["aent"]) == {f.name for f in __import__("dataclasses").fields(AEntOptions)}
    assert tracked["aent"]["warmup_steps"] == 5 and tracked["aent"]["coef_init"] == 0.002
    assert tracked["aent"]["base_loss_mode"] == tracked["actor_rollout_ref"]["actor"]["policy_loss"]["loss_mode"]


@pytest.mark.parametrize("mode", ["aent_colocate_async", "aent_separate_async"])
def test_async_modes_checkpoint_and_restore_the_controller(tmp_path, one_update_per_step, mode, monkeypatch):
    import transfer_queue as tq

    saved_tq = []
    monkeypatch.setattr(tq, "save_checkpoint", lambda path, metadata=None: saved_tq.append(path))  # no TQ service
    updates = 4 if mode == "aent_separate_async" else 1
    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=0", *MODE_OVERRIDES[mode]), [([1.0], [100.0])] * updates)
    trainer.step({}, {})
    trainer._save_checkpoint()
    assert saved_tq  # verl's async checkpoint path ran (its TransferQueue state) next to the controller file
    saved = trainer.coefficient.state_dict()
    assert saved["value"] != 0.002
    resumed = _trainer(_config(tmp_path, "aent.warmup_steps=0", *MODE_OVERRIDES[mode]), [])
    monkeypatch.setattr(os.path, "exists", lambda p, _exists=os.path.exists: _exists(p) and "transfer_queue" not in p)
    resumed._load_checkpoint()
    assert resumed.coefficient.state_dict() == saved


def test_ppo_with_a_critic_through_critic_warmup_and_an_aent_step(tmp_path):
    """The GAE recipe (critic on) in verl's real ``_step_once``: step 1 trains only the critic (critic_warmup=2), so
    nothing is measured and the controller stays; step 2 updates the critic, then the actor with AEnt."""
    from types import SimpleNamespace

    cfg = _config(tmp_path, "trainer.critic_warmup=2", "aent.warmup_steps=0", recipe="aent_ppo_math")
    assert cfg.algorithm.adv_estimator == "gae" and cfg.critic.enable
    trainer = _trainer(cfg, [([12.0, 4.0], [100.0, 60.0])])
    assert trainer.use_critic
    calls = []

    class StubCriticWorkerGroup:
        def train_mini_batch(self, batch):
            calls.append(("critic", trainer.global_steps))
            return SimpleNamespace(get=lambda: {"metrics": {"mfu": [0.5, 0.5], "vf_loss": [0.3, 0.1]}})

    def stage(name):
        def run(batch, metrics=None):
            calls.append((name, trainer.global_steps))
            return batch

        return run

    trainer.critic_wg = StubCriticWorkerGroup()
    trainer.replay_buffer = SimpleNamespace(sample=lambda global_steps, partition_id, batch_size: (Batch(), {}))
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=["reward workers"])  # not colocated
    trainer.checkpoint_manager = SimpleNamespace(sleep_replicas=lambda: None)
    trainer.curr_step_profile = False
    trainer.prepare_step = lambda: {}
    for name in ("_balance_batch", "_compute_old_log_prob", "_compute_values", "_compute_advantage"):
        setattr(trainer, name, stage(name))

    trainer.global_steps = 1
    metrics = {}
    trainer.step(metrics, {})
    assert ("critic", 1) in calls and ("_compute_values", 1) in calls
    assert trainer.actor_rollout_wg.update_batches == []  # critic warm-up: no actor update
    assert metrics["critic/vf_loss"] == pytest.approx(0.2)
    assert "actor/aent_clamped_entropy" not in metrics
    assert trainer.coefficient.value == 0.002 and trainer.coefficient.num_updates == 0

    trainer.global_steps = 2
    metrics = {}
    trainer.step(metrics, {})
    assert ("critic", 2) in calls
    (sent,) = trainer.actor_rollout_wg.update_batches
    assert sent["aent_coef"] == 0.002 and sent["distillation_use_topk"] is True
    reference = aent.AdaptiveCoefficient(
        init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3, warmup_steps=0
    )
    reference.update(16.0 / 160.0, 2)
    assert metrics["actor/aent_clamped_entropy"] == pytest.approx(0.1, rel=1e-12)
    assert trainer.coefficient.value == pytest.approx(reference.value, rel=1e-12) and reference.value > 0.002


class _Workers:
    """Two emulated data-parallel actor ranks running the REAL AEnt loss (``AEntPolicyLoss.loss``, verl's
    ``ppo_loss`` inside) on real micro-batches, with verl 0.9.1's own metric plumbing around it."""

    P = 3  # prompt tokens per sequence

    def __init__(self, trainer, mini_batches):
        from verl.workers.config import FSDPActorConfig

        from aent.verl.loss import AEntPolicyLoss

        self.trainer = trainer
        self.mini_batches = mini_batches  # [mini-batch][rank][micro-batch] -> response lengths
        self.loss = AEntPolicyLoss(
            FSDPActorConfig(
                strategy="fsdp2",
                ppo_mini_batch_size=4,
                ppo_micro_batch_size_per_gpu=2,
                rollout_n=1,
                loss_agg_mode="token-mean",
            ),
            0.3,
        )
        self.gen = __import__("torch").Generator().manual_seed(0)
        self.response_entropies = []  # every response token's clamped entropy the loss saw

    def micro_batch(self, resp_lens, flags, batch_num_tokens, global_batch_size):
        import torch
        from tensordict import TensorDict
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

        from aent.verl.loss import CLAMPED_ENTROPY_KEY

        bs, P, R = len(resp_lens), self.P, max(resp_lens)
        attn = torch.zeros(bs, P + R, dtype=torch.long)
        attn[:, :P] = 1
        for i, n in enumerate(resp_lens):
            attn[i, P : P + n] = 1
        td = TensorDict(
            {
                "input_ids": torch.randint(3, 300, (bs, P + R), generator=self.gen),
                "attention_mask": attn,
                "position_ids": (attn.cumsum(-1) - 1).clamp_min(0),
                "response_mask": attn[:, P:].clone(),
                "prompts": torch.randint(3, 300, (bs, P), generator=self.gen),
                "responses": torch.randint(3, 300, (bs, R), generator=self.gen),
                "old_log_probs": -torch.rand(bs, R, generator=self.gen),
                "advantages": torch.randn(bs, R, generator=self.gen),
            },
            batch_size=[bs],
        )
        td = left_right_2_no_padding(td)
        # what verl's FSDP engine puts on every micro-batch (forward_backward_batch), plus the trainer's flags
        tu.assign_non_tensor(
            td,
            dp_size=2,
            batch_num_tokens=batch_num_tokens,
            global_batch_size=global_batch_size,
            use_dynamic_bsz=False,
            **flags,
        )
        nnz = int(td["input_ids"].values().numel())
        # entropies on a 1/8 grid: float32 sums of them are exact, so the expected mean is exact too
        ent = torch.randint(0, 24, (nnz,), generator=self.gen).float() / 8
        model_output = {"log_probs": -torch.rand(nnz, generator=self.gen), CLAMPED_ENTROPY_KEY: ent}
        mask = td["response_mask"]
        mask = mask.to_padded_tensor(0) if mask.is_nested else mask
        response = no_padding_2_padding(ent, td)[mask.bool()]
        assert response.numel() == sum(resp_lens)
        self.response_entropies.append(response.double())
        return td, model_output

    def update_actor(self, batch):
        from itertools import chain

        from verl.utils.metric import Metric
        from verl.utils.py_functional import append_to_dict
        from verl.workers.engine.utils import postprocess_batch_func

        assert self.trainer.actor_rollout_wg is self
        from aent.verl.loss import aent_step_flags

        flags = {key: batch.extra_info[key] for key in aent_step_flags(0.0)}  # what the trainer put on the batch
        worker_metrics = {}
        for ranks in self.mini_batches:
            batch_num_tokens = sum(sum(lens) for micro in ranks for lens in micro)  # all-reduced over dp ranks
            global_batch_size = sum(len(lens) for micro in ranks for lens in micro)  # sequences, all ranks
            per_rank = []
            for micro_batches in ranks:
                outputs = []
                for lens in micro_batches:
                    td, model_output = self.micro_batch(lens, flags, batch_num_tokens, global_batch_size)
                    loss, metrics = self.loss(model_output=model_output, data=td)  # the engine's loss call
                    outputs.append({"loss": loss.detach(), "metrics": metrics})
                # the engine's own per-rank aggregation over micro-batches
                per_rank.append(postprocess_batch_func(outputs, None, td)["metrics"])
            # TrainingWorker._postprocess_output all-gathers the metric dict over the dp group: one entry per rank,
            # in rank order (emulated here; the collective needs two processes)
            gathered = {key: [rank[key] for rank in per_rank] for key in per_rank[0]}
            gathered["mfu"] = 0.5
            # verl 0.9.1 TrainingWorker.train_mini_batch: flatten dp and micro-batches, one value per mini-batch
            for key, val in gathered.items():
                if isinstance(val, list):
                    gathered[key] = Metric.aggregate_dp(val) if isinstance(val[0], Metric) else list(chain(*val))
            append_to_dict(worker_metrics, gathered)
        return {"metrics": worker_metrics}


def test_real_loss_metrics_through_verls_aggregation_give_the_controller_the_exact_token_mean(
    tmp_path, one_update_per_step
):
    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=0"), [])
    # two mini-batches; in each, rank 0 has many more response tokens than rank 1; two micro-batches per rank
    mini_batches = [
        [[[6, 5], [6, 6]], [[1, 2], [1, 1]]],
        [[[3, 6], [5, 4]], [[2, 1], [1, 2]]],
    ]
    trainer.actor_rollout_wg = workers = _Workers(trainer, mini_batches)
    metrics = {}
    trainer.step(metrics, {})

    import torch

    every_token = torch.cat(workers.response_entropies)
    exact = float(every_token.mean())  # float64 over every response token of both ranks and both mini-batches
    assert trainer.coefficient.last_entropy == pytest.approx(exact, rel=1e-12, abs=0)
    assert metrics["actor/aent_clamped_entropy"] == pytest.approx(exact, rel=1e-12, abs=0)
    assert trainer.coefficient.num_updates == 1
    # the unweighted mean of the per-micro-batch means is a different number: the weighting is what is tested
    per_micro = [float(t.mean()) for t in workers.response_entropies]
    assert abs(sum(per_micro) / len(per_micro) - exact) > 1e-3


def test_warmup_steps_means_the_same_steps_in_verl_and_in_the_readme_loop(tmp_path, one_update_per_step):
    """verl counts global steps from 1; the README's loop enumerates from 1 too. With warmup_steps=3 the steps 1-3
    train with coef_init, the controller first moves the coefficient after step 3, and step 4 is the first to use a
    moved value, in both."""
    entropies = [0.05, 0.06, 0.07, 0.08, 0.09, 0.10]  # below the band: the coefficient rises once it may move
    readme = open(os.path.join(os.path.dirname(CONFIG_DIR), "README.md")).read()
    assert "for step, batch in enumerate(loader, start=1):" in readme
    assert 'coef.update(m["clamped_entropy"], step)' in readme

    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=3"), [([h * 100], [100.0]) for h in entropies])
    used_by_verl = []
    for step in range(1, len(entropies) + 1):
        trainer.global_steps = step
        metrics = {}
        trainer.step(metrics, {})
        used_by_verl.append(metrics["actor/aent_coef"])

    coef = aent.AdaptiveCoefficient(
        init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3, warmup_steps=3
    )
    used_by_loop = []
    for step, h in enumerate(entropies, start=1):  # the README's loop: one batch per step
        used_by_loop.append(coef.value)
        coef.update(h, step)

    assert used_by_verl == pytest.approx(used_by_loop, rel=1e-12)
    first_moved = [step for step, c in enumerate(used_by_verl, start=1) if c != 0.002][0]
    assert first_moved == 4


def test_with_fused_kernels_the_update_batch_carries_the_fused_flags(tmp_path, one_update_per_step):
    """use_fused_kernels=true: the flags of aent.verl.fused's seam, kept over the ones verl's _update_actor writes."""
    trainer = _trainer(_config(tmp_path, "actor_rollout_ref.model.use_fused_kernels=true"), [([10.0], [100.0])])
    trainer.step({}, {})
    (extra,) = trainer.actor_rollout_wg.update_batches
    assert extra["aent_fused"] is True and extra["calculate_entropy"] is True
    assert extra["distillation_use_topk"] is False and extra["distillation_only"] is False
    assert extra["aent_coef"] == 0.002
