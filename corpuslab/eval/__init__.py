"""Evaluation: held-out bits per byte, ICL tasks, suites, statistics and decisions.

``bpb`` (held-out bits per byte), ``tasks`` (llm-foundry task files and declarations),
``fewshot`` (seeded demonstrations), ``scoring`` (batched continuation log-likelihoods),
``metrics`` (accuracy, centered accuracy, CORE, gold bpb), ``suite`` (the built-in suite),
``evalset`` (a suite's fixed set on disk, and scoring a model on it), ``decontam`` (n-gram
overlap), ``stats`` (bootstrap intervals, paired differences, flip probabilities), ``study``
(a comparison's decision and report) and ``lm_eval_adapter`` (a run as an lm-eval model).
"""
