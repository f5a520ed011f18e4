"""jaxlm.data: corpora, cleaning, tokenizers, pretraining objectives, SeqIO tasks, batches.

Importing this package is cheap: every name below is loaded on first use, and only
``objectives``, ``tasks`` and ``pipeline`` (and the SeqIO source helpers) import
TensorFlow/SeqIO.

    from jaxlm.data import DataPipeline
    pipe = DataPipeline("embedded_mix", {"targets": 512}, batch_size=8)
    batch = next(iter(pipe))          # dict of numpy arrays, per host
    pipe.state(); pipe.restore(state)  # resume on exactly the same batches

Modules: sources (embedded corpus, JSONL/text/TFDS readers), cleaning (the stages:
quality and language filters, perplexity filter), dedup (exact, MinHash-LSH, repeated
sentences, decontamination), pii (redaction), cleaning_job (the stages run over a corpus,
and its CLI), word_problems (generated arithmetic word problems), instructions (instruction
instances, templates, chat turns, Alpaca/chat readers), generated_tasks (generated
instruction families with checkable answers), vocab (SentencePiece training, SeqIO
vocabularies), objectives (causal LM, prefix LM, span corruption, UL2), tasks (the SeqIO
registry: corpora, instruction tasks and mixtures) and pipeline (SeqIO -> per-host numpy
batches).
"""
import importlib

_EXPORTS = {
    # sources
    "embedded_documents": "sources", "iter_documents": "sources", "read_jsonl_documents": "sources",
    "read_text_files": "sources", "read_tfds_directory": "sources", "cache_dir": "sources",
    # vocab
    "train_sentencepiece": "vocab", "load_vocabulary": "vocab", "seqio_vocabulary": "vocab",
    # cleaning
    "CleaningPipeline": "cleaning_job", "default_cleaning_pipeline": "cleaning_job",
    "clean_jsonl": "cleaning_job",
    # instructions
    "Instance": "instructions", "Template": "instructions", "ChatTemplate": "instructions",
    "read_alpaca": "instructions", "read_chat": "instructions",
    # objectives
    "causal_lm": "objectives", "prefix_lm": "objectives", "span_corruption": "objectives",
    "ul2_objective": "objectives", "random_spans_helper": "objectives",
    # tasks
    "get_task_or_mixture": "tasks", "list_tasks_and_mixtures": "tasks", "register_task": "tasks",
    "register_mixture": "tasks", "register_embedded_tasks": "tasks",
    "register_instruction_task": "tasks", "register_instruction_file_task": "tasks",
    "register_instruction_mixture": "tasks", "register_generated_instruction_tasks": "tasks",
    # pipeline
    "DataPipeline": "pipeline", "FEATURE_CONVERTERS": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
