"""jaxlm.inference: the one decoder (greedy, sampling, beam search with a KV cache) and the
`infer` job (prompts file -> checkpoint -> JSONL). Core only: no TensorFlow."""
from jaxlm.inference.decoding import (DecodeConfig, DecodeOutput, brevity_penalty, filter_logits,
                                      generate, predict_batch, predict_batch_with_aux, select_tokens)
from jaxlm.inference.infer import decode_texts, infer
from jaxlm.vocabularies import ByteVocab, SentencePieceVocab, get_vocabulary, until_eos

__all__ = ["DecodeConfig", "DecodeOutput", "brevity_penalty", "filter_logits", "generate",
           "predict_batch", "predict_batch_with_aux", "select_tokens", "until_eos", "decode_texts",
           "infer", "ByteVocab", "SentencePieceVocab", "get_vocabulary"]
