"""Capacity evaluation: metrics, benchmark suites, sandboxed code execution, reports.

Import-light: nothing here imports TensorFlow or seqio at import time; the SeqIO
task registration in ``suites.register_suite_tasks`` imports seqio when called.

- ``metrics``: perplexity / bits-per-byte with rolling windows, BLEU, ROUGE, SQuAD
  EM/F1, multiple-choice acc / acc_norm, reasoning answer extraction, pass@k, ECE.
- ``robustness``: seeded typo / casing / whitespace perturbations, worst-case metric.
- ``code_exec``: sandboxed, parallel execution of generated programs.
- ``humaneval``: HumanEval pass@k (``python -m jaxlm.evaluation.humaneval``).
- ``suites``: local-file benchmark formats (MMLU, QA, GSM8K, HumanEval, LAMBADA).
- ``report``: a markdown report with plots for one run.
- JSONL files are read with ``jaxlm.jsonl.read_jsonl``; its ``FormatError`` names the
  file and line of bad input.
"""
