"""airtune.evaluation.metrics: hand-computed scores, and equality with LLaMA-Factory's own recipe."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from airtune.evaluation.metrics import METRICS, score_corpus, score_pair


def lf_round(f: float) -> float:
    """A 0-1 score as LLaMA-Factory keeps it per pair: round(f * 100, 4)."""
    return round(f * 100, 4)


def rouge_chinese_f(p: float, r: float) -> float:
    """rouge_chinese's F1 (rouge_score.f_r_p_rouge_n): 2 * ((p * r) / (p + r + 1e-8))."""
    return 2.0 * ((p * r) / (p + r + 1e-8))


def assert_scores(scores: dict, rouge1: tuple, rouge2: tuple, rougel: tuple, bleu: float) -> None:
    """rouge*: (precision, recall) worked out by hand; bleu: BLEU-4 in 0-1."""
    assert list(scores) == list(METRICS)
    assert scores["rouge-1"] == lf_round(rouge_chinese_f(*rouge1))
    assert scores["rouge-2"] == lf_round(rouge_chinese_f(*rouge2))
    assert scores["rouge-l"] == lf_round(rouge_chinese_f(*rougel))
    assert scores["bleu-4"] == pytest.approx(lf_round(bleu), abs=1e-9)


# ------------------------------------------------------------------------------------- by hand


def test_english_prefix_of_the_reference():
    # jieba words: hypothesis the|cat|sat (3), reference the|cat|sat|on|the|mat (6; "the" twice).
    # ROUGE-1 counts distinct unigrams as rouge_chinese does: {the,cat,sat} vs {the,cat,sat,on,mat}:
    #   overlap 3, P = 3/3, R = 3/5 (with multiplicity it would be 3/6)  -> F = 0.75 -> 75.0
    # ROUGE-2 distinct bigrams: {the cat, cat sat} vs {the cat, cat sat, sat on, on the, the mat}:
    #   overlap 2, P = 2/2, R = 2/5 -> F = 4/7
    # ROUGE-L: LCS 3 over the word sequences (6 reference words, repeats counted): P = 3/3, R = 3/6
    # BLEU-4 on characters: the 11 characters are a prefix of the 22, so every n-gram precision is 1
    #   and BLEU = brevity penalty = exp(1 - 22/11) = exp(-1)
    scores = score_pair("the cat sat", "the cat sat on the mat")
    assert_scores(scores, (1, 3 / 5), (1, 2 / 5), (1, 3 / 6), math.exp(-1))
    assert scores["rouge-1"] == 75.0


def test_chinese_words_not_characters():
    # jieba words: 我|爱|北京 (3) vs 我|爱|北京|天安门 (4)
    # ROUGE-1: overlap 3, P = 3/3, R = 3/4 -> F = 6/7 (per character it would be P = 4/4, R = 4/7)
    # ROUGE-2: {我爱, 爱北京} vs {我爱, 爱北京, 北京天安门}: P = 2/2, R = 2/3 -> F = 0.8
    # ROUGE-L: LCS 3: P = 3/3, R = 3/4
    # BLEU-4 on characters: 我爱北京 is a prefix of the 7 characters: BLEU = exp(1 - 7/4)
    scores = score_pair("我爱北京", "我爱北京天安门")
    assert_scores(scores, (1, 3 / 4), (1, 2 / 3), (1, 3 / 4), math.exp(1 - 7 / 4))
    assert scores["rouge-2"] == 80.0


def test_repeated_words_count_once_in_rouge_n_but_not_in_rouge_l():
    # the|the|the vs the: distinct unigrams {the} vs {the}: P = R = 1
    # bigrams: {the the} vs none (one word): overlap 0 -> 0
    # LCS 1 over 3 and 1 words: P = 1/3, R = 1 -> F = 0.5
    # BLEU: hypothesis "the the the" (11 chars), reference "the" (3): unigram clipped counts t,h,e = 3 of 11
    #   (the two spaces do not occur), p1 = 3/11; bigrams th, he = 2 of 10; trigram the = 1 of 9;
    #   4-grams 0 of 8 -> method 3: 1/(2 * 8); no brevity penalty (11 > 3)
    bleu = math.exp((math.log(3 / 11) + math.log(2 / 10) + math.log(1 / 9) + math.log(1 / 16)) / 4)
    assert_scores(score_pair("the the the", "the"), (1, 1), (0, 0), (1 / 3, 1), bleu)


def test_smoothing_method_3_for_missing_orders():
    # BLEU-4 of "ab" against "abcd": p1 = 2/2, p2 = 1/1, no trigram or 4-gram in the hypothesis
    # (denominator max(1, 0) = 1): method 3 gives 1/2 and 1/4; brevity penalty exp(1 - 4/2)
    bleu = math.exp(-1) * (1 * 1 * 0.5 * 0.25) ** 0.25
    assert score_pair("ab", "abcd")["bleu-4"] == pytest.approx(lf_round(bleu), abs=1e-9)


def test_no_common_character_is_zero():
    assert score_pair("xyz", "abc") == {key: 0.0 for key in METRICS}


@pytest.mark.parametrize("prediction,reference", [("", "参考答案"), ("a prediction", ""), ("", ""),
                                                  ("  \n\t ", "text"), ("text", "\n")])
def test_a_text_without_words_scores_zero_rouge(prediction, reference):
    scores = score_pair(prediction, reference)
    assert (scores["rouge-1"], scores["rouge-2"], scores["rouge-l"]) == (0.0, 0.0, 0.0)
    assert scores["bleu-4"] == 0.0  # no character of the prediction in the reference


def test_whitespace_only_prediction_still_gets_bleu_from_its_characters():
    # ROUGE: no word in "  " -> 0. BLEU on characters: "  " vs "a  b": p1 = 2/2, p2 = 1/1,
    # p3, p4 smoothed to 1/2, 1/4 (no trigram in 2 characters); brevity penalty exp(1 - 4/2)
    scores = score_pair("  ", "a  b")
    assert scores["rouge-1"] == 0.0
    assert scores["bleu-4"] == pytest.approx(lf_round(math.exp(-1) * 0.125 ** 0.25), abs=1e-9)


def test_identical_texts():
    # P = R = 1 everywhere; rouge_chinese's F is 2 / (2 + 1e-8) = 0.999999995 -> 100.0 after rounding
    assert score_pair("机器学习很有趣。", "机器学习很有趣。") == {key: 100.0 for key in METRICS}


def test_blank_line_is_an_empty_word_as_in_rouge_chinese():
    # rouge_chinese splits "a \n \n b" into the sentences "a", " ", "b"; the blank one becomes one
    # empty word: words a|""|b vs a|b. ROUGE-1: {a,"",b} vs {a,b}: P = 2/3, R = 1;
    # ROUGE-2: {a "", "" b} vs {a b}: 0; ROUGE-L: LCS 2 of 3 and 2 words: P = 2/3, R = 1
    scores = score_pair("a\n\nb", "a b")
    assert scores["rouge-1"] == lf_round(rouge_chinese_f(2 / 3, 1))
    assert scores["rouge-2"] == 0.0
    assert scores["rouge-l"] == lf_round(rouge_chinese_f(2 / 3, 1))


def test_six_dots_end_a_sentence_inside_a_jieba_token():
    # jieba keeps "......." (7 dots) as one token; rouge_chinese's sentence split cuts it after the
    # sixth dot: words 等等|......|.|然后 (4) vs 等等|......|然后 (3).
    # ROUGE-1: P = 3/4, R = 3/3; ROUGE-2: {等等 ......, ...... ., . 然后} vs {等等 ......, ...... 然后}: P = 1/3,
    # R = 1/2; ROUGE-L: LCS 3: P = 3/4, R = 1
    scores = score_pair("等等.......然后", "等等......然后")
    assert scores["rouge-1"] == lf_round(rouge_chinese_f(3 / 4, 1))
    assert scores["rouge-2"] == lf_round(rouge_chinese_f(1 / 3, 1 / 2))
    assert scores["rouge-l"] == lf_round(rouge_chinese_f(3 / 4, 1))


def epsilon_pair() -> tuple[str, str]:
    """128 distinct words each, 3 in common, in the same order, never adjacent in the reference."""
    hypothesis = [f"w{i}" for i in range(128)]
    others = [f"v{i}" for i in range(125)]
    reference = ["w0"] + others[:42] + ["w50"] + others[42:84] + ["w100"] + others[84:]
    return " ".join(hypothesis), " ".join(reference)


def test_f_measure_has_rouge_chinese_epsilon():
    # P = R = 3/128 for ROUGE-1 and ROUGE-L: rouge-score's F is exactly 3/128 = 0.0234375, and
    # 2.34375 rounds (half to even) to 2.3438; rouge_chinese's 1e-8 in the denominator makes it
    # 2.3437495..., which LLaMA-Factory rounds to 2.3437.
    scores = score_pair(*epsilon_pair())
    assert scores["rouge-1"] == scores["rouge-l"] == 2.3437
    assert scores["rouge-2"] == 0.0


def test_score_corpus_is_the_mean_of_the_rounded_pairs():
    pairs = [("the cat sat", "the cat sat on the mat"), ("我爱北京", "我爱北京天安门"), ("", "x")]
    per_pair = [score_pair(p, r) for p, r in pairs]
    corpus = score_corpus([p for p, _ in pairs], [r for _, r in pairs])
    assert list(corpus) == list(METRICS)
    for key in METRICS:
        assert corpus[key] == sum(s[key] for s in per_pair) / 3
    # ROUGE-1 by hand: (75.0 + lf_round(6/7) + 0) / 3; 6/7 -> 85.7143 (the unrounded mean would differ)
    assert corpus["rouge-1"] == pytest.approx((75.0 + 85.7143 + 0.0) / 3, abs=1e-12)


def test_score_corpus_of_nothing_is_empty():
    assert score_corpus([], []) == {}


def test_score_corpus_needs_as_many_references():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_corpus(["a", "b"], ["a"])


def test_texts_must_be_strings():
    with pytest.raises(TypeError, match="reference 1 must be a string, not NoneType"):
        score_corpus(["a", "b"], ["a", None])


def test_cheap_to_import_quiet_and_needs_no_nltk_data():
    code = (
        "import sys\n"
        "import airtune.evaluation, airtune.evaluation.metrics, airtune.evaluation.benchmarks\n"
        "heavy = [m for m in ('jieba', 'nltk', 'rouge_score', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import nltk\n"
        "nltk.data.path[:] = []  # no downloaded data anywhere\n"
        "from airtune.evaluation.metrics import score_pair\n"
        "print(score_pair('今天天气很好', '今天天气不错')['rouge-1'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # jieba's "Building prefix dict ..." silenced
    assert float(done.stdout) > 0


# ------------------------------------------------------------------- equality with LLaMA-Factory


def llamafactory_scores(pred: str, label: str) -> dict[str, float]:
    """LLaMA-Factory v0.9.4's per-pair recipe, re-written from ComputeSimilarity.__call__ in
    src/llamafactory/train/sft/metric.py (the same as compute_metrics in scripts/eval_bleu_rouge.py)."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis = list(jieba.cut(pred))
    reference = list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge()
        scores = rouge.get_scores(" ".join(hypothesis), " ".join(reference))
        result = scores[0]
    out = {k: round(v["f"] * 100, 4) for k, v in result.items()}
    bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    out["bleu-4"] = round(bleu_score * 100, 4)
    return out


PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy dog"),
    ("The quick brown fox jumps over the lazy dog", "A quick brown dog jumps over the lazy fox."),
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们去公园走走。"),
    ("你吃饭了吗？我吃了！你呢。", "你吃了吗？我还没吃。"),
    ("我用Python写了一个web服务", "我用 python 写了一个 Web 服务。"),
    ("！？。", "。。。"),
    ("the the the the", "the cat"),
    ("好好好好好", "好"),
    ("", "参考答案"),
    ("some prediction", ""),
    ("", ""),
    ("   \n ", "text"),
    ("答案是 3.14159 和 42", "答案是3.14和42。"),
    ("1 2 3 4 5", "5 4 3 2 1"),
    ("a", "a"),
    ("a", "b"),
    ("Machine learning is a field of study. It gives computers the ability to learn! Does it?",
     "Machine learning gives computers the ability to learn without being explicitly programmed."),
    ("第一段。\n\n第二段。", "第一段。第二段。"),
    ("等等.......然后", "等等......然后"),
    ("……好吧", "好吧……"),
    ("他说：“你好！”然后走了。", "他说“你好”就走了"),
    ("Why? Because.", "Why? Because!"),
    ("a\tb  c", "a b c"),
    epsilon_pair(),
    ("def f(x): return x+1", "def f(x):\n    return x + 1"),
    ("好的👍", "好的"),
    ("こんにちは世界", "こんにちは"),
    ("ＡＢＣ１２３", "ABC123"),
    ("北京是中华人民共和国的首都，也是全国的政治、文化中心。", "北京是中国的首都。"),
    ("line one\r\nline two", "line one\nline two"),
    ('He asked "why?" twice?”yes', "He asked why twice"),
    ("\n\n开头有空行", "开头有空行\n\n\n结尾也有"),
    ("你好？\n\n再见", "你好？再见"),  # the break after ？ adds a second blank sentence: two empty words
]


@pytest.mark.parametrize("prediction,reference", PAIRS)
def test_equals_llamafactory_per_pair(prediction, reference):
    mine, theirs = score_pair(prediction, reference), llamafactory_scores(prediction, reference)
    assert list(mine) == list(theirs)
    for key in theirs:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_equals_llamafactory_over_the_corpus():
    # scripts/eval_bleu_rouge.py main: sum(scores) / len(scores) per metric
    theirs = [llamafactory_scores(p, r) for p, r in PAIRS]
    mine = score_corpus([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for key in METRICS:
        assert mine[key] == pytest.approx(sum(s[key] for s in theirs) / len(theirs), abs=1e-9), key


def test_the_pairs_exercise_what_rouge_score_alone_gets_wrong():
    """Plain rouge-score on the jieba tokens (multiset counts, its own F, no sentence split) differs
    from LLaMA-Factory on some of PAIRS for each ROUGE: the equality tests above can fail."""
    import jieba
    from rouge_score import rouge_scorer

    class Tokens:
        def tokenize(self, text):
            return " ".join(jieba.cut(text)).split()

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Tokens())
    differs = set()
    for prediction, reference in PAIRS:
        if not prediction.split() or not reference.split():
            continue
        theirs = llamafactory_scores(prediction, reference)
        plain = scorer.score(reference, prediction)
        for key, rouge_type in (("rouge-1", "rouge1"), ("rouge-2", "rouge2"), ("rouge-l", "rougeL")):
            if abs(round(plain[rouge_type].fmeasure * 100, 4) - theirs[key]) > 1e-9:
                differs.add(key)
    assert differs == {"rouge-1", "rouge-2", "rouge-l"}
