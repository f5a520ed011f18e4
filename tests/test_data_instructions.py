"""Instruction formatting (jaxlm.data.instructions): templates, chat turns, readers. Pure Python."""
from __future__ import annotations

import json

import pytest

from jaxlm.data import generated_tasks, instructions
from jaxlm.data.instructions import ChatTemplate, Instance, Template
from jaxlm.jsonl import FormatError

CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "How many words: red sun?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And in 'a b c'?\nCount again."},
                {"role": "assistant", "content": "The answer is 3."}]


def _write(path, lines):
  path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
  return str(path)


def test_instance_prompt_has_instruction_demonstrations_and_query_and_target_is_separate():
  instance = Instance("Reverse the words.", "a b", "b a", demonstrations=(("c d", "d c"),))
  assert instance.prompt() == "Reverse the words.\n\nc d\nd c\n\na b\n"
  assert instance.target() == "b a"
  cot = Instance("Solve.", "1 + 1", "The answer is 2.", rationale="1 + 1 = 2.")
  assert cot.target() == "1 + 1 = 2. The answer is 2."


def test_template_words_an_example_inverts_it_and_asks_for_the_rationale():
  example = {"input": "sun moon", "output": "moon sun", "rationale": "Last first: moon, then sun."}
  plain = Template("Reverse: {input}", "", "{output}").instance(example)
  assert (plain.prompt(), plain.target()) == ("Reverse: sun moon\n", "moon sun")
  inverted = Template("These words were reversed: {output}. Give the original order.", "", "{input}",
                      inverted=True).instance(example)
  assert inverted.target() == "sun moon" and "moon sun" in inverted.prompt()
  cot = Template("Reverse the words.", output="{output}", cot=True).instance(example, [example])
  assert cot.target() == "Last first: moon, then sun. The answer is moon sun."
  assert cot.prompt().count("The answer is moon sun.") == 1  # the demonstration's worked answer
  assert instructions.answer_of(cot.target()) == "moon sun"
  with pytest.raises(KeyError, match="names field 'missing'"):
    Template("{missing}").instance(example)


def test_template_choice_is_seeded_per_example_and_uses_every_template():
  templates = generated_tasks.FAMILIES["reverse_words"].templates
  picks = [instructions.choose_template(templates, "s", i) for i in range(200)]
  assert picks == [instructions.choose_template(templates, "s", i) for i in range(200)]
  assert picks != [instructions.choose_template(templates, "t", i) for i in range(200)]
  assert set(picks) == set(templates)


def test_template_pairs_draw_demonstrations_from_other_examples():
  examples = generated_tasks.examples("count_words", 20, seed=1)
  templates = generated_tasks.FAMILIES["count_words"].templates[:1]
  pairs = instructions.template_pairs(examples, templates, seed=0, num_shots=2)
  for (prompt, target), example in zip(pairs, examples):
    assert target == example["output"]
    assert prompt.endswith(example["input"] + "\n")
    assert prompt.count("\n\n") == 3  # instruction, two demonstrations, the query


def test_chat_render_parse_round_trip_and_one_training_pair_per_assistant_turn():
  chat = ChatTemplate()
  text = chat.render(CONVERSATION)
  assert chat.parse(text) == CONVERSATION
  pairs = chat.training_pairs(CONVERSATION)
  assert [t for _, t in pairs] == ["2<|end|>", "The answer is 3.<|end|>"]
  first, second = (p for p, _ in pairs)
  assert first.endswith("<|assistant|>\n") and "2<|end|>" not in first
  assert second.startswith(first) and "2<|end|>" in second  # the history holds the earlier turn
  assert text == second + "The answer is 3.<|end|>\n"


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "bot", "content": "x"}], "role 'bot'"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only the first"),
    ([{"role": "user"}], "'role' and 'content'"),
])
def test_bad_conversations_are_rejected_naming_the_problem(messages, message):
  with pytest.raises(ValueError, match=message):
    ChatTemplate().render(messages)


def test_alpaca_reader_skips_or_rejects_malformed_lines_naming_file_and_line(tmp_path):
  path = _write(tmp_path / "alpaca.jsonl", [
      {"instruction": "Add.", "input": "2 3", "output": "5"},
      "{not json",
      {"instruction": "Say hi.", "output": "hi"},
      {"instruction": "No output."},
      {"instruction": "Bad input.", "input": 7, "output": "x"},
  ])
  records, stats = instructions.read_alpaca(path, errors="skip")
  assert [r["output"] for r in records] == ["5", "hi"] and records[1]["input"] == ""
  assert (stats.read, stats.kept, len(stats.skipped)) == (5, 2, 3)
  assert stats.skipped[0].startswith(f"{path}:2:") and f"{path}:4: missing field 'output'" in stats.skipped[1]
  with pytest.raises(FormatError, match=f"{path}:2: invalid JSON"):
    instructions.read_alpaca(path)
  instance = instructions.alpaca_instance(records[0])
  assert (instance.prompt(), instance.target()) == ("Add.\n\n2 3\n", "5")


def test_chat_reader_checks_messages(tmp_path):
  path = _write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION},
                                          {"messages": [{"role": "user", "content": "only a question"}]},
                                          {"conversation": []}])
  conversations, stats = instructions.read_chat(path, errors="skip")
  assert conversations == [CONVERSATION] and len(stats.skipped) == 2
  assert "at least one assistant turn" in stats.skipped[0] and "missing field 'messages'" in stats.skipped[1]
  with pytest.raises(FormatError, match=f"{path}:2:"):
    instructions.read_chat(path, errors="raise")
  with pytest.raises(ValueError, match="errors='ignore'"):
    instructions.read_chat(path, errors="ignore")


def test_benchmark_formats_become_instruction_examples():
  math = instructions.suite_examples("math", [{"question": "Tom has 2 pens and buys 3. How many?",
                                               "solution": "2 + 3 = <<2+3=5>>5 pens.\n#### 5", "answer": "5"}])
  template = instructions.SUITE_TEMPLATES["math"][0]
  assert template.cot and template.instance(math[0]).target() == "2 + 3 = 5 pens. The answer is 5."
  mc = instructions.suite_examples("multiple_choice", [{"question": "2 + 2?", "choices": ["3", "4"], "answer": 1}])
  for template in instructions.SUITE_TEMPLATES["multiple_choice"]:
    instance = template.instance(mc[0])
    assert "A. 3\nB. 4" in instance.prompt() and instance.target() in ("B", "4")
  qa = instructions.suite_examples("qa", [{"question": "Capital of France?", "context": "France: Paris.",
                                           "answers": ["Paris", "paris"]}])
  assert instructions.SUITE_TEMPLATES["qa"][0].instance(qa[0]).target() == "Paris"
  with pytest.raises(ValueError, match="'code' has no instruction templates"):
    instructions.suite_examples("code", [])
