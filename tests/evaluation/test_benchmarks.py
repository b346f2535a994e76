"""airtune.evaluation.benchmarks: the MMLU, C-Eval, CMMLU and JSON layouts, prompts, answers, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airtune.evaluation.benchmarks import (
    BenchmarkError,
    Question,
    accuracy,
    choice_scores_to_answer,
    messages_of,
    prompt_of,
    read_benchmark,
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding, newline="")
    return path


def q(subject="algebra", question="1 + 1 =", choices=("1", "2", "3", "4"), answer="B") -> Question:
    return Question(subject, question, tuple(choices), answer)


# ------------------------------------------------------------------------------------- layouts


def test_mmlu_csv_without_header(tmp_path):
    path = write(tmp_path / "abstract_algebra_test.csv",
                 'Find the degree of Q(sqrt(2)) over Q.,0,2,4,6,B\n'
                 '"Which is a group, under addition?","The integers","The naturals",'
                 '"Odd integers","Primes",A\n'
                 '"A question\nover two lines",a,b,c,d, D \n')
    questions = read_benchmark([path])
    assert questions == [
        Question("abstract_algebra", "Find the degree of Q(sqrt(2)) over Q.", ("0", "2", "4", "6"), "B"),
        Question("abstract_algebra", "Which is a group, under addition?",
                 ("The integers", "The naturals", "Odd integers", "Primes"), "A"),
        Question("abstract_algebra", "A question\nover two lines", ("a", "b", "c", "d"), "D"),
    ]


def test_ceval_csv_with_header_and_explanation(tmp_path):
    path = write(tmp_path / "computer_network_val.csv",
                 "id,question,A,B,C,D,answer,explanation\n"
                 "0,使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____,1,2,3,4,C,"
                 '"1. 每五个连续的1后添加一个0"\n'
                 "1,TCP 属于哪一层？,物理层,数据链路层,网络层,传输层,D,\n")
    questions = read_benchmark([path])
    assert [x.subject for x in questions] == ["computer_network", "computer_network"]
    assert questions[0].question.startswith("使用位填充方法")
    assert questions[0].choices == ("1", "2", "3", "4") and questions[0].answer == "C"
    assert questions[1] == Question("computer_network", "TCP 属于哪一层？", ("物理层", "数据链路层", "网络层", "传输层"), "D")


def test_ceval_dev_without_explanation_column(tmp_path):
    path = write(tmp_path / "law_dev.csv", "id,question,A,B,C,D,answer\n0,问题,甲,乙,丙,丁,A\n")
    assert read_benchmark([path]) == [Question("law", "问题", ("甲", "乙", "丙", "丁"), "A")]


def test_cmmlu_csv_with_unnamed_index_column_and_bom(tmp_path):
    path = write(tmp_path / "agronomy.csv",
                 ",Question,A,B,C,D,Answer\n"
                 "0,下列哪种作物是C4植物？,小麦,水稻,玉米,大豆,C\n"
                 "1,土壤的pH值为7时呈,酸性,中性,碱性,不确定,B\n", encoding="utf-8-sig")
    questions = read_benchmark([path])
    assert questions == [
        Question("agronomy", "下列哪种作物是C4植物？", ("小麦", "水稻", "玉米", "大豆"), "C"),
        Question("agronomy", "土壤的pH值为7时呈", ("酸性", "中性", "碱性", "不确定"), "B"),
    ]


def test_json_array_with_and_without_subject(tmp_path):
    rows = [{"question": "2 + 2 =", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B", "subject": "arithmetic"},
            {"question": "Capital of France?", "A": "Paris", "B": "Rome", "C": "Oslo", "D": 7, "answer": "A"}]
    path = write(tmp_path / "mixed_test.json", json.dumps(rows))
    assert read_benchmark([path]) == [
        Question("arithmetic", "2 + 2 =", ("3", "4", "5", "6"), "B"),
        Question("mixed", "Capital of France?", ("Paris", "Rome", "Oslo", "7"), "A"),
    ]


def test_jsonl_and_json_lines_in_a_json_file(tmp_path):
    line = {"question": "问", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "D"}
    text = json.dumps(line, ensure_ascii=False) + "\n\n" + json.dumps(line | {"subject": "物理"}, ensure_ascii=False) + "\n"
    jsonl = write(tmp_path / "chem_dev.jsonl", text)
    json_lines = write(tmp_path / "bio.json", text)
    questions = read_benchmark([jsonl, json_lines])
    assert [x.subject for x in questions] == ["chem", "物理", "bio", "物理"]
    assert {x.answer for x in questions} == {"D"}


def test_files_are_read_in_order_and_subjects_strip_only_the_split(tmp_path):
    a = write(tmp_path / "high_school_biology_test.csv", "q1,a,b,c,d,A\n")
    b = write(tmp_path / "test_taking_val.csv", "q2,a,b,c,d,B\n")
    c = write(tmp_path / "dev_tools.csv", "q3,a,b,c,d,C\n")
    assert [(x.subject, x.question) for x in read_benchmark([str(a), b, c])] == [
        ("high_school_biology", "q1"), ("test_taking", "q2"), ("dev_tools", "q3")]


def test_question_is_frozen():
    with pytest.raises(AttributeError):
        q().answer = "C"


# ----------------------------------------------------------------------------------- bad files


def bad(path: Path) -> str:
    with pytest.raises(BenchmarkError) as excinfo:
        read_benchmark([path])
    message = str(excinfo.value)
    assert message.startswith(str(path) + ": ")
    assert "\n" not in message and "Traceback" not in message
    return message


def test_answer_not_a_letter(tmp_path):
    path = write(tmp_path / "x_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,d,E\n")
    assert bad(path) == f"{path}: row 2: answer: 'E' is not one of A, B, C, D"


def test_answer_not_a_letter_in_a_header_file_counts_data_rows(tmp_path):
    path = write(tmp_path / "x_val.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,b\n")
    assert bad(path) == f"{path}: row 1: answer: 'b' is not one of A, B, C, D"


def test_missing_column_names_what_a_header_needs(tmp_path):
    path = write(tmp_path / "x.csv", ",Question,A,B,C,Answer\n0,q,a,b,c,A\n")
    message = bad(path)
    assert message.startswith(f"{path}: header: no column 'D'; expected a header naming question, A, B, C, D and answer")
    assert "CMMLU: ,Question,A,B,C,D,Answer" in message


def test_ceval_test_split_has_no_answers(tmp_path):
    path = write(tmp_path / "law_test.csv", "id,question,A,B,C,D\n0,q,a,b,c,d\n")
    assert "no column 'answer' (C-Eval's test split has no answers: evaluate on its val split)" in bad(path)


def test_mmlu_row_with_wrong_column_count(tmp_path):
    path = write(tmp_path / "x_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,B\n")
    assert bad(path) == (f"{path}: row 2: 5 columns; an MMLU file has no header and six columns: "
                         "question,A,B,C,D,answer")


def test_header_row_with_wrong_column_count(tmp_path):
    path = write(tmp_path / "x_val.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A,extra\n")
    assert bad(path) == f"{path}: row 1: 8 columns; the header has 7 columns"


@pytest.mark.parametrize("name,text", [("empty_test.csv", ""), ("blank.csv", "\n \n"), ("empty.json", ""),
                                       ("empty.jsonl", "\n\n"), ("array.json", "[]")])
def test_empty_file(tmp_path, name, text):
    path = write(tmp_path / name, text)
    message = bad(path)
    assert f"{path}: the file is empty; expected " in message
    assert ("question,A,B,C,D,answer" in message) if name.endswith(".csv") else ("keys question, A, B, C, D, answer" in message)


def test_header_without_questions(tmp_path):
    path = write(tmp_path / "x_val.csv", "id,question,A,B,C,D,answer,explanation\n")
    assert bad(path) == f"{path}: a header but no questions"


def test_empty_question(tmp_path):
    path = write(tmp_path / "x_test.csv", " ,a,b,c,d,A\n")
    assert bad(path) == f"{path}: row 1: question: empty; every row needs the question's text"


def test_jsonl_line_that_does_not_parse(tmp_path):
    good = json.dumps({"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "A"})
    path = write(tmp_path / "x.jsonl", good + "\n\n{\"question\": \n")
    assert bad(path).startswith(f"{path}: row 3: not valid JSON: Expecting value at column ")


def test_json_that_does_not_parse(tmp_path):
    path = write(tmp_path / "x.json", '[{"question": "q",\n "A": }]')
    assert bad(path) == f"{path}: not valid JSON: Expecting value at line 2 column 7"


def test_json_not_an_array(tmp_path):
    path = write(tmp_path / "x.json", '{"question": "q"}')
    assert bad(path) == f"{path}: expected a JSON array of questions (or JSON Lines), found a dict"


def test_json_row_not_an_object(tmp_path):
    path = write(tmp_path / "x.json", '[["q", "a", "b", "c", "d", "A"]]')
    assert bad(path) == (f"{path}: row 1: found a list; expected an object with the keys question, A, B, C, D, "
                         "answer (subject optional)")


def test_json_row_missing_a_key(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps({"question": "q", "A": "a", "B": "b", "C": "c", "answer": "A"}))
    assert bad(path) == (f"{path}: row 1: D: missing; expected an object with the keys question, A, B, C, D, "
                         "answer (subject optional)")


def test_json_choice_not_text(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps({"question": "q", "A": None, "B": "b", "C": "c", "D": "d",
                                                   "answer": "A"}))
    assert bad(path) == f"{path}: row 1: A: expected a string, found NoneType"


def test_not_utf8(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_bytes("问题,甲,乙,丙,丁,A\n".encode("gbk"))
    assert bad(path) == f"{path}: not UTF-8 text (byte 0); save the file as UTF-8"


def test_csv_the_csv_module_rejects(tmp_path):
    path = write(tmp_path / "x_test.csv", "q" * 200_000 + ",a,b,c,d,A\n")  # over csv's field size limit
    assert bad(path) == f"{path}: not a valid CSV file (field larger than field limit (131072))"


def test_unsupported_file_type(tmp_path):
    path = write(tmp_path / "x.xlsx", "")
    assert bad(path) == (f"{path}: unsupported file type '.xlsx'; accepted: .csv (MMLU, C-Eval, CMMLU layouts), "
                         ".json, .jsonl")


def test_missing_file(tmp_path):
    assert bad(tmp_path / "nowhere_test.csv") == f"{tmp_path / 'nowhere_test.csv'}: cannot be read: No such file or directory"


# --------------------------------------------------------------------------------------- prompts


ALGEBRA = q("abstract_algebra", "Find the order of 2 in Z_5.", ("1", "2", "4", "5"), "C")
SHOT = q("abstract_algebra", "Is Z_4 cyclic?", ("Yes", "No", "Only under multiplication", "Undefined"), "A")
LAW = q("law", "法律的本质是什么？", ("甲", "乙", "丙", "丁"), "B")


def test_english_prompt_zero_shot():
    assert prompt_of(ALGEBRA) == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find the order of 2 in Z_5.\nA. 1\nB. 2\nC. 4\nD. 5\nAnswer:")


def test_english_prompt_few_shot():
    assert prompt_of(ALGEBRA, [SHOT]) == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Is Z_4 cyclic?\nA. Yes\nB. No\nC. Only under multiplication\nD. Undefined\nAnswer: A\n\n"
        "Find the order of 2 in Z_5.\nA. 1\nB. 2\nC. 4\nD. 5\nAnswer:")


def test_chinese_prompt_and_subject_name():
    assert prompt_of(LAW, lang="zh", subject="法学") == (
        "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n法律的本质是什么？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：")
    assert prompt_of(LAW, [LAW], lang="zh").startswith(
        "以下是中国关于law考试的单项选择题，请选出其中的正确答案。\n\n法律的本质是什么？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：B\n\n法律")


def test_unknown_language():
    with pytest.raises(ValueError, match="lang 'fr': expected one of en, zh"):
        prompt_of(ALGEBRA, lang="fr")


def llamafactory_messages(target: dict, support_set: list[dict], subject_name: str, lang: str) -> list[dict]:
    """LLaMA-Factory v0.9.4's EvalTemplate.format_example (src/llamafactory/eval/template.py), re-written."""
    system, choice, answer = {
        "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n",
               "\n{choice}. {content}", "\nAnswer:"),
        "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n{choice}. {content}", "\n答案："),
    }[lang]

    def parse(example):
        candidates = [choice.format(choice=ch, content=example[ch]) for ch in ["A", "B", "C", "D"] if ch in example]
        return "".join([example["question"]] + candidates + [answer]), example["answer"]

    messages = []
    for example in support_set:
        prompt, response = parse(example)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    prompt, response = parse(target)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    messages[0]["content"] = system.format(subject=subject_name) + messages[0]["content"]
    return messages


def as_example(question: Question) -> dict:
    return {"question": question.question, **dict(zip("ABCD", question.choices)), "answer": question.answer}


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("shots", [0, 1, 2])
def test_messages_equal_llamafactory_without_the_scored_answer(lang, shots):
    support = [SHOT, LAW][:shots]
    theirs = llamafactory_messages(as_example(ALGEBRA), [as_example(s) for s in support], "abstract algebra", lang)
    assert messages_of(ALGEBRA, support, lang=lang) == theirs[:-1]
    if shots == 0:
        assert prompt_of(ALGEBRA, lang=lang) == theirs[0]["content"]


# ------------------------------------------------------------------------------ answers, accuracy


@pytest.mark.parametrize("scores,answer", [
    ({"A": -2.5, "B": -0.3, "C": -1.0, "D": -4.0}, "B"),
    ({"A": 0.1, "B": 0.2, "C": 0.3, "D": 0.4}, "D"),
    ({"D": 1.0, "C": 1.0, "B": 0.0, "A": 0.0}, "C"),  # tie between C and D: the first letter
    ({"A": 5, "B": 5, "C": 5, "D": 5}, "A"),
    ({"A": float("-inf"), "B": -1e9, "C": float("-inf"), "D": float("-inf"), "E": 10.0}, "B"),  # only A-D count
])
def test_choice_scores_to_answer(scores, answer):
    assert choice_scores_to_answer(scores) == answer


def test_choice_scores_need_all_four_letters():
    with pytest.raises(ValueError, match="no score for C, D"):
        choice_scores_to_answer({"A": 1.0, "B": 2.0})
    with pytest.raises(ValueError, match="NaN"):
        choice_scores_to_answer({"A": 1.0, "B": float("nan"), "C": 0.0, "D": 0.0})


def test_accuracy_per_subject_and_overall():
    questions = [q("b", answer="A"), q("a", answer="B"), q("a", answer="C"), q("b", answer="D"), q("a", answer="A")]
    predicted = ["A", "B", "D", "A", "D"]
    # subject a: B right, C wrong, A wrong -> 1/3; subject b: A right, D wrong -> 1/2; overall 2/5.
    # As LLaMA-Factory's 100 * np.mean(corrects): 100 * (1 / 3) = 33.33333333333333, not 100 / 3.
    result = accuracy(questions, predicted)
    assert list(result) == ["a", "b", "overall"]
    assert result == {"a": 100 * (1 / 3), "b": 50.0, "overall": 40.0}
    assert result["a"] != 100 / 3


def test_accuracy_of_nothing_and_mismatched_lengths():
    assert accuracy([], []) == {}
    with pytest.raises(ValueError, match="2 questions but 1 predicted answers"):
        accuracy([q(), q()], ["A"])
    with pytest.raises(ValueError, match="'overall'"):
        accuracy([q("overall")], ["B"])


def test_read_then_score(tmp_path):
    path = write(tmp_path / "astronomy_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,d,B\nq3,a,b,c,d,C\nq4,a,b,c,d,D\n")
    questions = read_benchmark([path])
    predicted = [choice_scores_to_answer({"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}) for _ in questions]
    assert accuracy(questions, predicted) == {"astronomy": 25.0, "overall": 25.0}
