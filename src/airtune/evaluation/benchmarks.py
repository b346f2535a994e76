"""Multiple-choice benchmarks (MMLU, C-Eval, CMMLU layouts) read from the user's own files.

    read_benchmark(files) -> [Question]            every question of every file, in file and row order
    prompt_of(question, few_shot=(), lang="en") -> str    the text the model continues with a letter
    messages_of(question, few_shot=(), lang="en") -> [{"role", "content"}]   LLaMA-Factory's turns
    choice_scores_to_answer({"A": s, ...}) -> "A".."D"    the best-scored letter, ties to the first
    accuracy(questions, predicted) -> {"<subject>": %, ..., "overall": %}

Files (UTF-8, a byte-order mark allowed):

- MMLU: CSV without a header, six columns question,A,B,C,D,answer; `<subject>_test.csv` (or _val, _dev).
- C-Eval: CSV with the header id,question,A,B,C,D,answer,explanation; `<subject>_val.csv`, _dev, _test.
- CMMLU: CSV with the header ,Question,A,B,C,D,Answer (an unnamed index column); `<subject>.csv`.
- JSON (an array of objects, or JSON Lines in a .json file) and JSON Lines (.jsonl): objects with the
  keys question, A, B, C, D, answer and optionally subject.

A CSV file has a header when its first row has a cell named question or answer; header names are matched
without regard to case or surrounding spaces, other columns (id, explanation, the index) are ignored, and
a subject column is honoured. The subject is the row's subject, else the file name without its extension
and a trailing _test/_val/_dev. The answer must be one of A, B, C, D (surrounding spaces are dropped);
question and choice texts are kept as written. Blank CSV rows and blank JSON Lines lines are skipped.

Every bad file raises `BenchmarkError` with one line "<file>: row <n>: <field>: <problem>; <what is
accepted>" (row: the question row of a CSV file, the header not counted; the line of a JSON Lines file;
the element of a JSON array, all 1-based) — never csv's or json's own exception.

The prompt is LLaMA-Factory's evaluation template (src/llamafactory/eval/template.py, v0.9.4):
"en" (MMLU) "The following are multiple choice questions (with answers) about {subject}.\\n\\n" and
"zh" (C-Eval, CMMLU) "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\\n\\n", then the question,
"\\nA. <choice>" for each letter and "\\nAnswer:" (zh "\\n答案："). The templates differ only in those two
strings. The subject shown is `subject` if given (LLaMA-Factory shows the name from the benchmark's
mapping.json, e.g. "abstract algebra" or "计算机网络"), else the question's subject with "_" as spaces.
LLaMA-Factory gives each few-shot example as a user turn (the example's prompt) and an assistant turn
(its letter), the header on the first turn only: `messages_of` returns exactly those turns, for a chat
template. `prompt_of` is the same text as one string: for no examples it is LLaMA-Factory's user turn; an
example is followed by its letter (after a space in en, directly in zh, as the original MMLU and C-Eval
prompts) and a blank line.

`accuracy` is 100 * (correct / questions), per subject and over all questions, as LLaMA-Factory's
evaluator reports it (it groups subjects into categories from mapping.json; here they are not grouped).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("A", "B", "C", "D")
OVERALL = "overall"

_FIELDS = ("question", "A", "B", "C", "D", "answer")
_SPLITS = ("_test", "_val", "_dev")
_SUFFIXES = (".csv", ".json", ".jsonl")
_ACCEPTED_HEADER = ("a header naming question, A, B, C, D and answer (C-Eval: id,question,A,B,C,D,answer,"
                    "explanation; CMMLU: ,Question,A,B,C,D,Answer)")
_ACCEPTED_MMLU = "an MMLU file has no header and six columns: question,A,B,C,D,answer"
_ACCEPTED_JSON = "an object with the keys question, A, B, C, D, answer (subject optional)"


@dataclass(frozen=True)
class _Template:
    header: str  # formatted with subject=
    choice: str  # formatted with letter=, text=
    cue: str  # after the choices; the model's next token is the letter
    shot_gap: str  # between a few-shot example's cue and its letter, in prompt_of


_TEMPLATES = {
    "en": _Template("The following are multiple choice questions (with answers) about {subject}.\n\n",
                    "\n{letter}. {text}", "\nAnswer:", " "),
    "zh": _Template("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
                    "\n{letter}. {text}", "\n答案：", ""),
}


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]  # the texts of A, B, C, D
    answer: str  # "A".."D"


class BenchmarkError(ValueError):
    """A benchmark file cannot be read; the message is one line naming the file, row and field."""


def _fail(path: Path, problem: str, row: int | None = None, field: str | None = None) -> BenchmarkError:
    where = [str(path)] + ([f"row {row}"] if row is not None else []) + ([field] if field else [])
    return BenchmarkError(": ".join(where + [problem]))


# ---------------------------------------------------------------------------- reading


def subject_of(path: Path) -> str:
    """The file's subject: its name without the extension and a trailing _test, _val or _dev."""
    stem = Path(path).stem
    for split in _SPLITS:
        if stem.endswith(split) and len(stem) > len(split):
            return stem[: -len(split)]
    return stem


def _answer(value: object, path: Path, row: int) -> str:
    answer = value.strip() if isinstance(value, str) else value
    if answer not in CHOICES:
        raise _fail(path, f"{value!r} is not one of A, B, C, D", row, "answer")
    return answer


def _text(value: object, path: Path, row: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(path, f"expected a string, found {type(value).__name__}", row, field)
    return str(value)


def _question(record: Mapping[str, object], path: Path, row: int) -> Question:
    """A Question from a record whose keys are question, A, B, C, D, answer and optionally subject."""
    question = _text(record["question"], path, row, "question")
    if not question.strip():
        raise _fail(path, "empty; every row needs the question's text", row, "question")
    choices = tuple(_text(record[letter], path, row, letter) for letter in CHOICES)
    subject = record.get("subject")
    if subject is not None:
        subject = _text(subject, path, row, "subject").strip()
    return Question(subject or subject_of(path), question, choices, _answer(record["answer"], path, row))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read: {exc.strerror or exc}") from None


def _csv_rows(path: Path, text: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise _fail(path, f"not a valid CSV file ({exc})") from None


def _header_columns(header: list[str], path: Path) -> dict[str, int]:
    """Column index of each field (and subject when present), by case-insensitive name."""
    names = [name.strip().lower() for name in header]
    columns = {}
    for field in (*_FIELDS, "subject"):
        if field.lower() in names:
            columns[field] = names.index(field.lower())
        elif field != "subject":
            hint = ""
            if field == "answer" and "id" in names:
                hint = " (C-Eval's test split has no answers: evaluate on its val split)"
            raise _fail(path, f"no column {field!r}{hint}; expected {_ACCEPTED_HEADER}", field="header")
    return columns


def _read_csv(path: Path) -> list[Question]:
    rows = _csv_rows(path, _read_text(path))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise _fail(path, f"the file is empty; expected {_ACCEPTED_HEADER} or {_ACCEPTED_MMLU}")
    first = {cell.strip().lower() for cell in rows[0]}
    if "question" in first or "answer" in first:
        columns = _header_columns(rows[0], path)
        data = rows[1:]
        if not data:
            raise _fail(path, "a header but no questions")
        width, accepted = len(rows[0]), f"the header has {len(rows[0])} columns"
    else:
        columns = {field: i for i, field in enumerate(_FIELDS)}
        data = rows
        width, accepted = len(_FIELDS), _ACCEPTED_MMLU
    questions = []
    for n, row in enumerate(data, start=1):
        if len(row) != width:
            raise _fail(path, f"{len(row)} columns; {accepted}", n)
        questions.append(_question({field: row[i] for field, i in columns.items()}, path, n))
    return questions


def _json_records(path: Path, text: str) -> list[tuple[int, object]]:
    """(row number, value) of each record: the elements of an array, or the lines of JSON Lines."""
    if not text.strip():
        return []
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # more than one value: JSON Lines in a .json file
                raise _fail(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        else:
            if not isinstance(value, list):
                raise _fail(path, f"expected a JSON array of questions (or JSON Lines), found a "
                                  f"{type(value).__name__}")
            return list(enumerate(value, start=1))
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise _fail(path, f"not valid JSON: {exc.msg} at column {exc.colno}; JSON Lines has one "
                                  "object a line", n) from None
    return records


def _read_json(path: Path) -> list[Question]:
    records = _json_records(path, _read_text(path))
    if not records:
        raise _fail(path, f"the file is empty; expected {_ACCEPTED_JSON} per question")
    questions = []
    for n, value in records:
        if not isinstance(value, dict):
            raise _fail(path, f"found a {type(value).__name__}; expected {_ACCEPTED_JSON}", n)
        record = {str(key).strip().lower(): item for key, item in value.items()}
        for field in _FIELDS:
            if field.lower() not in record:
                raise _fail(path, f"missing; expected {_ACCEPTED_JSON}", n, field)
        questions.append(_question({field: record[field.lower()] for field in _FIELDS}
                                   | {"subject": record.get("subject")}, path, n))
    return questions


def read_benchmark(files: Iterable[str | Path]) -> list[Question]:
    """Every question of `files`, in order; `BenchmarkError` for the first bad file or row."""
    questions: list[Question] = []
    for file in files:
        path = Path(file)
        suffix = path.suffix.lower()
        if suffix not in _SUFFIXES:
            raise _fail(path, f"unsupported file type {suffix or '(none)'!r}; accepted: .csv (MMLU, C-Eval, "
                              "CMMLU layouts), .json, .jsonl")
        questions += _read_csv(path) if suffix == ".csv" else _read_json(path)
    return questions


# ---------------------------------------------------------------------------- prompts


def _template(lang: str) -> _Template:
    if lang not in _TEMPLATES:
        raise ValueError(f"lang {lang!r}: expected one of {', '.join(_TEMPLATES)}")
    return _TEMPLATES[lang]


def _body(question: Question, template: _Template) -> str:
    """The question, its choices and the answer cue (LLaMA-Factory's `EvalTemplate._parse_example`)."""
    choices = "".join(template.choice.format(letter=letter, text=text)
                      for letter, text in zip(CHOICES, question.choices))
    return question.question + choices + template.cue


def _header(question: Question, template: _Template, subject: str | None) -> str:
    return template.header.format(subject=subject if subject is not None else question.subject.replace("_", " "))


def messages_of(question: Question, few_shot: Sequence[Question] = (), lang: str = "en",
                subject: str | None = None) -> list[dict[str, str]]:
    """LLaMA-Factory's turns (`EvalTemplate.format_example`): a user turn per example and its letter
    as the assistant's, then the question as the last user turn (LLaMA-Factory also appends the
    question's answer as a final assistant turn, which it does not score: left out here). The
    header, about the question's subject, starts the first turn."""
    template = _template(lang)
    messages = []
    for shot in few_shot:
        messages += [{"role": "user", "content": _body(shot, template)},
                     {"role": "assistant", "content": shot.answer}]
    messages.append({"role": "user", "content": _body(question, template)})
    messages[0]["content"] = _header(question, template, subject) + messages[0]["content"]
    return messages


def prompt_of(question: Question, few_shot: Sequence[Question] = (), lang: str = "en",
              subject: str | None = None) -> str:
    """The prompt as one text: the header, each example with its letter and a blank line, then the
    question ending with the answer cue ("Answer:" or "答案：")."""
    template = _template(lang)
    shots = "".join(_body(shot, template) + template.shot_gap + shot.answer + "\n\n" for shot in few_shot)
    return _header(question, template, subject) + shots + _body(question, template)


# ---------------------------------------------------------------------------- scoring


def choice_scores_to_answer(scores: Mapping[str, float]) -> str:
    """The letter of A-D with the highest score (e.g. a log-likelihood); a tie goes to the earlier letter."""
    missing = [letter for letter in CHOICES if letter not in scores]
    if missing:
        raise ValueError(f"no score for {', '.join(missing)}; expected a score for each of A, B, C, D")
    if any(math.isnan(scores[letter]) for letter in CHOICES):
        raise ValueError(f"a score is NaN: {dict((letter, scores[letter]) for letter in CHOICES)}")
    best = CHOICES[0]
    for letter in CHOICES[1:]:
        if scores[letter] > scores[best]:
            best = letter
    return best


def accuracy(questions: Sequence[Question], predicted: Sequence[str]) -> dict[str, float]:
    """Percent of questions whose predicted letter is the answer: per subject (sorted) and "overall";
    {} when there are no questions."""
    if len(questions) != len(predicted):
        raise ValueError(f"{len(questions)} questions but {len(predicted)} predicted answers")
    totals: dict[str, list[int]] = {}
    for question, answer in zip(questions, predicted):
        if question.subject == OVERALL:
            raise ValueError(f"a subject named {OVERALL!r} would hide the overall accuracy; rename it")
        counts = totals.setdefault(question.subject, [0, 0])
        counts[0] += answer == question.answer
        counts[1] += 1
    if not totals:
        return {}
    result = {subject: 100 * (correct / total) for subject, (correct, total) in sorted(totals.items())}
    correct = sum(counts[0] for counts in totals.values())
    result[OVERALL] = 100 * (correct / len(questions))
    return result
