"""The evaluation stage: lm-eval in-process on the trained model, offline task suites, tables and figures.

Modules (import them as ``from eval import stage``; the bare name ``eval`` is Python's builtin):

* :mod:`eval.stage`: ``evaluate(eval_cfg, model, tokenizer, run_dir, ...)``, the end-of-run (and
  stage-boundary) evaluation that fills ``results.json["eval"]`` and logs W&B tables.
* :mod:`eval.tasks`: which lm-eval tasks a config names, their TaskManager, clear errors for unknown
  names and unreachable datasets.
* :mod:`eval.synthetic_tasks`: the synthetic source's nine tasks as a generated lm-eval task folder.
* :mod:`eval.targets`: ``benchmark_targets(...)``, benchmark dev/train splits as answer-only-loss targets.
* :mod:`eval.tables` (``python -m eval.tables <dirs>``): TiKMiX Table 1, Aioli Table 2, figures.
* ``python -m eval <run_dir> [overrides]``: re-evaluate a finished run.

Presets (``conf/eval/``): ``synthetic9`` (default, offline), ``paper9`` (the paper's nine benchmarks,
needs the hub or cached datasets), ``custom`` (your own task folder), ``none``.
"""
