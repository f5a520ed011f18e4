"""Held-out perplexity and stored weight bytes of a trained jaxlm checkpoint, float vs
weight-only int8 / int4 / NF4 (jaxlm.adaptation.quantization), on JSONL validation text.

  python -m benchmarks.quantization_quality --gin_file=gin_configs/models/quickstart_decoder.gin \\
      --gin.TransformerConfig.vocab_size=2048 --checkpoint runs/quickstart \\
      --vocabulary runs/quickstart/vocabulary.model \\
      --texts "runs/quickstart/data/*/validation.jsonl" [--documents 32 --length 256]
"""
from __future__ import annotations

import glob
import sys
from typing import Sequence

from benchmarks import common


def main(argv: Sequence[str] = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = common.make_parser("python -m benchmarks.quantization_quality", __doc__)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--vocabulary", required=True, help="SentencePiece model")
  parser.add_argument("--texts", required=True, help="JSONL glob with a 'text' field")
  parser.add_argument("--documents", type=int, default=32)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--block", type=int, default=64)
  args, config, gin_files, bindings = common.parse(parser, argv)

  from jaxlm.adaptation import quantization
  from jaxlm.data import sources, vocab
  from jaxlm.models import build_model
  from jaxlm.quickstart import held_out_perplexity
  from jaxlm.training import restore_params

  model = build_model(config)
  params = restore_params(args.checkpoint, model.param_shapes())
  vocabulary = vocab.load_vocabulary(args.vocabulary)
  paths = sorted(glob.glob(args.texts))
  texts = [d["text"] for d in sources.read_jsonl_documents(paths)][:args.documents]
  rows = {"float": (held_out_perplexity(model, params, texts, vocabulary, args.length, 8)["perplexity"],
                    quantization.weight_bytes(params))}
  for kind in ("int8", "int4", "nf4"):
    qconfig = config.replace(quantization=kind, quantization_block=args.block)
    qparams = quantization.quantize_params(params, config, kind, args.block)
    ppl = held_out_perplexity(build_model(qconfig), qparams, texts, vocabulary, args.length, 8)["perplexity"]
    rows[kind] = (ppl, quantization.weight_bytes(qparams))
  record = {"benchmark": "quantization_quality", "command": common.command("benchmarks.quantization_quality", argv),
            "gin_files": gin_files, "gin_bindings": bindings, "documents": len(texts),
            "results": {k: {"perplexity": p, "weight_bytes": b, "perplexity_ratio": p / rows["float"][0]}
                        for k, (p, b) in rows.items()},
            "environment": common.environment()}
  common.write_result(record, args.name or "quantization_quality", args.out_dir)
  return record


if __name__ == "__main__":
  main()
