"""The ``verl.plugins`` entry point: ``import verl`` alone makes the AEnt trainer modes available, in a fresh process
and in a Ray worker; a plugin that cannot load says so with a warning. (The start-up guard it installs is tested per
entry point in test_verl_entry_points.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aent_test_support.deps import require

require("verl", "verl")

CHECK = (
    "import sys, verl\n"
    "assert sys.modules.get('aent.verl.trainer') is None, 'the plugin must not import the V1 trainer eagerly'\n"
    "from verl.trainer.ppo.v1 import get_trainer_cls\n"
    "for mode in ('aent', 'aent_colocate_async', 'aent_separate_async'):\n"
    "    print('MODE', mode, get_trainer_cls(mode).__module__, get_trainer_cls(mode).__name__)\n"
)


def _run(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300, env=full_env
    )


def test_entry_point_is_in_the_package_metadata():
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="verl.plugins") if ep.name == "aent"]
    assert ep.value == "aent.verl.plugin"


def test_import_verl_in_a_fresh_process_registers_the_mode():
    proc = _run(CHECK)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MODE aent aent.verl.trainer AEntTrainer" in proc.stdout
    assert "MODE aent_colocate_async aent.verl.trainer AEntTrainerColocateAsync" in proc.stdout
    assert "MODE aent_separate_async aent.verl.trainer AEntTrainerSeparateAsync" in proc.stdout
    assert "could not register" not in proc.stderr


def test_a_plugin_that_cannot_load_warns():
    code = "import sys\nsys.modules['aent.verl.trainer'] = None  # a broken install\n" + CHECK
    proc = _run(code)
    assert proc.returncode != 0  # verl then reports the unknown trainer mode itself
    assert "could not register verl trainer mode 'aent'" in proc.stderr
    assert "Unknown trainer 'aent'" in proc.stderr


def test_plugins_disabled_leaves_verl_alone():
    proc = _run(
        "import verl\nfrom verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY\nprint('HAS', 'aent' in TRAINER_REGISTRY)",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HAS False" in proc.stdout


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("recipe", ["aent_grpo_math", "entreg_math"])
def test_plugins_disabled_and_an_aent_block_under_sync_stop_the_run(recipe):
    """With verl's plugins off nothing of the plugin runs; the recipe's own Hydra callback (aent.verl.guard) stops
    a run that asks for AEnt before verl's main starts (no Ray), instead of training without AEnt."""
    argv = [f"--config-path={CONFIGS}", f"--config-name={recipe}", "trainer.v1.trainer_mode=sync"]
    code = "import sys, runpy\nsys.argv = ['main_ppo', *sys.argv[1:]]\nrunpy.run_module('verl.trainer.main_ppo', run_name='__main__')"
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="none", PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "AEnt's verl plugin is not loaded (VERL_USE_EXTERNAL_PLUGINS=none)" in out, out[-3000:]
    assert "VERL_USE_EXTERNAL_MODULES=aent.verl.plugin" in out
    assert "Started a local Ray instance" not in out  # stopped before verl's main reached ray.init


def test_mode_is_available_in_a_ray_worker():
    ray = require("ray", "verl")
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray cannot start here: {err}")
    try:

        @ray.remote(num_cpus=1)
        def trainer_mode_in_worker():
            import verl  # noqa: F401  (the worker process loads plugins by itself)
            from verl.trainer.ppo.v1 import get_trainer_cls

            return get_trainer_cls("aent").__name__

        assert ray.get(trainer_mode_in_worker.remote(), timeout=240) == "AEntTrainer"
    finally:
        ray.shutdown()
