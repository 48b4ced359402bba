"""VQA accuracy (VQAv2, OK-VQA, VizWiz, TextVQA) as OpenFlamingo computes it.

An answer scores `min(1, matches / 3)` against each of the ten annotators left out in turn, where
`matches` counts the *other* annotators who gave that answer; the question's score is the mean of
those ten numbers, and the dataset's accuracy is the mean over questions, in percent, rounded to
two decimals.

Before comparing, answers are normalised as the official VQA evaluation does:
whitespace (newlines, tabs) becomes spaces and is stripped; punctuation is removed or turned into
spaces (`strip_punctuation`); the text is lower-cased, number words become digits, articles are
dropped and missing apostrophes of contractions are restored (`normalize_words`).

Two rules are offered (`rule=`), which differ in two places:

* ``"upstream"`` (default) reproduces open_flamingo's `vqa_metric.py`, whose numbers the
  OpenFlamingo papers report:
  - ground-truth answers are always normalised in full (punctuation, digits, articles,
    contractions), like the prediction;
  - leave-one-out removes every ground-truth entry *equal as a whole dict* to the left-out one,
    so entries without an ``answer_id`` that are identical (same answer after normalisation, same
    ``answer_confidence``) are removed together, and the score is min(1, matches/3) over fewer
    remaining annotators.
* ``"official"`` follows the official VQA evaluation (GT-Vision-Lab `vqaEval.py`):
  - ground-truth answers get punctuation handling only, and only when the annotators disagree
    (the released annotations are already normalised); the prediction is normalised in full;
  - leave-one-out removes exactly one annotator. (The official code also compares dicts, which on
    the released files is the same thing, because every answer carries a distinct ``answer_id``.)

Both rules keep two behaviours of the reference code: the period rule removes a period unless a
digit follows (the reference regex meant "unless between digits", but its look-behind is
mistyped), and at most 32 periods are removed per answer (it passes ``re.UNICODE``, which is 32,
as the `count` argument). A question id that occurs twice in the results is scored twice, with
the last answer given for it, as in the reference code.
"""

import re
from collections.abc import Sequence
from pathlib import Path

from .json_files import read_json

RULES = ("upstream", "official")
# Marks that are deleted when they touch a space (or when the text has a digit-comma-digit),
# and otherwise replaced by a space. Periods, apostrophes and colons are handled differently.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # re.UNICODE passed as `count` in the reference code
_WHITESPACE = re.compile(r"[\n\t]")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe -> the official form. Kept as in the official
# table, including its one odd entry (somebody'd -> somebodyd).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip


def clean_whitespace(text: str) -> str:
    """Newlines and tabs become spaces; leading and trailing whitespace is stripped."""
    return _WHITESPACE.sub(" ", text).strip()


def strip_punctuation(text: str) -> str:
    """The official punctuation rule.

    Each mark in `PUNCTUATION` is deleted if it appears next to a space anywhere in `text` (or if
    `text` contains a digit-comma-digit such as "1,000"), and is replaced by a space otherwise:
    "yes, sir" -> "yes sir", "black/white" -> "black white", "1,000" -> "1000". Then periods not
    followed by a digit are deleted (at most 32): "st. louis" -> "st louis", "2.5" stays.
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_words(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions' apostrophes.

    "Two Dogs" -> "2 dogs", "a dog" -> "dog", "dont know" -> "don't know". Words are split on
    whitespace and re-joined with single spaces.
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The full normalisation a predicted answer gets: whitespace, punctuation, then words."""
    return normalize_words(strip_punctuation(clean_whitespace(text)))


def question_accuracy(prediction: str, gt_answers: Sequence[dict], rule: str = "upstream") -> float:
    """Accuracy in [0, 1] of one raw predicted answer against the ground-truth answer dicts.

    `gt_answers` are the annotation's `answers` entries ({"answer": ..., and optionally
    "answer_id", "answer_confidence"}), not yet normalised.
    """
    return _score(normalize_answer(prediction), _normalize_gt(gt_answers, rule), rule)


def _normalize_gt(gt_answers: Sequence[dict], rule: str) -> list[dict]:
    if rule == "upstream":
        return [dict(entry, answer=normalize_answer(entry["answer"])) for entry in gt_answers]
    if rule == "official":
        answers = [dict(entry, answer=clean_whitespace(entry["answer"])) for entry in gt_answers]
        if len({entry["answer"] for entry in answers}) > 1:
            return [dict(entry, answer=strip_punctuation(entry["answer"])) for entry in answers]
        return answers
    raise ValueError(f"unknown VQA accuracy rule {rule!r}; use one of {RULES}")


def _score(prediction: str, answers: list[dict], rule: str) -> float:
    """Mean over annotators of min(1, matches among the others / 3)."""
    if not answers:
        raise ValueError("a question has no ground-truth answers")
    total = 0.0
    for index, left_out in enumerate(answers):
        if rule == "upstream":
            others = [entry for entry in answers if entry != left_out]
        else:
            others = answers[:index] + answers[index + 1 :]
        matches = sum(entry["answer"] == prediction for entry in others)
        total += min(1.0, matches / 3)
    return total / len(answers)


def compute_vqa_accuracy(
    result_json_path: str | Path,
    question_json_path: str | Path,
    annotation_json_path: str | Path,
    rule: str = "upstream",
) -> float:
    """VQA accuracy of a results file, in percent rounded to two decimals (as upstream).

    Args:
        result_json_path: JSON list of {"question_id": int, "answer": str} (answers already
            post-processed, e.g. by `postprocess_vqa_generation`). Every question id must be in
            the annotations; only the questions in the results are scored.
        question_json_path: the VQA questions file ({"questions": [{"question_id", ...}]}); used
            to check that the results refer to known questions.
        annotation_json_path: the VQA annotations file ({"annotations": [{"question_id",
            "answers": [{"answer", ...}, ...]}]}).
        rule: "upstream" (default; open_flamingo's numbers) or "official" (the official VQA
            evaluation's rule). See the module docstring for the difference.

    Returns:
        The accuracy in percent, e.g. 47.03.
    """
    if rule not in RULES:
        raise ValueError(f"unknown VQA accuracy rule {rule!r}; use one of {RULES}")
    results = read_json(result_json_path, "VQA results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"{result_json_path}: expected a non-empty JSON list of results")
    annotations = read_json(annotation_json_path, "VQA annotations")["annotations"]
    gt_answers = {entry["question_id"]: entry["answers"] for entry in annotations}
    questions = read_json(question_json_path, "VQA questions").get("questions")
    known_questions = None if questions is None else {q["question_id"] for q in questions}

    last_answer = {}
    for result in results:
        question_id = result["question_id"]
        if question_id not in gt_answers:
            raise ValueError(
                f"{result_json_path}: question_id {question_id!r} has no annotation in "
                f"{annotation_json_path} (wrong split or annotation file?)"
            )
        if known_questions is not None and question_id not in known_questions:
            raise ValueError(
                f"{result_json_path}: question_id {question_id!r} is not in {question_json_path}"
            )
        last_answer[question_id] = result["answer"]

    # The reference code normalises the ground truth in place, once per scored occurrence of a
    # question, so a question repeated in the results is normalised again; kept for exactness.
    total = 0.0
    for result in results:
        question_id = result["question_id"]
        gt_answers[question_id] = _normalize_gt(gt_answers[question_id], rule)
        prediction = normalize_answer(last_answer[question_id])
        total += _score(prediction, gt_answers[question_id], rule)
    return round(100 * total / len(results), 2)


_VQA_STOP_WORDS = re.compile("Question|Answer|Short")


def postprocess_vqa_generation(text: str) -> str:
    """A generated VQA answer, cut before the model starts a new "Question"/"Answer"/"Short
    answer" turn, then at the first ", " (e.g. " yes, it is Question: ..." -> " yes")."""
    answer = _VQA_STOP_WORDS.split(text, maxsplit=1)[0]
    return answer.split(", ", 1)[0]
