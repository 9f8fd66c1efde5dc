"""Every way to start verl 0.9.1 training either runs AEnt or stops at start-up, before Ray starts, with the key and
the fix; a config with an ``aent:`` block never trains without AEnt.

Each case runs an entry point's module as ``python -m <module> <arguments>`` does (``runpy`` with ``__main__``), in
one fresh subprocess where ``import verl`` loads the plugin through its entry point, exactly as a user's
run does. ``ray.init`` is replaced by a function that raises ``RayWouldStart``: a case that reaches it has passed every
check on the driver and would now start Ray (and so its workers); a refused case must stop before it. What each
entry point exercises on the way:

* ``verl.trainer.main_ppo.main``: Hydra composition of the recipe, ``auto_set_device``, verl's ``validate_config``
  (with the AEnt guard in front), then ``run_ppo`` (guarded as well) up to ``ray.init``;
* ``verl.experimental.one_step_off_policy.main_ppo.main``: its own config (``one_step_off_ppo_trainer``), its
  rollout settings, then ``run_ppo`` with its ``OneStepTaskRunner`` (it validates only inside that Ray actor);
* ``verl.experimental.fully_async_policy.fully_async_main.main``: its own config, ``migrate_legacy_reward_impl``,
  then ``run_ppo`` with its ``FullyAsyncTaskRunner``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aent_test_support.deps import require

require("verl", "verl")

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MAIN_PPO = "verl.trainer.main_ppo"
ONE_STEP_OFF = "verl.experimental.one_step_off_policy.main_ppo"
FULLY_ASYNC = "verl.experimental.fully_async_policy.fully_async_main"
RECIPE = [f"--config-path={CONFIG_DIR}", "--config-name=aent_grpo_math", "trainer.n_gpus_per_node=8"]
SEPARATE = [
    "actor_rollout_ref.rollout.nnodes=1",
    "actor_rollout_ref.rollout.n_gpus_per_node=8",
    "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
]

# (id, entry module, arguments, expected: "runs" (reaches ray.init) or the texts the refusal must contain)
CASES = [
    ("main_ppo:aent", MAIN_PPO, RECIPE, "runs"),
    ("main_ppo:aent_colocate_async", MAIN_PPO, RECIPE + ["trainer.v1.trainer_mode=aent_colocate_async"], "runs"),
    (
        "main_ppo:aent_separate_async",
        MAIN_PPO,
        RECIPE + ["trainer.v1.trainer_mode=aent_separate_async"] + SEPARATE,
        "runs",
    ),
    (
        "main_ppo:sync+aent_block",
        MAIN_PPO,
        RECIPE + ["trainer.v1.trainer_mode=sync"],
        ["trainer.v1.trainer_mode=sync", "set trainer.v1.trainer_mode=aent ", "remove the aent: block"],
    ),
    (
        "main_ppo:colocate_async+aent_block",
        MAIN_PPO,
        RECIPE + ["trainer.v1.trainer_mode=colocate_async"],
        ["trainer.v1.trainer_mode=colocate_async", "set trainer.v1.trainer_mode=aent_colocate_async"],
    ),
    (
        "main_ppo:separate_async+aent_block",
        MAIN_PPO,
        RECIPE + ["trainer.v1.trainer_mode=separate_async"] + SEPARATE,
        ["trainer.v1.trainer_mode=separate_async", "set trainer.v1.trainer_mode=aent_separate_async"],
    ),
    (
        "main_ppo:use_v1=false",
        MAIN_PPO,
        RECIPE + ["trainer.use_v1=false"],
        ["trainer.use_v1=false", "set trainer.use_v1=true"],
    ),
    ("main_ppo:plain_grpo", MAIN_PPO, [f"--config-path={CONFIG_DIR}", "--config-name=grpo_math"], "runs"),
    (
        "main_ppo:loss_mode=aent",
        MAIN_PPO,
        [
            f"--config-path={CONFIG_DIR}",
            "--config-name=grpo_math",
            "actor_rollout_ref.actor.policy_loss.loss_mode=aent",
        ],
        "runs",
    ),
    (
        "one_step_off:loss_mode=aent",
        ONE_STEP_OFF,
        ["actor_rollout_ref.actor.policy_loss.loss_mode=aent"],
        ["verl.experimental.one_step_off_policy.main_ppo", "does not run AEnt", "policy_loss.loss_mode=aent"],
    ),
    (
        "one_step_off:aent_block",
        ONE_STEP_OFF,
        ["+aent.clamp_p=0.3"],
        [
            "verl.experimental.one_step_off_policy.main_ppo",
            "does not run AEnt",
            "trainer.v1.trainer_mode=aent_colocate_async",
        ],
    ),
    (
        "one_step_off:aent_mode",
        ONE_STEP_OFF,
        ["trainer.v1.trainer_mode=aent"],
        ["verl.experimental.one_step_off_policy.main_ppo", "trainer.v1.trainer_mode=aent"],
    ),
    ("one_step_off:plain", ONE_STEP_OFF, [], "runs"),
    (
        "fully_async:aent_block",
        FULLY_ASYNC,
        ["+aent.clamp_p=0.3"],
        ["verl.experimental.fully_async_policy.fully_async_main", "does not run AEnt", "aent_separate_async"],
    ),
    (
        "fully_async:aent_mode",
        FULLY_ASYNC,
        ["trainer.v1.trainer_mode=aent_separate_async"],
        ["verl.experimental.fully_async_policy.fully_async_main", "trainer.v1.trainer_mode=aent_separate_async"],
    ),
]

DRIVER = r"""
import json, runpy, sys
import verl  # loads the aent plugin through the verl.plugins entry point, as in a user's run
import ray

class RayWouldStart(Exception):
    pass

def no_ray(*args, **kwargs):
    raise RayWouldStart("ray.init reached")

ray.init = no_ray
ray.is_initialized = lambda: False
results = {}
for case_id, module, argv in json.loads(sys.argv[1]):
    sys.argv = [module] + argv
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # what python -m <module> does
        results[case_id] = ["returned", ""]
    except RayWouldStart:
        results[case_id] = ["runs", ""]
    except BaseException as err:  # noqa: BLE001 - reported to the test
        results[case_id] = [type(err).__name__, str(err)]
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    import verl

    cwd = tmp_path_factory.mktemp("entry")  # Hydra may write its outputs/ folder here
    # the one-step-off config finds verl's configs at file://verl/trainer/config (relative to the working directory:
    # verl's docs run it from a verl checkout); a link to the installed package stands in for the checkout
    os.symlink(os.path.dirname(verl.__file__), cwd / "verl")
    env = dict(os.environ, HYDRA_FULL_ERROR="1", AENT_DATA_DIR=str(cwd))
    cases = json.dumps([[c[0], c[1], list(c[2])] for c in CASES])
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, cases], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("case_id,module,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_entry_point_runs_aent_or_stops_before_ray(outcomes, case_id, module, argv, expected):
    kind, message = outcomes[case_id]
    if expected == "runs":
        assert kind == "runs", f"{case_id} did not reach ray.init: {kind}: {message[:2000]}"
        return
    assert kind == "StartupError", f"{case_id} was not refused before Ray: {kind}: {message[:2000]}"
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
