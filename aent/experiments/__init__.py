"""Experiments built on the public API, run from the command line: ``aent toy-mdp`` (:mod:`aent.experiments.toy`,
the paper's Figure 1), ``aent demo`` (:mod:`aent.experiments.demo`, GRPO + AEnt on a tiny model) and
``aent vocab-sweep`` (:mod:`aent.experiments.vocab`, that trainer as the output layer grows to 151,936 logits).

:mod:`aent.experiments.tiny_model` builds the small randomly initialised Qwen2 models and tokenizers that the demo,
the verl tests and the step benchmark use. Nothing here is imported by ``import aent``.
"""
