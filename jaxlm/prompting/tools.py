"""Tools during decoding: the model writes a call, decoding pauses, the tool runs, its
result goes into the KV cache, and decoding resumes where it stopped.

A call is ``<name>argument</name>`` (:class:`ToolSyntax`), e.g. ``<calc>347 * 28</calc>``;
the result is appended as ``result_format`` (default ``" = {result}"``), so the model reads
``<calc>347 * 28</calc> = 9716`` and goes on. Tools are functions str -> str in a registry
by name (:func:`register_tool`); built in: ``calc`` (:func:`calculate`: arithmetic parsed
with ``ast``, never ``eval``) and ``search`` (:class:`SearchTool`: the best BM25 passage of
a local corpus). A tool's failure comes back to the model as text (``"error: ..."``); it
never raises through the decoder.

:func:`decode_with_tools` runs the one decoder (``jaxlm.inference.decoding``) in segments:
``decode_segment`` stops when a row emits a token that can close a call (a piece holding
the closing tag's last character), the rows with a complete new call get their tool's
result, and ``extend_cache`` writes [pending token + result] of every row after what the
cache holds (rows without a result are padded, the padding masked), so the prompt is
never encoded again. Greedy tool decoding therefore equals greedy decoding of the
concatenated tokens from scratch.

Tool-use data (Toolformer-style): :func:`with_calculator_calls` rewrites a rationale's
"a op b = c." steps as calls with their results, e.g. for the generated arithmetic tasks
(``generated_tasks`` multi_step_arithmetic, word_problems) and :func:`arithmetic_examples`'
multi-digit problems, so a tiny model can be instruction-tuned to call the calculator.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import operator
import random
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

from jaxlm.data import generated_tasks
from jaxlm.inference.decoding import (DecodeConfig, decode_segment, extend_cache, round_up_to_bucket,
                                      start_decoding)
from jaxlm.inference.infer import tokenize_prompts
from jaxlm.prompting.retrieval import RetrievalAugmentation
from jaxlm.vocabularies import until_eos

Tool = Callable[[str], str]
MAX_MAGNITUDE = 1e18   # calculator results (and exponents' bases) beyond this are errors
MAX_EXPONENT = 64
CHUNK_BUCKET = 8       # cache extensions are padded to a multiple of this: few compilations


# --------------------------------------------------------------- calculator
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _value(node: ast.AST) -> Union[int, float]:
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return node.value
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_value(node.operand))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_MAGNITUDE):
      raise ValueError("exponent too large")
    out = _BINARY[type(node.op)](left, right)
    if isinstance(out, complex) or abs(out) > MAX_MAGNITUDE:
      raise ValueError("result out of range")
    return out
  raise ValueError(f"unsupported syntax {type(node).__name__}")


def format_number(value: Union[int, float]) -> str:
  """An integer as digits; a float rounded to 6 significant digits ('3.5', not '3.500000')."""
  if isinstance(value, float) and value.is_integer() and math.isfinite(value):
    value = int(value)
  return str(value) if isinstance(value, int) else f"{value:.6g}"


def calculate(expression: str) -> str:
  """The value of an arithmetic expression (numbers, + - * / // % **, parentheses, unary
  signs; '×' and '÷' read as * and /), or 'error: ...' naming what is wrong."""
  text = expression.strip().replace("×", "*").replace("÷", "/").replace(",", "")
  if not text:
    return "error: empty expression"
  try:
    return format_number(_value(ast.parse(text, mode="eval").body))
  except ZeroDivisionError:
    return "error: division by zero"
  except (SyntaxError, ValueError, TypeError, OverflowError, RecursionError) as e:
    return f"error: {str(e) or type(e).__name__}"


# ----------------------------------------------------------------- registry
TOOLS: Dict[str, Callable[[], Tool]] = {}


def register_tool(name: str, make: Callable[[], Tool], overwrite: bool = False) -> None:
  """Registers a tool by name; ``make()`` returns the str -> str function (called when a
  decoder asks for the tool, so a gin-configured tool reads its bindings then)."""
  if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
    raise ValueError(f"tool name {name!r}: letters, digits, '_' and '-' only (it appears in the call syntax)")
  if name in TOOLS and not overwrite:
    raise ValueError(f"a tool named {name!r} is registered; pass overwrite=True to replace it")
  TOOLS[name] = make


def get_tools(tools: Union[Sequence[str], Mapping[str, Tool]]) -> Dict[str, Tool]:
  """{name: function} of registered tool names (or a mapping of functions, as given)."""
  if isinstance(tools, Mapping):
    return dict(tools)
  unknown = [t for t in tools if t not in TOOLS]
  if unknown:
    raise ValueError(f"unknown tool(s) {unknown}; registered: {sorted(TOOLS)} (jaxlm.prompting.tools.register_tool)")
  return {name: TOOLS[name]() for name in tools}


@gin.configurable
@dataclasses.dataclass
class SearchTool:
  """The retrieval tool: the best passage of ``retrieval``'s BM25 index for the query
  (default: RetrievalAugmentation() as gin binds it, e.g. its corpus)."""
  retrieval: Optional[RetrievalAugmentation] = None

  def __call__(self, query: str) -> str:
    retrieval = self.retrieval or RetrievalAugmentation()
    passages = retrieval.retrieve(query)
    return passages[0] if passages else "error: no passage"


register_tool("calc", lambda: calculate)
register_tool("search", SearchTool)


# ------------------------------------------------------------------- syntax
@gin.configurable
@dataclasses.dataclass(frozen=True)
class ToolSyntax:
  """How calls and results read: ``open`` + argument + ``close`` (``{name}``: the tool's
  name), then the tool's ``result_format`` ({result}) appended by the decoder."""
  open: str = "<{name}>"
  close: str = "</{name}>"
  result_format: str = " = {result}"

  def __post_init__(self):
    for field in ("open", "close"):
      if "{name}" not in getattr(self, field):
        raise ValueError(f"ToolSyntax.{field}={getattr(self, field)!r} must contain {{name}}")
    if "{result}" not in self.result_format:
      raise ValueError(f"ToolSyntax.result_format={self.result_format!r} must contain {{result}}")

  def call(self, name: str, argument: str) -> str:
    return f"{self.open.format(name=name)}{argument}{self.close.format(name=name)}"

  def result(self, text: str) -> str:
    return self.result_format.format(result=text)

  def find_calls(self, text: str, names: Sequence[str]) -> List[Tuple[str, str, int]]:
    """Complete calls in text, in order: (tool name, argument, end offset)."""
    found = []
    for name in names:
      pattern = re.escape(self.open.format(name=name)) + "(.*?)" + re.escape(self.close.format(name=name))
      found += [(name, m.group(1), m.end()) for m in re.finditer(pattern, text, re.DOTALL)]
    return sorted(found, key=lambda c: c[2])


def run_tool(tool: Tool, argument: str) -> str:
  """The tool's text for the argument; an exception becomes 'error: ...' text."""
  try:
    return str(tool(argument))
  except Exception as e:  # pylint: disable=broad-except  # the model reads the failure
    return f"error: {type(e).__name__}: {e}"


_PAUSE_IDS: Dict[Tuple[int, str], Tuple[int, ...]] = {}


def _pause_ids(vocab, characters: str) -> Tuple[int, ...]:
  """Ids of the vocabulary pieces whose text holds one of the characters (a call's end)."""
  key = (id(vocab), characters)
  if key not in _PAUSE_IDS:
    _PAUSE_IDS[key] = tuple(i for i in range(int(vocab.vocab_size))
                            if any(c in vocab.decode([i]) for c in characters))
  return _PAUSE_IDS[key]


# ----------------------------------------------------------------- decoding
def decode_with_tools(model, params, vocab, prompts: Sequence[str], decoding: DecodeConfig,
                      tools: Union[Sequence[str], Mapping[str, Tool]] = ("calc",),
                      syntax: Optional[ToolSyntax] = None, *, batch_size: int = 8, max_calls: int = 4,
                      max_tool_tokens: int = 64, max_prompt_length: Optional[int] = None) -> List[dict]:
  """Greedy or sampled decoding (decoder-only models) that executes tool calls.

  decoding: DecodeConfig with max_new_tokens (the model's own tokens; tool results come on
  top, at most max_tool_tokens per batch row in all, longer results cut). max_calls per
  row; max_prompt_length as infer.tokenize_prompts's. Returns one row per prompt, as
  decode_texts's ('prompt', 'output' and 'tokens' with the results in them, 'score' and
  'logprob' of the model's own tokens) plus 'calls' [(tool, argument, result)].
  """
  if model.config.arch == "encoder_decoder":
    raise ValueError("decode_with_tools needs a decoder-only model (arch 'decoder' or 'prefix_decoder')")
  if decoding.max_new_tokens is None:
    raise ValueError("decode_with_tools needs DecodeConfig.max_new_tokens")
  syntax = syntax or ToolSyntax()
  functions = get_tools(tools)
  closers = "".join(sorted({syntax.close.format(name=n)[-1] for n in functions}))
  pause_ids = _pause_ids(vocab, closers) if functions else ()
  key = jax.random.key(decoding.seed)
  program = dataclasses.replace(decoding, seed=0, prompt_bucket=1)
  rows = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    padded = chunk + [""] * (batch_size - len(chunk))
    prompt, mask, _ = tokenize_prompts(model, vocab, padded, add_eos=False, prompt_bucket=decoding.prompt_bucket,
                                       max_prompt_length=max_prompt_length)
    out = _decode_batch(model, params, vocab, prompt, mask, program, functions, syntax, pause_ids, max_calls,
                        max_tool_tokens, jax.random.fold_in(key, start))
    rows += [{"prompt": p, **o} for p, o in zip(chunk, out)]
  return rows


def _decode_batch(model, params, vocab, prompt, mask, config, functions, syntax, pause_ids, max_calls, room,
                  rng) -> List[dict]:
  n, eos = config.max_new_tokens, config.eos_id
  logits, cache, positions = start_decoding(model, params, prompt, mask, room=n + room)
  b = len(prompt)
  positions, done, logprob = np.asarray(positions), np.zeros((b,), bool), np.zeros((b,))
  tokens: List[List[int]] = [[] for _ in range(b)]
  calls: List[List[Tuple[str, str, str]]] = [[] for _ in range(b)]
  generated = written = 0  # the model's tokens so far; cache slots used after the prompt
  while True:
    seg = decode_segment(model, params, cache, logits, positions, done, n - generated, rng, config=config,
                         pause_ids=pause_ids)
    steps = int(seg.steps)
    new = np.asarray(seg.tokens)[:, :steps]
    for r in range(b):
      if not done[r]:
        tokens[r] += until_eos(new[r], eos) + ([eos] if eos is not None and eos in new[r].tolist() else [])
    logprob += np.asarray(seg.logprobs)
    generated, written = generated + steps, written + steps - 1
    positions, done, cache, rng = positions + steps - 1, np.asarray(seg.done), seg.cache, seg.rng
    if done.all() or generated >= n:
      break
    # The cache holds n + room slots after the prompt; the model's remaining tokens need
    # n - generated of them, so this extension may take the rest (whole buckets).
    cap = (room + generated - written) // CHUNK_BUCKET * CHUNK_BUCKET - 1
    results = [[] for _ in range(b)]
    for r in range(b):
      if done[r] or len(calls[r]) >= max_calls:
        continue
      found = syntax.find_calls(vocab.decode(tokens[r]), list(functions))
      for name, argument, _ in found[len(calls[r]):len(calls[r]) + 1]:
        text = run_tool(functions[name], argument)
        calls[r].append((name, argument, text))
        results[r] = list(vocab.encode(syntax.result(text)))[:max(0, cap)]
    last = np.asarray(seg.last)
    width = round_up_to_bucket(1 + max(map(len, results)), CHUNK_BUCKET) if any(results) else 1
    ext, segs, pos = (np.zeros((b, width), np.int32) for _ in range(3))
    for r in range(b):
      if done[r]:
        continue
      seq = [int(last[r])] + results[r]
      ext[r, width - len(seq):], segs[r, width - len(seq):] = seq, 1
      pos[r, width - len(seq):] = positions[r] + np.arange(len(seq))
      positions[r] += len(seq)
      tokens[r] += results[r]
    logits, cache = extend_cache(model, params, cache, ext, segs, pos)
    written += width
  outs = []
  for r in range(b):
    ids = until_eos(tokens[r], eos)
    outs.append({"output": vocab.decode(ids), "tokens": ids, "score": float(logprob[r]),
                 "logprob": float(logprob[r]), "calls": calls[r]})
  return outs


# ------------------------------------------------------------ tool-use data
_STEP = re.compile(r"(?<![\w)])(\d+(?: [-+*/] \d+)+) = (-?\d+)")


def with_calculator_calls(example: Mapping[str, str], syntax: Optional[ToolSyntax] = None,
                          field: str = "rationale") -> Dict[str, str]:
  """The example with every "a op b = c" step of its rationale written as a calculator call
  and its result ("<calc>a op b</calc> = c"); a step whose stated result the calculator
  does not reproduce is left as it is."""
  syntax = syntax or ToolSyntax()

  def call(m):
    if calculate(m.group(1)) != m.group(2):
      return m.group(0)
    return syntax.call("calc", m.group(1)) + syntax.result(m.group(2))
  return {**example, field: _STEP.sub(call, example[field])}


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def make_arithmetic(rng: random.Random, digits: Tuple[int, int] = (2, 3), ops: str = "+-*") -> Dict[str, str]:
  """One multi-digit problem 'a op b' (a, b of digits[0]..digits[1] digits, a >= b for '-'),
  with its one-step rationale; the fields of generated_tasks' multi_step_arithmetic."""
  def number():
    d = rng.randint(*digits)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)
  a, b, op = number(), number(), rng.choice(ops)
  if op == "-" and b > a:
    a, b = b, a
  result = _OPS[op](a, b)
  return {"input": f"{a} {op} {b}", "output": str(result), "rationale": f"{a} {op} {b} = {result}."}


def arithmetic_examples(n: int, split: str = "train", seed: int = 0, digits: Tuple[int, int] = (2, 3),
                        ops: str = "+-*") -> List[Dict[str, str]]:
  """n multi-digit problems of the split: held out as generated_tasks holds out its
  multi_step_arithmetic family (a stable hash of the input), so no validation problem is in
  'train'."""
  rng = random.Random(f"{seed}:arithmetic:{split}:{digits}:{ops}")
  out = []
  for _ in range(100 * n + 1000):
    if len(out) == n:
      return out
    ex = make_arithmetic(rng, digits, ops)
    if generated_tasks.split_of("multi_step_arithmetic", ex) == split:
      out.append(ex)
  raise ValueError(f"could not draw {n} {split} problems with digits={digits}")
