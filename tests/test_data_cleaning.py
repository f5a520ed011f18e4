"""Cleaning stages on documents built to pass and to fail them; the clean CLI end to end."""
import json
import os
import random
import subprocess
import sys

import pytest

from jaxlm.data import cleaning, cleaning_job, dedup, pii, sources

ENGLISH = (
    "The committee met on Tuesday to review the proposal for the new library. Members agreed that the "
    "building should be open to everyone in the town, and that it must have a quiet room for study. "
    "They also discussed the budget, which has grown over the last year because of higher costs for "
    "materials. The chair said that the work would start in the spring if the council approves the plan.\n"
    "Several residents spoke in favour of the project. One of them explained that her children had to "
    "travel to the next city to find books, and that a local library would save families time and money. "
    "Another resident asked whether the library would offer classes for adults who want to learn new "
    "skills. The committee promised to publish a full report with all of the details before the next meeting."
)
GERMAN = (
    "Die Bundesregierung hat am Mittwoch beschlossen, dass die neuen Regeln für den Datenschutz ab dem "
    "nächsten Jahr gelten sollen. Nach Angaben des Ministeriums werden die Unternehmen mehr Zeit haben, "
    "sich auf die Änderungen vorzubereiten, und auch kleinere Betriebe sollen unterstützt werden. Die "
    "Opposition kritisierte den Beschluss, weil er nicht weit genug gehe und die Bürger zu wenig schütze."
)
FRENCH = (
    "Le gouvernement a annoncé mercredi que les nouvelles règles sur la protection des données entreront "
    "en vigueur l'année prochaine. Selon le ministère, les entreprises auront plus de temps pour se préparer "
    "aux changements, et les petites entreprises seront aussi soutenues par un programme spécial."
)
SPANISH = (
    "El gobierno anunció el miércoles que las nuevas normas sobre la protección de datos entrarán en vigor "
    "el próximo año. Según el ministerio, las empresas tendrán más tiempo para prepararse para los cambios."
)
CODE = (
    "import os\nimport sys\n\n\ndef read_config(path):\n    \"\"\"Read the configuration file.\"\"\"\n"
    "    with open(path) as handle:\n        data = handle.read()\n    if not data:\n        return {}\n"
    "    result = {}\n    for line in data.splitlines():\n        key, _, value = line.partition('=')\n"
    "        result[key.strip()] = value.strip()\n    return result\n"
)


# ------------------------------------------------------------------ language
# Article 1 of the Universal Declaration of Human Rights, in the UN's official translations.
UDHR_1 = {
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и "
          "совестью и должны поступать в отношении друг друга в духе братства.",
    "zh": "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。",
    "ar": "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق. وقد وهبوا عقلاً وضميرًا وعليهم أن يعامل بعضهم "
          "بعضًا بروح الإخاء.",
    "hi": "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता और समानता प्राप्त है। उन्हें बुद्धि "
          "और अन्तरात्मा की देन प्राप्त है और परस्पर उन्हें भाईचारे के भाव से बर्ताव करना चाहिए।",
    "ja": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。人間は、理性と良心と"
          "を授けられており、互いに同胞の精神をもって行動しなければならない。",
    "ko": "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다. 인간은 천부적으로 이성과 양심을 "
          "부여받았으며 서로 형제애의 정신으로 행동하여야 한다.",
    "tr": "Bütün insanlar hür, haysiyet ve haklar bakımından eşit doğarlar. Akıl ve vicdana sahiptirler ve "
          "birbirlerine karşı kardeşlik zihniyeti ile hareket etmelidirler.",
    "pl": "Wszyscy ludzie rodzą się wolni i równi pod względem swej godności i swych praw. Są oni obdarzeni "
          "rozumem i sumieniem i powinni postępować wobec innych w duchu braterstwa.",
    "el": "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια και τα δικαιώματα. Είναι "
          "προικισμένοι με λογική και συνείδηση, και οφείλουν να συμπεριφέρονται μεταξύ τους με πνεύμα αδελφοσύνης.",
    "he": "כל בני האדם נולדו בני חורין ושווים בערכם ובזכויותיהם. כולם חוננו בתבונה ובמצפון, לפיכך חובה "
          "עליהם לנהוג איש ברעהו ברוח של אחוה.",
}


@pytest.mark.parametrize("text,label", [(ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr"), (SPANISH, "es"),
                                        (CODE, "code"), ("東京は日本の首都であり、多くの人が住んでいる大都市です。", "ja"),
                                        ("12 34 56 | 78 90 | 12.5 %", "unknown"), ("", "unknown")])
def test_detect_language(text, label):
  assert cleaning.detect_language(text)[0] == label


@pytest.mark.parametrize("lang", sorted(UDHR_1))
def test_detect_language_beyond_latin_script(lang):
  label, probability = cleaning.detect_language(UDHR_1[lang])
  assert label == lang and probability >= 0.5  # the default min_probability


def test_language_identifier_is_deterministic_and_restrictable():
  mixed = "The meeting is at noon. Die Sitzung ist um zwölf. La réunion est à midi."
  assert len({cleaning.detect_language(mixed, min_probability=0.0) for _ in range(5)}) == 1
  latin = cleaning.LanguageIdentifier(candidates=["en", "de"])
  assert latin(GERMAN)[0] == "de" and latin(UDHR_1["ru"]) == ("unknown", 0.0)  # Cyrillic: no candidate
  with pytest.raises(ValueError, match=r"LanguageIdentifier.candidates: no langdetect profile for \['xx'\]"):
    cleaning.LanguageIdentifier(candidates=["en", "xx"])("text")
  with pytest.raises(ValueError, match=r"candidates=\['en'\]: give at least two languages"):
    cleaning.LanguageIdentifier(candidates=["en"])("text")


def test_language_filter_keeps_and_drops_as_configured():
  f = cleaning.LanguageFilter(("en",))
  assert f.process(ENGLISH).text == ENGLISH
  for text in (GERMAN, FRENCH, SPANISH, CODE, UDHR_1["ru"]):
    result = f.process(text)
    assert result.text is None and result.reason.startswith("language=")
  assert f.process(UDHR_1["zh"]).reason == "language=zh"
  assert f.process(CODE).reason == "language=code"
  keep = cleaning.LanguageFilter(("de", "ru", "code"))
  assert [keep.process(t).text is not None for t in (GERMAN, UDHR_1["ru"], CODE, ENGLISH, UDHR_1["ar"])] == [
      True, True, True, False, False]
  assert cleaning.LanguageFilter(("en",), min_probability=1.01).process(ENGLISH).reason == "language=unknown"


def test_language_detector_on_embedded_prose_is_mostly_english():
  docs = [d["text"] for d in sources.embedded_documents("prose", "validation")]
  labels = [cleaning.detect_language(t)[0] for t in docs]
  assert labels.count("en") >= 0.85 * len(labels)
  assert set(labels) <= {"en", "code", "unknown"}


# ------------------------------------------------------------------- quality
@pytest.mark.parametrize("text,reason", [
    ("Too short to be a document, surely.", "word_count<50"),
    (" ".join(["antidisestablishmentarianism"] * 60) + " the and of.", "mean_word_length"),
    (ENGLISH.replace(".", ". # ##") + " # # # # # # # # # # # # # # # # # # # # # # # # # # # #", "symbol_word_ratio"),
    ("\n".join(f"- item number {i} of the list" for i in range(30)), "bullet_lines"),
    ("\n".join(f"and then the story goes on with part {i}" + ("..." if i % 5 < 2 else ".") for i in range(30)),
     "ellipsis_lines"),
    ("\n".join(f"the value of that field with {i}" for i in range(30)), "unpunctuated_lines"),
    (ENGLISH + " " + " ".join(f"{i}{i}" for i in range(400)), "alpha_words"),
    (" ".join(["Cats sleep all day long. Dogs bark at night loudly."] * 6), "stopwords"),
])
def test_gopher_quality_filter_rejects(text, reason):
  assert cleaning.GopherQualityFilter().check(text) == reason


def test_gopher_quality_filter_keeps_good_prose():
  assert cleaning.GopherQualityFilter().check(ENGLISH) is None


def test_repetition_filter():
  f = cleaning.RepetitionFilter()
  assert f.check(ENGLISH) is None
  repeated_lines = "\n".join(["Buy the best shoes in town today."] * 5 + ENGLISH.split(". ")[:5])
  assert f.check(repeated_lines) in ("duplicate_lines", "top_2gram", "top_3gram", "top_4gram")
  repeated_paragraphs = "\n\n".join([ENGLISH.split("\n")[0]] * 3 + [ENGLISH.split("\n")[1]])
  assert f.check(repeated_paragraphs) == "duplicate_paragraphs"
  ngram_spam = ENGLISH.split("\n")[0] + " " + " ".join(["click here now"] * 40)
  assert f.check(ngram_spam).startswith("top_")
  # repeated 5-grams spread over distinct lines
  words = ENGLISH.split()
  loop = " ".join(words[:30] + words[:30] + words[:30])
  assert f.check(loop) == "duplicate_5grams"


# ------------------------------------------------------------------ keywords
def test_keyword_filter():
  f = cleaning.KeywordFilter(blocklist=["casino", "free money"])
  assert f.check(ENGLISH) is None
  assert f.check("<html><body><div>" + ENGLISH + "</div></body></html>") == "html"
  assert f.check(ENGLISH + " <b>bold</b> <i>x</i> <p>para</p> <span>y</span> <a href='z'>link</a>") == "html"
  assert f.check("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " + ENGLISH) == "lorem_ipsum"
  notices = "We use cookies to improve your experience.\nRead our privacy policy.\nAll rights reserved.\n"
  assert f.check(notices + "Welcome to the page.") == "boilerplate"
  assert f.check(ENGLISH + " Visit our casino tonight.") == "blocklist"
  assert f.check(ENGLISH + " They offered FREE MONEY.") == "blocklist"
  assert f.check(ENGLISH + " The casinos closed.") is None  # whole words only


def test_keyword_filter_blocklist_file(tmp_path):
  path = tmp_path / "block.txt"
  path.write_text("# comment\nspamword\n")
  assert cleaning.KeywordFilter(blocklist_file=str(path)).check(ENGLISH + " spamword") == "blocklist"


# ---------------------------------------------------------------- perplexity
def test_char_ngram_lm_prefers_its_domain():
  lm = cleaning.CharNgramLM(order=4).fit([ENGLISH * 3])
  in_domain = cleaning.perplexity("The committee said that the library would open in the spring.", lm)
  out_domain = cleaning.perplexity("Zyxq vwpl kjhg fdsa qwrt zxcv bnmq", lm)
  assert in_domain < 8 < 30 < out_domain


def test_perplexity_filter_default_reference_lm():
  f = cleaning.PerplexityFilter()
  assert f.check(ENGLISH) is None
  assert f.check(GERMAN) == "perplexity_high"
  assert f.check("asdkj qwe zxcmn qpwoeiru alskdjf zmxncb qowieur vbnm") == "perplexity_high"


def test_perplexity_filter_takes_any_scorer():
  calls = []

  def scorer(text):  # a "model": log 0.5 per character for text with 'good' in it, log 0.01 otherwise
    calls.append(text)
    return len(text) * (-0.6931 if "good" in text else -4.6)

  f = cleaning.PerplexityFilter(scorer, max_perplexity=10.0)
  assert f.check("a good text") is None
  assert f.check("a bad text") == "perplexity_high"
  assert cleaning.PerplexityFilter(scorer, max_perplexity=1000, min_perplexity=5).check("good") == "perplexity_low"
  assert calls == ["a good text", "a bad text", "good"]


# ------------------------------------------------------------------------ PII
PII_POSITIVE = [
    ("Contact john.doe+news@example.co.uk for details.", "Contact <EMAIL> for details.", "email"),
    ("Call me at (555) 123-4567 tomorrow.", "Call me at <PHONE> tomorrow.", "phone"),
    ("Phone: +1 555 123 4567", "Phone: <PHONE>", "phone"),
    ("UK office +44 20 7946 0958.", "UK office <PHONE>.", "phone"),
    ("Server at 192.168.1.20 is down", "Server at <IP_ADDRESS> is down", "ip_address"),
    ("IPv6 2001:db8:85a3::8a2e:370:7334 responded", "IPv6 <IP_ADDRESS> responded", "ip_address"),
    ("Card 4111 1111 1111 1111 expires soon", "Card <CREDIT_CARD> expires soon", "credit_card"),
    ("SSN 123-45-6789 on file", "SSN <SSN> on file", "ssn"),
]
PII_NEGATIVE = [
    "Released on 2023-01-15 with Python 3.11.7.", "The price was $1,234.56 in 2019.",
    "Version 1.2.3.4.5 of the tool", "Use std::vector and a::b in C++", "ISBN 978-3-16-148410-0 here",
    "Room 12-34 and 555 apples", "the ratio 3:4:5 is fine", "Timestamp 12:30:45 and 10:15",
    "order #1234567890123 shipped", "Card 4111 1111 1111 1112 fails the Luhn check", "IP 999.1.1.1 is invalid",
]


@pytest.mark.parametrize("text,redacted,kind", PII_POSITIVE)
def test_pii_redacted(text, redacted, kind):
  result = pii.PIIRedactor().process(text)
  assert result.text == redacted and result.edits == {kind: 1}


@pytest.mark.parametrize("text", PII_NEGATIVE)
def test_pii_leaves_non_pii(text):
  assert pii.PIIRedactor().process(text).text == text


def test_pii_kinds_are_selectable():
  text = "mail a@b.org or call 555-123-4567"
  assert pii.PIIRedactor(kinds=["email"]).process(text).text == "mail <EMAIL> or call 555-123-4567"
  with pytest.raises(ValueError, match="unknown PII kinds"):
    pii.PIIRedactor(kinds=["passport"])


# ---------------------------------------------------------------------- dedup
def test_exact_dedup_normalizes():
  d = dedup.ExactDedup()
  assert d.process("Hello, World!  The end.").text is not None
  assert d.process("hello world\nthe END").reason == "exact_duplicate"
  assert d.process("Hello, World! The beginning.").text is not None


def _long_docs(n, min_words=250):
  docs = [d["text"] for d in sources.embedded_documents("prose") if len(d["text"].split()) >= min_words]
  assert len(docs) >= n
  return docs[:n]


def _perturb(text, fraction, seed):
  """Replace a fraction of the words with fresh ones (changes ~5x as many 5-gram shingles)."""
  rng = random.Random(seed)
  ws = text.split()
  for i in rng.sample(range(len(ws)), int(len(ws) * fraction)):
    ws[i] = f"zz{rng.randrange(10 ** 6)}"
  return " ".join(ws)


def test_near_dedup_finds_planted_near_duplicates_at_threshold():
  threshold = 0.8
  originals = _long_docs(40)
  planted = [_perturb(t, 0.01, seed=i) for i, t in enumerate(originals[:20])]
  distant = [_perturb(t, 0.15, seed=100 + i) for i, t in enumerate(originals[20:30])]
  for t, p in zip(originals, planted):
    assert dedup.jaccard(t, p) >= 0.85  # above the 0.8 threshold
  for t, p in zip(originals[20:], distant):
    assert dedup.jaccard(t, p) <= 0.5  # well below it
  near = dedup.NearDedup(threshold=threshold)
  kept_originals = [near.process(t).text is not None for t in originals]
  assert all(kept_originals)  # 40 distinct documents: none dropped
  assert [near.process(p).reason for p in planted] == ["near_duplicate"] * 20
  assert all(near.process(p).text is not None for p in distant)


def test_near_dedup_estimate_tracks_jaccard():
  base = _long_docs(1)[0]
  hasher = dedup.MinHasher(num_perm=256)
  for fraction in (0.02, 0.05, 0.1):
    other = _perturb(base, fraction, seed=7)
    estimate = float((hasher.signature(base) == hasher.signature(other)).mean())
    assert abs(estimate - dedup.jaccard(base, other)) < 0.1


def test_lsh_bands_match_threshold():
  near = dedup.NearDedup(threshold=0.8, num_perm=128)
  bands, rows = near.bands, near.rows
  assert bands * rows <= 128
  candidate = lambda s: 1 - (1 - s ** rows) ** bands  # probability two documents share a bucket
  assert candidate(0.85) > 0.95 and candidate(0.9) > 0.99 and candidate(0.5) < 0.05


def test_repeated_sentences_removed():
  text = ("The cat sat on the mat. The dog barked at it. The cat sat on the mat! "
          "Then they slept. The dog barked at it.\nThe end.")
  result = dedup.RepeatedSentenceRemover().process(text)
  assert result.text == "The cat sat on the mat. The dog barked at it. Then they slept. The end."
  assert result.edits == {"repeated_sentence": 2}
  assert dedup.RepeatedSentenceRemover().process(ENGLISH).text == ENGLISH


def test_decontamination():
  eval_text = ("Question: what is the capital city of the small northern country that borders the sea "
               "and has many lakes? Answer: the city by the bay.")
  d = dedup.Decontaminator([eval_text], n=13)
  leaked = ENGLISH + " " + " ".join(eval_text.split()[2:16]) + " and more words follow here."
  assert d.process(leaked).reason == "contaminated"
  partial = ENGLISH + " " + " ".join(eval_text.split()[2:13])  # 11 shared words < 13
  assert d.process(partial).text == partial
  assert d.process(ENGLISH).text == ENGLISH


# ------------------------------------------------------------ pipeline + CLI
OTHER_ENGLISH = (
    "Farmers in the valley have started the harvest early this year because the summer was warm and dry. "
    "Most of them expect a good crop of apples and pears, but some worry that the lack of rain will make the "
    "fruit smaller than usual. The local market has already opened its doors to the first sellers, and "
    "prices are lower than they were at this time last year. Visitors from the city come every weekend to "
    "buy fresh produce and to walk through the orchards, which are now full of colour."
)


def _write_corpus(path):
  lines = [json.dumps({"text": ENGLISH, "id": "a", "source": "web"})]
  lines += [json.dumps({"text": ENGLISH.replace("Tuesday", "tuesday"), "id": "a-dup"})]  # exact dup
  lines += [json.dumps({"text": GERMAN, "id": "de"})]
  lines += [json.dumps({"text": OTHER_ENGLISH + " Mail me at jane@example.org or call 555-867-5309.", "id": "pii"})]
  lines += [json.dumps({"text": "", "id": "empty"}), json.dumps({"id": "no-text"}), "{not json"]
  lines += [json.dumps({"text": "x " * 600_000, "id": "huge"})]
  with open(path, "wb") as handle:
    handle.write(("\n".join(lines) + "\n").encode("utf-8"))
    handle.write(b'{"text": "bad \xff\xfe bytes"}\n')


def test_clean_cli_end_to_end(tmp_path):
  src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_corpus(src)
  assert cleaning_job.main(["--input", str(src), "--output", str(out), "--max_doc_chars", "100000"]) == 0
  kept = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["id"] for r in kept] == ["a", "pii"]
  assert kept[0]["source"] == "web"  # other fields kept
  assert "<EMAIL>" in kept[1]["text"] and "<PHONE>" in kept[1]["text"]
  report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
  assert report["input"]["reasons"] == {"empty": 1, "no_text_field": 1, "invalid_json": 1,
                                       "oversized": 1, "invalid_utf8": 1}
  stages = {s["stage"]: s for s in report["stages"]}
  assert stages["language"]["docs_dropped"] == 1 and stages["language"]["reasons"] == {"language=de": 1}
  assert stages["exact_dedup"]["reasons"] == {"exact_duplicate": 1}
  assert stages["exact_dedup"]["tokens_removed"] == len(ENGLISH.split())
  assert stages["pii"]["edits"] == {"email": 1, "phone": 1}
  assert report["docs_out"] == 2 and report["tokens_out"] == sum(len(r["text"].split()) for r in kept)


def test_clean_module_runs_as_a_command(tmp_path):
  src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  src.write_text(json.dumps({"text": "write to bob@example.com", "n": 1}) + "\n")
  proc = subprocess.run([sys.executable, "-m", "jaxlm.data.cleaning_job", "--input", str(src), "--output", str(out),
                         "--stages", "pii,exact_dedup", "--report", str(tmp_path / "r.json")],
                        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert json.loads(out.read_text()) == {"text": "write to <EMAIL>", "n": 1}
  assert "pii" in proc.stdout and json.loads((tmp_path / "r.json").read_text())["docs_out"] == 1


def test_unknown_stage_is_an_error():
  with pytest.raises(ValueError, match="unknown cleaning stages"):
    cleaning_job.default_cleaning_pipeline(stages=["language", "spellcheck"])
