"""Recipes compose with Hydra from the checkout, convert to verl's config dataclasses, take user overrides; every
start-up refusal of the ``aent`` trainer mode names the key and the fix."""

from __future__ import annotations

import os

import pytest
from aent_test_support.deps import require

require("verl", "verl")
hydra = require("hydra", "verl")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPES = ("grpo_math", "aent_grpo_math", "entreg_math", "aent_grpo_openr1", "tre_topk_math", "skywork_math")
EVAL_SETS = ("math_hard", "math500", "aime24", "amc23", "minerva", "olympiadbench")


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name=name, overrides=list(overrides))
    return cfg


@pytest.fixture(scope="module")
def recipes():
    return {name: _compose(name, ["trainer.n_gpus_per_node=8"]) for name in RECIPES}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_converts_to_verl_dataclasses(recipes, name, monkeypatch):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import FSDPActorConfig, RolloutConfig

    monkeypatch.setenv("AENT_DATA_DIR", "/data/aent")
    cfg = recipes[name].copy()
    OmegaConf.resolve(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert isinstance(actor, FSDPActorConfig) and isinstance(rollout, RolloutConfig)
    assert actor.entropy_coeff == 0 and not actor.use_kl_loss and actor.ppo_epochs == 1
    assert cfg.algorithm.adv_estimator == "grpo" and not cfg.algorithm.use_kl_in_reward
    assert rollout.name == "vllm" and rollout.temperature == 1.0
    # evaluation as in the paper: six sets, 4 samples at temperature 0.6, top-p 0.95, periodic tests
    assert [os.path.basename(p) for p in cfg.data.val_files] == [f"{s}.parquet" for s in EVAL_SETS]
    assert all(p.startswith("/data/aent/") for p in cfg.data.val_files)
    assert (rollout.val_kwargs.n, rollout.val_kwargs.temperature, rollout.val_kwargs.top_p) == (4, 0.6, 0.95)
    assert rollout.val_kwargs.do_sample and cfg.trainer.test_freq > 0
    assert cfg.reward.custom_reward_function.path == "pkg://aent.reward"
    assert cfg.reward.custom_reward_function.name == "compute_score"


def test_setting_a_recipes_share_data_and_hyperparameters(recipes):
    def shared(cfg):
        c = OmegaConf.to_container(cfg, resolve=False)
        c.pop("aent", None)
        c["trainer"].pop("experiment_name")
        c["trainer"]["v1"].pop("trainer_mode")
        return c

    base = shared(recipes["grpo_math"])
    assert shared(recipes["aent_grpo_math"]) == base
    assert shared(recipes["entreg_math"]) == base
    assert shared(recipes["tre_topk_math"]) == base
    assert shared(recipes["skywork_math"]) == base
    assert recipes["grpo_math"].data.train_batch_size == 512 and recipes["grpo_math"].actor_rollout_ref.rollout.n == 16
    assert recipes["grpo_math"].data.max_response_length == 3072
    assert recipes["grpo_math"].actor_rollout_ref.actor.ppo_mini_batch_size == 128


def test_aent_recipes_carry_the_paper_settings(recipes):
    from aent.settings import OPTION_NAMES, SETTING_A, SETTING_B
    from aent.verl.checks import check_config

    a = check_config(recipes["aent_grpo_math"])
    assert {name: getattr(a, name) for name in OPTION_NAMES} == dict(SETTING_A)
    assert a.adaptive
    b = check_config(recipes["aent_grpo_openr1"])
    assert {name: getattr(b, name) for name in OPTION_NAMES} == dict(SETTING_B)
    cfg_b = recipes["aent_grpo_openr1"]
    assert (cfg_b.data.train_batch_size, cfg_b.actor_rollout_ref.rollout.n, cfg_b.data.max_response_length) == (
        256,
        8,
        7168,
    )
    assert cfg_b.actor_rollout_ref.actor.optim.lr == 1e-6 and cfg_b.actor_rollout_ref.actor.ppo_mini_batch_size == 64
    e = check_config(recipes["entreg_math"])
    assert e.clamp_p == 0.0 and not e.adaptive
    assert type(e.build_coefficient()).__name__ == "ConstantCoefficient"


def test_the_relatives_recipes_carry_their_authors_settings(recipes):
    import aent
    from aent.verl.checks import check_config

    t = check_config(recipes["tre_topk_math"])
    assert t.kept_set == aent.KeptSet.top_k(2) and t.controller == "constant" and not t.adaptive
    coef = t.build_coefficient()
    assert type(coef) is aent.ConstantCoefficient and coef.value == 0.001
    s = check_config(recipes["skywork_math"])
    assert s.kept_set == aent.KeptSet.bottom_p(0.0) and s.kept_set.is_full(151_936) and s.adaptive
    coef = s.build_coefficient()
    assert type(coef) is aent.TargetCoefficient
    assert coef.config() == {
        "init": 0.0,
        "target": 0.2,
        "delta": 1e-4,
        "coef_min": 0.0,
        "coef_max": 0.005,
        "warmup_steps": 0,
    }


def test_rule_and_controller_overrides_on_verls_own_config():
    import aent
    from aent.verl.checks import check_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            config_name="grpo_math",
            overrides=[
                "trainer.v1.trainer_mode=aent",
                "+aent.kept=top_p",
                "+aent.top_p=0.99",
                "+aent.controller=target",
                "+aent.target_entropy=0.3",
                "+aent.delta=2e-4",
                "+aent.coef_init=0.001",
            ],
        )
    opts = check_config(cfg)
    assert opts.kept_set == aent.KeptSet.top_p(0.99)
    coef = opts.build_coefficient()
    assert type(coef) is aent.TargetCoefficient and (coef.target, coef.delta, coef.value) == (0.3, 2e-4, 0.001)


def test_user_overrides_apply():
    cfg = _compose(
        "aent_grpo_math",
        ["aent.clamp_p=0.2", "aent.lr=0", "actor_rollout_ref.actor.optim.lr=1e-6", "data.train_files=/x/train.parquet"],
    )
    from aent.verl.checks import check_config

    opts = check_config(cfg)
    assert opts.clamp_p == 0.2 and not opts.adaptive
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and cfg.data.train_files == "/x/train.parquet"


def test_one_flag_on_verls_own_config():
    """The plain ppo_trainer config plus trainer.v1.trainer_mode=aent and +aent.<option> overrides."""
    from aent.verl.checks import check_config, selects_aent

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            config_name="grpo_math",
            overrides=["trainer.v1.trainer_mode=aent", "+aent.clamp_p=0.25", "+aent.warmup_steps=5"],
        )
    assert selects_aent(cfg)
    opts = check_config(cfg)
    assert opts.clamp_p == 0.25 and opts.warmup_steps == 5 and opts.coef_init == 0.002  # the rest: defaults


REFUSALS = [
    (
        ["actor_rollout_ref.model.use_fused_kernels=true", "actor_rollout_ref.model.use_remove_padding=false"],
        "actor_rollout_ref.model.use_remove_padding=true",
    ),
    (
        [
            "actor_rollout_ref.model.use_fused_kernels=true",
            "actor_rollout_ref.model.fused_kernel_options.impl_backend=x",
        ],
        "fused_kernel_options.impl_backend",
    ),
    (["actor_rollout_ref.actor.strategy=megatron"], "actor_rollout_ref.actor.strategy"),
    (["distillation.enabled=true"], "distillation.enabled"),
    (["actor_rollout_ref.actor.pad_to_length=true"], "pad_to_length"),
    (["trainer.use_v1=false"], "trainer.use_v1"),
    (["actor_rollout_ref.actor.entropy_coeff=0.001"], "actor_rollout_ref.actor.entropy_coeff"),
    (["aent.clamp_p=1.5"], "aent.clamp_p"),
    (["aent.coef_init=0.5"], "coef_init"),
    (["aent.entropy_low=0.5", "aent.entropy_high=0.1"], "entropy_low"),
    (["+aent.bogus=1"], "bogus"),
    (["aent.warmup_steps=-1"], "aent.warmup_steps"),
    (["aent.lr=-0.1"], "aent.lr"),
    (["aent.chunk_size=0"], "aent.chunk_size"),
    (["aent.coef_min=0.01", "aent.coef_max=0.001"], "aent.coef_min"),
    (["trainer.v1.trainer_mode=colocate_async"], "trainer.v1.trainer_mode=aent_colocate_async"),
    (["+aent.kept=top_k"], "aent.kept=top_k needs aent.top_k"),
    (["+aent.kept=top_p"], "aent.kept=top_p needs aent.top_p"),
    (["+aent.kept=top_k", "+aent.top_k=0"], "aent.top_k must be an integer >= 1"),
    (["+aent.kept=top_k", "+aent.top_k=1.5"], "aent.top_k must be an integer >= 1"),
    (["+aent.kept=top_p", "+aent.top_p=1.5"], "aent.top_p must be a number in (0, 1]"),
    (["+aent.kept=top_k", "+aent.top_k=2", "aent.clamp_p=0.2"], "aent.clamp_p=0.2 is an option of aent.kept=bottom_p"),
    (["+aent.top_k=2"], "aent.top_k=2 is an option of aent.kept=top_k, but this run has aent.kept=bottom_p"),
    (["+aent.kept=top_k", "+aent.top_k=2", "+aent.top_p=0.9"], "aent.top_p=0.9 is an option of aent.kept=top_p"),
    (["+aent.kept=nucleus"], "aent.kept must be one of"),
    (["+aent.controller=pid"], "aent.controller must be one of"),
    (["+aent.controller=target"], "aent.controller=target needs aent.target_entropy"),
    (["+aent.controller=target", "+aent.target_entropy=0.2"], "aent.controller=target needs aent.delta"),
    (["+aent.target_entropy=0.2"], "aent.target_entropy=0.2 is an option of aent.controller=target"),
    (
        ["+aent.controller=target", "+aent.target_entropy=0.2", "+aent.delta=1e-4", "aent.entropy_low=0.1"],
        "aent.entropy_low=0.1 is an option of aent.controller=band",
    ),
    (["+aent.controller=constant", "aent.lr=0.01"], "aent.lr=0.01 is an option of aent.controller=band"),
    (
        ["+aent.controller=constant", "aent.coef_max=0.01"],
        "aent.coef_max=0.01 is an option of aent.controller=band|target",
    ),
    (["+aent.base_loss_mode=gspo"], "aent.base_loss_mode"),  # applies only with policy_loss.loss_mode=aent
]


@pytest.mark.parametrize("overrides,key", REFUSALS, ids=[r[1] + ":" + r[0][0] for r in REFUSALS])
def test_startup_refusals_name_the_key_and_the_fix(overrides, key):
    from aent.verl.checks import StartupError, check_config

    cfg = _compose("aent_grpo_math", overrides)
    with pytest.raises(StartupError) as info:
        check_config(cfg)
    msg = str(info.value)
    assert key in msg
    assert "set " in msg or "must" in msg or "valid options" in msg


def test_refusal_happens_in_verls_validate_config_before_ray():
    """The plugin's check runs inside verl.utils.config.validate_config, which main_ppo calls before ray.init."""
    import verl  # noqa: F401  (loads the plugin through the entry point)
    from verl.trainer import main_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    from aent.verl.checks import StartupError

    cfg = _compose("aent_grpo_math", ["trainer.use_v1=false"])
    with pytest.raises(StartupError, match="trainer.use_v1=true"):
        main_ppo.validate_config(
            config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
        )
    # a run without the aent mode is left to verl
    main_ppo.validate_config(config=_compose("grpo_math"), use_reference_policy=False, use_critic=False)


LOSS_MODE_CASES = [
    ([], "aent", "vanilla"),
    (["+aent.base_loss_mode=gspo"], "aent", "gspo"),
    (["trainer.v1.trainer_mode=colocate_async"], "aent_colocate_async", "vanilla"),
    (["trainer.v1.trainer_mode=separate_async"], "aent_separate_async", "vanilla"),
]


@pytest.mark.parametrize("overrides,mode,base", LOSS_MODE_CASES, ids=[c[1] + "-" + c[2] for c in LOSS_MODE_CASES])
def test_loss_mode_aent_switches_aent_on_like_the_trainer_mode(overrides, mode, base):
    """verl's own flag for a custom loss, on verl's own config: policy_loss.loss_mode=aent becomes the AEnt trainer
    mode (one code path) in verl's validate_config on the driver, with the base loss from aent.base_loss_mode."""
    import verl  # noqa: F401  (loads the plugin through the entry point)
    from verl.trainer import main_ppo

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            config_name="grpo_math",
            overrides=["actor_rollout_ref.actor.policy_loss.loss_mode=aent", "+aent.clamp_p=0.25", *overrides],
        )
    main_ppo.validate_config(config=cfg, use_reference_policy=False, use_critic=False)
    assert cfg.trainer.v1.trainer_mode == mode
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == base
    assert cfg.aent_run["actor_rollout_ref.actor.policy_loss.loss_mode"] == "aent"  # what the user ran
    from aent.verl.checks import check_config

    assert check_config(cfg).clamp_p == 0.25
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    get_policy_loss_fn(cfg.actor_rollout_ref.actor.policy_loss.loss_mode)  # what the workers will look up


def test_loss_mode_aent_with_a_mode_aent_does_not_extend_is_refused():
    from aent.verl.checks import StartupError, apply_loss_mode

    cfg = _compose("grpo_math", ["actor_rollout_ref.actor.policy_loss.loss_mode=aent", "trainer.v1.trainer_mode=x"])
    with pytest.raises(StartupError, match="trainer.v1.trainer_mode=x"):
        apply_loss_mode(cfg)
    cfg = _compose("grpo_math", ["actor_rollout_ref.actor.policy_loss.loss_mode=aent", "+aent.base_loss_mode=aent"])
    with pytest.raises(StartupError, match="aent.base_loss_mode"):
        apply_loss_mode(cfg)


def test_the_trainer_refuses_before_building_anything():
    from aent.verl.checks import StartupError
    from aent.verl.trainer import AEntTrainer

    cfg = _compose("aent_grpo_math", ["actor_rollout_ref.actor.entropy_coeff=0.01"])
    with pytest.raises(StartupError, match="entropy_coeff=0"):
        AEntTrainer(cfg)
    assert cfg.trainer.v1.trainer_mode == "aent"  # untouched: nothing ran past the checks


def test_the_ppo_recipe_has_a_critic_and_the_aent_settings(monkeypatch, tmp_path):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import FSDPActorConfig

    from aent.experiments.tiny_model import write_tiny_qwen2
    from aent.verl.checks import check_config

    monkeypatch.setenv("AENT_DATA_DIR", "/data/aent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # verl's validate_config builds the critic's dataclass, which reads the model's config: a tiny local model
    model = write_tiny_qwen2(str(tmp_path / "model"))
    cfg = _compose("aent_ppo_math", ["trainer.n_gpus_per_node=8", f"actor_rollout_ref.model.path={model}"])
    OmegaConf.resolve(cfg)
    assert cfg.algorithm.adv_estimator == "gae" and need_critic(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=True)
    assert isinstance(omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), FSDPActorConfig)
    assert cfg.critic.enable and cfg.critic.strategy == "fsdp2" and cfg.critic.optim.lr == 1e-5
    assert cfg.critic.model.path == cfg.actor_rollout_ref.model.path and cfg.trainer.critic_warmup == 5
    assert check_config(cfg) == check_config(_compose("aent_grpo_math"))  # the same AEnt options as setting (a)


def test_unknown_option_lists_every_option_with_its_help():
    from aent.verl.checks import StartupError, check_config
    from aent.verl.options import options_help

    with pytest.raises(StartupError) as info:
        check_config(_compose("aent_grpo_math", ["+aent.clamp=0.3"]))
    assert "['clamp']" in str(info.value) and options_help() in str(info.value)
    assert "aent.resume_without_controller (default False)" in options_help()


@pytest.mark.parametrize("recipe", RECIPES + ("aent_ppo_math",))
def test_launch_scripts_build_a_command_that_composes(recipe, tmp_path):
    import shlex
    import subprocess

    root = os.path.dirname(CONFIG_DIR)
    env = dict(os.environ, DRY_RUN="1", NNODES="2")
    proc = subprocess.run(
        [
            os.path.join(root, "scripts", f"run_{recipe}.sh"),
            "/models/m",
            str(tmp_path),
            "4",
            "run1",
            "--",
            "trainer.total_epochs=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"] and f"--config-name={recipe}" in argv
    overrides = [a for a in argv[3:] if not a.startswith("--config")]
    cfg = _compose(recipe, overrides)
    assert cfg.actor_rollout_ref.model.path == "/models/m"
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes, cfg.trainer.total_epochs) == (4, 2, 1)
    assert cfg.trainer.experiment_name == "run1" and cfg.trainer.default_local_dir == "checkpoints/run1"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.AENT_DATA_DIR == str(tmp_path)
    missing = subprocess.run(
        [os.path.join(root, "scripts", f"run_{recipe}.sh")],
        capture_output=True,
        text=True,
        env=dict(os.environ, DRY_RUN="1", MODEL_PATH="", DATA_DIR=""),
        timeout=60,
    )
    assert missing.returncode == 2 and "MODEL_PATH is required" in missing.stderr


def test_fused_kernels_are_served_for_dense_models_and_refused_by_name_for_the_rest(tmp_path):
    import json

    from aent.verl.checks import StartupError, check_config

    def model_dir(name, **fields):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(fields))
        return str(folder)

    dense = model_dir("dense", model_type="qwen2", tie_word_embeddings=True)
    for backend in ("torch", "triton"):
        opts = check_config(
            _compose(
                "aent_grpo_math",
                [
                    "actor_rollout_ref.model.use_fused_kernels=true",
                    f"actor_rollout_ref.model.fused_kernel_options.impl_backend={backend}",
                    f"actor_rollout_ref.model.path={dense}",
                ],
            )
        )
        assert opts is not None
    vl = model_dir("vl", model_type="qwen2_5_vl", tie_word_embeddings=True)
    with pytest.raises(StartupError, match="model type 'qwen2_5_vl' has its own fused forward") as info:
        check_config(
            _compose(
                "aent_grpo_math",
                ["actor_rollout_ref.model.use_fused_kernels=true", f"actor_rollout_ref.model.path={vl}"],
            )
        )
    assert "use_fused_kernels=false" in str(info.value)
    untied = model_dir("untied", model_type="qwen2", tie_word_embeddings=False)
    with pytest.raises(StartupError, match="untied output layer"):
        check_config(
            _compose(
                "aent_grpo_math",
                [
                    "actor_rollout_ref.model.use_fused_kernels=true",
                    "actor_rollout_ref.actor.strategy=fsdp2",
                    f"actor_rollout_ref.model.path={untied}",
                ],
            )
        )


def test_a_changed_verl_layout_stops_the_fused_seam_at_start_up(monkeypatch):
    from verl.models.transformers import dense_common

    from aent.verl.fused import check_verl_layout

    check_verl_layout()  # the installed verl is the one targeted
    monkeypatch.delattr(dense_common, "forward_with_triton_backend")
    with pytest.raises(RuntimeError, match="targets verl 0.9.1.*forward_with_triton_backend is missing"):
        check_verl_layout()
