"""The ``aent`` trainer mode on the driver, with stubbed worker groups: per-step injection of the flags and the
coefficient, the controller fed with the token-weighted clamped entropy, checkpoint save/load of its state."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("verl")

from hydra import compose, initialize_config_dir  # noqa: E402

import aent  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(
            config_name="aent_grpo_math", overrides=[f"trainer.default_local_dir={tmp_path}/ckpt", *overrides]
        )


class Batch:
    """What the V1 trainer hands to the worker group: a key/value batch reference with ``extra_info``."""

    def __init__(self):
        self.extra_info = {}
        self.keys = [f"k{i}" for i in range(4)]
        self.tags = [{} for _ in range(4)]
        self.partition_id = "train"


class StubActorWorkerGroup:
    """Answers ``update_actor`` as verl's workers do: per-mini-batch metric lists (here two mini-batches)."""

    def __init__(self, script):
        self.script = list(script)  # per update: (entropy sums, token counts) of its mini-batches
        self.update_batches, self.loss_fns, self.saved, self.loaded = [], [], [], []

    def set_loss_fn(self, loss_fn):
        self.loss_fns.append(loss_fn)

    def update_actor(self, batch):
        self.update_batches.append(dict(batch.extra_info))
        sums, tokens = self.script.pop(0)
        return {
            "metrics": {
                "mfu": [0.5] * len(sums),
                "actor/pg_loss": [0.1] * len(sums),
                "actor/aent_entropy_sum": list(sums),
                "actor/aent_num_tokens": list(tokens),
                "actor/aent_nonfinite_tokens": [0.0] * len(sums),
                "actor/aent_clamped_entropy": [s / t for s, t in zip(sums, tokens)],
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
    from aent.verl.trainer import AEntTrainer

    trainer = AEntTrainer(cfg)  # the real constructor: checks, controller, verl's own sync-trainer set-up
    trainer.actor_rollout_wg = StubActorWorkerGroup(script)
    trainer.train_dataloader = StubDataLoader()
    trainer.distillation_config = None
    trainer.global_steps = 1
    return trainer


@pytest.fixture
def one_update_per_step(monkeypatch):
    """Runs verl's real ``PPOTrainer.step`` with the rollout/reward/advantage stages reduced to the actor update."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    def step_once(self, metrics, timing_raw, sample_batch_size):
        return self._update_actor(Batch(), metrics)

    monkeypatch.setattr(PPOTrainer, "_step_once", step_once)
    monkeypatch.setattr(PPOTrainer, "prepare_step", lambda self: {})


def test_mode_is_registered_and_runs_as_sync(tmp_path):
    from verl.trainer.ppo.v1 import get_trainer_cls

    from aent.verl.trainer import AEntTrainer

    assert get_trainer_cls("aent") is AEntTrainer
    trainer = _trainer(_config(tmp_path), [])
    assert trainer.trainer_mode == "sync"  # verl's base class branches on "sync"


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
    assert loss_fn.clamp_p == 0.33 and loss_fn.chunk_size == 64
    assert loss_fn.actor_config.loss_agg_mode == "token-mean" and loss_fn.actor_config.entropy_coeff == 0
    assert trainer.checkpoint_manager.updated == [1]  # verl's sync on_init_end still runs


def test_step_flags_and_controller_update(tmp_path, one_update_per_step):
    # warmup 0 so the controller moves from step 1; entropies below the band make the coefficient rise
    script = [([10.0, 30.0], [100.0, 300.0]), ([5.0, 50.0], [200.0, 300.0]), ([90.0, 90.0], [300.0, 300.0])]
    trainer = _trainer(_config(tmp_path, "aent.warmup_steps=0"), script)
    reference = aent.AdaptiveCoefficient(0.002, 0.15, 0.24, 0.002, 6e-4, 9e-3, warmup_steps=0)
    for step, (sums, tokens) in enumerate(script, start=1):
        trainer.global_steps = step
        metrics = {}
        coef_sent = reference.value
        trainer.step(metrics, {})
        sent = trainer.actor_rollout_wg.update_batches[-1]
        assert sent["aent_coef"] == coef_sent
        assert sent["distillation_use_topk"] is True and sent["calculate_entropy"] is True
        assert sent["distillation_only"] is False
        assert sent["global_batch_size"] == 128 * 16  # verl's own values are still there
        measured = sum(sums) / sum(tokens)  # token-weighted over the mini-batches
        reference.update(measured, step)
        assert metrics["actor/aent_clamped_entropy"] == pytest.approx(measured, rel=1e-12)
        assert metrics["actor/aent_coef"] == coef_sent
        assert metrics["actor/aent_coef_next"] == pytest.approx(reference.value, rel=1e-12)
        assert trainer.coefficient.value == pytest.approx(reference.value, rel=1e-12)
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


def test_resume_with_another_kind_of_coefficient_is_refused(tmp_path):
    from aent.verl.checks import StartupError

    trainer = _trainer(_config(tmp_path), [])
    trainer._save_checkpoint()
    constant = _trainer(_config(tmp_path, "aent.lr=0"), [])
    with pytest.raises(StartupError, match="same kind of coefficient"):
        constant._load_checkpoint()


def test_resume_from_a_checkpoint_without_controller_state_warns(tmp_path, caplog):
    trainer = _trainer(_config(tmp_path), [])
    trainer._save_checkpoint()
    os.remove(tmp_path / "ckpt" / "global_step_1" / "aent_controller.json")
    resumed = _trainer(_config(tmp_path), [])
    with caplog.at_level("WARNING"):
        resumed._load_checkpoint()
    assert resumed.coefficient.value == 0.002
    assert "without aent_controller.json" in caplog.text
