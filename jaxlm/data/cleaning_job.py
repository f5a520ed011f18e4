"""The cleaning job: the stages of cleaning.py, dedup.py and pii.py run over a JSONL
corpus, with a report of what each removed.

    python -m jaxlm.data.cleaning_job --input in.jsonl --output out.jsonl [--report report.json]
        [--text_key text] [--stages language,quality,...] [--eval_sets evalA.jsonl,...]
        [--blocklist words.txt] [--near_dup_threshold 0.8] [--max_doc_chars 1000000]
        [--gin_file f.gin] [--gin_param 'NearDedup.threshold = 0.9']

Input is JSONL with a text field (default ``text``); other fields are kept. Lines that
are not valid UTF-8 or JSON, records without a string text field, empty documents and
documents over ``--max_doc_chars`` are counted (with a warning naming file and line)
and skipped. The report (JSON, also printed as a table) gives, per stage, documents and
tokens in, documents dropped, tokens removed, and the reasons/edits. Tokens are
whitespace-separated words.

Default stage order (cheap first, PII last so dedup sees the original text):
language, quality, repetition, keywords, repeated_sentences, exact_dedup, near_dedup,
decontamination (only with eval sets), perplexity, pii. The language, quality and
perplexity stages are made for prose; for a code corpus choose e.g.
``--stages exact_dedup,near_dedup,decontamination,pii``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence

import gin

from jaxlm.data import cleaning, dedup, pii, sources
from jaxlm.jsonl import FormatError, read_jsonl

STAGE_NAMES = ("language", "quality", "repetition", "keywords", "repeated_sentences", "exact_dedup",
               "near_dedup", "decontamination", "perplexity", "pii")


def count_tokens(text: str) -> int:
  return len(text.split())


@dataclasses.dataclass
class StageStats:
  name: str
  docs_in: int = 0
  docs_dropped: int = 0
  tokens_in: int = 0
  tokens_removed: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  edits: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def as_dict(self) -> Dict[str, Any]:
    return {"stage": self.name, "docs_in": self.docs_in, "docs_dropped": self.docs_dropped,
            "docs_out": self.docs_in - self.docs_dropped, "tokens_in": self.tokens_in,
            "tokens_removed": self.tokens_removed, "reasons": dict(self.reasons), "edits": dict(self.edits)}


class CleaningPipeline:
  """Runs :class:`cleaning.Stage` objects in order over documents, counting as it goes."""

  def __init__(self, stages: Sequence[cleaning.Stage]):
    self.stages = list(stages)
    self.input = StageStats("input")
    self.stats = [StageStats(s.name) for s in self.stages]
    self.docs_out = 0
    self.tokens_out = 0

  def clean_text(self, text: str) -> Optional[str]:
    """The cleaned text, or None if a stage dropped it. Updates the report."""
    for stage, stats in zip(self.stages, self.stats):
      tokens = count_tokens(text)
      stats.docs_in += 1
      stats.tokens_in += tokens
      result = stage.process(text)
      if result.text is None:
        stats.docs_dropped += 1
        stats.tokens_removed += tokens
        stats.reasons[result.reason or "dropped"] += 1
        return None
      stats.edits.update(result.edits)
      stats.tokens_removed += max(0, tokens - count_tokens(result.text))
      text = result.text
    self.docs_out += 1
    self.tokens_out += count_tokens(text)
    return text

  def run(self, records: Iterable[Dict[str, Any]], text_key: str = "text") -> Iterator[Dict[str, Any]]:
    """Cleaned copies of ``records`` (dicts with ``text_key``); dropped ones left out."""
    for record in records:
      text = self.clean_text(record[text_key])
      if text is not None:
        yield {**record, text_key: text}

  def report(self) -> Dict[str, Any]:
    return {"token_unit": "whitespace-separated words", "input": self.input.as_dict(),
            "stages": [s.as_dict() for s in self.stats], "docs_out": self.docs_out,
            "tokens_out": self.tokens_out}

  def format_report(self) -> str:
    rows = [("stage", "docs in", "dropped", "tokens in", "tokens removed", "reasons / edits")]
    for s in [self.input] + self.stats:
      detail = ", ".join(f"{k}={v}" for k, v in (s.reasons + s.edits).most_common(6))
      rows.append((s.name, str(s.docs_in), str(s.docs_dropped), str(s.tokens_in), str(s.tokens_removed), detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows)


@gin.configurable
def default_cleaning_pipeline(stages: Sequence[str] = STAGE_NAMES, languages: Sequence[str] = ("en",),
                              blocklist: Sequence[str] = (), blocklist_file: Optional[str] = None,
                              near_dup_threshold: float = 0.8, eval_texts: Sequence[str] = (),
                              eval_files: Sequence[str] = (), perplexity_scorer=None) -> CleaningPipeline:
  """The stages named in ``stages`` with their (gin-configurable) defaults, in order."""
  unknown = set(stages) - set(STAGE_NAMES)
  if unknown:
    raise ValueError(f"unknown cleaning stages {sorted(unknown)}; known: {', '.join(STAGE_NAMES)}")
  factories = {
      "language": lambda: cleaning.LanguageFilter(languages),
      "quality": cleaning.GopherQualityFilter,
      "repetition": cleaning.RepetitionFilter,
      "keywords": lambda: cleaning.KeywordFilter(blocklist, blocklist_file),
      "repeated_sentences": dedup.RepeatedSentenceRemover,
      "exact_dedup": dedup.ExactDedup,
      "near_dedup": lambda: dedup.NearDedup(near_dup_threshold),
      "decontamination": lambda: dedup.Decontaminator(eval_texts, eval_files=eval_files),
      "perplexity": lambda: cleaning.PerplexityFilter(perplexity_scorer),
      "pii": pii.PIIRedactor,
  }
  chosen = [name for name in STAGE_NAMES if name in stages]
  if not (eval_texts or eval_files) and "decontamination" in chosen:
    chosen.remove("decontamination")
  return CleaningPipeline([factories[name]() for name in chosen])


def read_records(paths: Sequence[str], pipeline: CleaningPipeline, text_key: str = "text",
                 max_doc_chars: int = 1_000_000) -> Iterator[Dict[str, Any]]:
  """Valid records of JSONL files; problems are counted in ``pipeline.input`` and skipped."""
  stats = pipeline.input
  for path in paths:
    for lineno, record in read_jsonl(path, errors="yield"):
      stats.docs_in += 1
      if isinstance(record, FormatError):
        reason = "invalid_utf8" if "UTF-8" in record.reason else "invalid_json"
      elif not isinstance(record.get(text_key), str):
        reason, record = "no_text_field", FormatError(path, lineno, f"no string field {text_key!r}")
      elif not record[text_key].strip():
        reason, record = "empty", FormatError(path, lineno, "empty document")
      elif len(record[text_key]) > max_doc_chars:
        reason = "oversized"
        record = FormatError(path, lineno, f"document of {len(record[text_key])} characters "
                                           f"> max_doc_chars={max_doc_chars}")
      else:
        stats.tokens_in += count_tokens(record[text_key])
        yield record
        continue
      stats.docs_dropped += 1
      stats.reasons[reason] += 1
      logging.warning("skipped %s", record)


def clean_jsonl(inputs: Sequence[str], output: str, pipeline: Optional[CleaningPipeline] = None,
                text_key: str = "text", max_doc_chars: int = 1_000_000, report_path: Optional[str] = None) -> Dict[str, Any]:
  """Clean JSONL ``inputs`` into ``output``; write and return the report."""
  pipeline = pipeline or default_cleaning_pipeline()
  paths = [p for pattern in inputs for p in sources._expand(pattern)]  # pylint: disable=protected-access
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as handle:
    for record in pipeline.run(read_records(paths, pipeline, text_key, max_doc_chars), text_key):
      handle.write(json.dumps(record, ensure_ascii=False) + "\n")
  report = pipeline.report()
  report.update(inputs=paths, output=output)
  report_path = report_path or output + ".report.json"
  with open(report_path, "w", encoding="utf-8") as handle:
    json.dump(report, handle, indent=1)
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxlm.data.cleaning_job", description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="JSONL file(s) or glob(s), comma-separated")
  parser.add_argument("--output", required=True)
  parser.add_argument("--report", default=None, help="report JSON (default OUTPUT.report.json)")
  parser.add_argument("--text_key", default="text")
  parser.add_argument("--stages", default=",".join(STAGE_NAMES))
  parser.add_argument("--languages", default="en")
  parser.add_argument("--blocklist", default=None, help="file with one blocked word/phrase per line")
  parser.add_argument("--eval_sets", default="", help="JSONL/text files of evaluation data (decontamination)")
  parser.add_argument("--near_dup_threshold", type=float, default=0.8)
  parser.add_argument("--max_doc_chars", type=int, default=1_000_000)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--gin_param", action="append", default=[])
  args = parser.parse_args(argv)
  gin.parse_config_files_and_bindings(args.gin_file, args.gin_param)
  pipeline = default_cleaning_pipeline(
      stages=[s.strip() for s in args.stages.split(",") if s.strip()],
      languages=[l.strip() for l in args.languages.split(",") if l.strip()],
      blocklist_file=args.blocklist, near_dup_threshold=args.near_dup_threshold,
      eval_files=[p for p in args.eval_sets.split(",") if p])
  report = clean_jsonl([p for p in args.input.split(",") if p], args.output, pipeline, args.text_key,
                       args.max_doc_chars, args.report)
  print(pipeline.format_report())
  print(f"kept {report['docs_out']} documents, {report['tokens_out']} tokens -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
