"""Experiments built on the public API, run from the command line: ``aent toy-mdp`` (:mod:`aent.experiments.toy`,
the paper's Figure 1) and ``aent demo`` (:mod:`aent.experiments.demo`, GRPO + AEnt on a tiny model).

:mod:`aent.experiments.tiny_model` builds the small randomly initialised Qwen2 models and tokenizers that the demo,
the verl tests and the step benchmark use. Nothing here is imported by ``import aent``.
"""
