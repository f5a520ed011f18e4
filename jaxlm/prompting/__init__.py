"""jaxlm.prompting: getting more out of a trained model without changing it.

- ``lm``: :class:`PromptLM`, the model as strategies see it (generate, samples, score, embed).
- ``icl``: in-context learning: demonstration selection (random, k-NN by TF-IDF / BM25 /
  embeddings, MMR, one per k-means cluster, label-balanced), ordering (random, most similar
  last, Lu et al.'s GlobalE / LocalE) and the sensitivity report.
- ``cot``: zero-shot CoT (two stages), least-to-most, Auto-CoT, self-consistency.
- ``tools``: tool calls during decoding (calculator, retrieval, a registry by name), resumed
  from the KV cache; Toolformer-style calculator data.
- ``retrieval``: BM25 and TF-IDF indexes, retrieval augmentation over a local corpus.
- ``strategy``: :class:`PromptStrategy` (gin), and its evaluation on SeqIO tasks with the
  tasks' own metrics (the eval job's ``evaluate.prompting``).

No TensorFlow: seqio is imported only by ``strategy.evaluate_strategies``.
"""
from jaxlm.prompting.cot import (LeastToMost, SelfConsistency, ZeroShotCoT, auto_cot_demonstrations, least_to_most,
                                 majority_vote, self_consistency, zero_shot_cot)
from jaxlm.prompting.icl import ICLConfig, build_prompts, demonstrations, sensitivity
from jaxlm.prompting.lm import PromptLM
from jaxlm.prompting.retrieval import BM25Index, RetrievalAugmentation, TfidfIndex, similarities
from jaxlm.prompting.strategy import PromptStrategy, evaluate_strategies, predictions
from jaxlm.prompting.tools import (SearchTool, ToolSyntax, calculate, decode_with_tools, register_tool,
                                   with_calculator_calls)

__all__ = ["LeastToMost", "SelfConsistency", "ZeroShotCoT", "auto_cot_demonstrations", "least_to_most",
           "majority_vote", "self_consistency", "zero_shot_cot", "ICLConfig", "build_prompts", "demonstrations",
           "sensitivity", "PromptLM", "BM25Index", "RetrievalAugmentation", "TfidfIndex", "similarities",
           "PromptStrategy", "evaluate_strategies", "predictions", "SearchTool", "ToolSyntax", "calculate",
           "decode_with_tools", "register_tool", "with_calculator_calls"]
