"""Test-only support for ``aent`` (not part of the library): verl's trainer on a CPU, and a test reward.

* :mod:`aent_test_support.cpu_platform`: a CPU platform in verl's platform registry, for verl's FSDP2 engine in one
  CPU process (the regular suite) and for the whole ``main_ppo`` (the end-to-end run);
* :mod:`aent_test_support.verl_cpu`: the ``verl.plugins`` entry point that installs the CPU bridges in every process
  of an end-to-end run (only when ``VERL_PLATFORM=cpu``);
* :mod:`aent_test_support.reward`: a test reward with spread on a random model;
* :mod:`aent_test_support.flash_like_ce`: flash-attn's in-place cross-entropy backward, emulated on a CPU, for the
  engine test and ``scripts/bench_verl_update.py``.
"""
