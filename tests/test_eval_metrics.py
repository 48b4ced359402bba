"""Evaluation metrics: VQA accuracy and its normalisation, post-processing, the OK-VQA stemmer and
CIDEr; hand-computed cases, then upstream open-flamingo 2.0.1 (and pycocoevalcap) as oracles."""

import json
import random
import shutil

import fake_nltk
import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from conftest import require
from open_flamingo.eval.classification import roc_auc
from open_flamingo.eval.coco_metric import compute_cider, postprocess_captioning_generation
from open_flamingo.eval.ok_vqa_utils import (
    MANUAL_STEMS,
    MissingNLTKData,
    OKVQAStemmer,
    postprocess_ok_vqa_generation,
)
from open_flamingo.eval.vqa_metric import (
    compute_vqa_accuracy,
    normalize_answer,
    postprocess_vqa_generation,
    question_accuracy,
    strip_punctuation,
)

# ---------------------------------------------------------------- VQA answer normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only zero..ten (and none) are mapped
        ("a dog", "dog"),
        ("The Dog", "dog"),
        ("an apple a day", "apple day"),
        ("dont know", "don't know"),
        ("Its hes", "its he's"),  # "its" is not in the table, "hes" is
        ("yes, sir", "yes sir"),  # the comma touches a space: deleted
        ("a,b", "b"),  # no space, no digit-comma: replaced by a space; then "a" is an article
        ("black/white", "black white"),
        ("black / white", "black white"),  # touches a space: deleted, spaces collapse
        ("1,000", "1000"),  # digit-comma-digit: every mark is deleted
        ("1,000 (approx)", "1000 approx"),
        ("2.5", "2.5"),  # a period followed by a digit stays
        ("st. louis", "st louis"),
        ("end.", "end"),
        ("5.x", "5x"),  # the reference's look-behind is mistyped: a digit before does not help
        ("3.14.", "3.14"),
        ("  yes\n\tno ", "yes no"),
        ("it's", "it's"),  # apostrophes and colons are kept
        ("10:30", "10:30"),
        ("ow's'at", "'ow's'at"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_removal_stops_after_32():
    # The reference passes re.UNICODE (32) as `count`: only the first 32 periods go.
    assert strip_punctuation("." * 40 + "x") == "." * 8 + "x"
    assert strip_punctuation("a." * 33) == "a" * 32 + "a."


# ---------------------------------------------------------------- VQA accuracy by hand


def answers(*pairs, ids=True, **extra):
    """answers(("dog", 3), ("cat", 7)) -> 10 annotation answer dicts."""
    words = [word for word, count in pairs for _ in range(count)]
    assert len(words) == 10
    return [
        {"answer": word, **({"answer_id": i + 1} if ids else {}), **extra}
        for i, word in enumerate(words)
    ]


@pytest.mark.parametrize("rule", ["upstream", "official"])
@pytest.mark.parametrize(
    "pairs, prediction, expected",
    [
        # mean over the 10 annotators left out in turn of min(1, matches among the other 9 / 3)
        ((("dog", 10),), "dog", 1.0),
        ((("dog", 4), ("cat", 6)), "dog", 1.0),  # 3 or 4 others match everywhere
        ((("dog", 3), ("cat", 7)), "dog", (3 * 2 / 3 + 7 * 1) / 10),  # 0.9
        ((("dog", 2), ("cat", 8)), "dog", (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
        ((("dog", 1), ("cat", 9)), "dog", (1 * 0 + 9 * 1 / 3) / 10),  # 0.3
        ((("dog", 3), ("cat", 7)), "bird", 0.0),
        ((("dog", 3), ("cat", 7)), " Dog.\n", 0.9),  # the prediction is always normalised
    ],
)
def test_question_accuracy_by_hand(rule, pairs, prediction, expected):
    assert question_accuracy(prediction, answers(*pairs), rule) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize(
    "gt, prediction, upstream, official",
    [
        # Upstream normalises the ground truth in full; official leaves identical answers alone...
        (answers(("two", 10)), "2", 1.0, 0.0),
        (answers(("Dog", 10)), "dog", 1.0, 0.0),
        (answers(("dog.", 10)), "dog", 1.0, 0.0),
        # ...and, when annotators disagree, only handles their punctuation.
        (answers(("dog.", 3), ("cat", 7)), "dog", 0.9, 0.9),
        (answers(("two", 4), ("three", 6)), "2", 1.0, 0.0),
        (answers(("a dog", 3), ("cat", 7)), "dog", 0.9, 0.0),
        # Without answer_id, upstream's leave-one-out drops every equal dict: leaving out one of
        # the 3 "dog"s leaves no "dog" (0), leaving out a "cat" leaves 3 (1): 7/10.
        (answers(("dog", 3), ("cat", 7), ids=False), "dog", 0.7, 0.9),
        # ... equal after normalisation counts ("a dog" == "dog"); a different field does not.
        (answers(("a dog", 1), ("dog", 2), ("cat", 7), ids=False), "dog", 0.7, 0.6),
        # 1 plain "dog", 2 "dog"s with answer_confidence "maybe", 7 "cat", no answer_id: leaving
        # out the plain dog leaves 2 matches (2/3), leaving out a "maybe" dog removes both (1/3).
        (
            [{"answer": "dog"}]
            + [{"answer": "dog", "answer_confidence": "maybe"}] * 2
            + [{"answer": "cat"}] * 7,
            "dog",
            (2 / 3 + 2 * 1 / 3 + 7 * 1) / 10,
            0.9,
        ),
    ],
)
def test_upstream_and_official_rules_differ(gt, prediction, upstream, official):
    assert question_accuracy(prediction, gt, "upstream") == pytest.approx(upstream, abs=1e-12)
    assert question_accuracy(prediction, gt, "official") == pytest.approx(official, abs=1e-12)


def write_vqa(tmp_path, questions, results, name="vqa"):
    """questions: {question_id: answer dicts}; results: [(question_id, answer)] -> 3 paths."""
    folder = tmp_path / name
    folder.mkdir()
    info = dict(info={}, task_type="Open-Ended", data_type="mscoco", license={})
    question_file = dict(
        info, data_subtype="val2014", questions=[{"question_id": q, "image_id": q, "question": "?"} for q in questions]
    )  # fmt: skip
    annotation_file = dict(
        info,
        annotations=[
            {"question_id": q, "image_id": q, "question_type": "what", "answer_type": "other",
             "answers": gt}
            for q, gt in questions.items()
        ],
    )  # fmt: skip
    result_list = [{"question_id": q, "answer": a} for q, a in results]
    paths = [folder / f for f in ("results.json", "questions.json", "annotations.json")]
    for path, content in zip(paths, (result_list, question_file, annotation_file), strict=True):
        path.write_text(json.dumps(content))
    return [str(p) for p in paths]


def test_compute_vqa_accuracy_files(tmp_path):
    questions = {
        1: answers(("dog", 3), ("cat", 7)),  # "dog": 0.9
        2: answers(("two", 1), ("three", 9)),  # "2": 0.3
        3: answers(("red", 10)),
    }
    paths = write_vqa(tmp_path, questions, [(1, "dog"), (2, "2"), (3, "blue")], "a")
    assert compute_vqa_accuracy(*paths) == round(100 * (0.9 + 0.3 + 0.0) / 3, 2) == 40.0
    # A repeated question is scored at each occurrence, with its last answer (as upstream).
    paths = write_vqa(tmp_path, questions, [(1, "cat"), (3, "red"), (1, "dog")], "b")
    assert compute_vqa_accuracy(*paths) == round(100 * (0.9 + 1.0 + 0.9) / 3, 2) == 93.33
    # "two" -> "2" in the prediction; the ground truth's "two" only under the upstream rule.
    paths = write_vqa(tmp_path, questions, [(2, "two")], "c")
    assert compute_vqa_accuracy(*paths, rule="upstream") == 30.0
    assert compute_vqa_accuracy(*paths, rule="official") == 0.0
    with pytest.raises(ValueError, match="unknown VQA accuracy rule"):
        compute_vqa_accuracy(*paths, rule="strict")
    paths = write_vqa(tmp_path, questions, [(1, "dog"), (7, "cat")], "d")
    with pytest.raises(ValueError, match="question_id 7 has no annotation"):
        compute_vqa_accuracy(*paths)


# ---------------------------------------------------------------- post-processing by hand


def test_postprocessing_by_hand():
    assert postprocess_vqa_generation(" yes, it is. Question: what?") == " yes"
    assert postprocess_vqa_generation("blue Short answer: red") == "blue "
    assert postprocess_vqa_generation("2 Answer") == "2 "
    assert postprocess_vqa_generation("red,white") == "red,white"  # only ", " cuts
    assert postprocess_captioning_generation("A dog.\nOutput: a cat") == "A dog.\n"
    assert postprocess_captioning_generation("no cut here") == "no cut here"


# ---------------------------------------------------------------- OK-VQA stemmer


@pytest.fixture
def fake_stemmer(nltk_data):
    return OKVQAStemmer(tokenize=fake_nltk.tokenize, pos_tag=fake_nltk.pos_tag)


def test_stemmer_rules(fake_stemmer):
    tag = fake_stemmer.stem_word
    assert tag("christmas", "NNS") == "christmas"  # manual table first
    assert tag("riding", "VBG") == "ride"
    assert tag("swimming", "NN") == "swim"  # WordNet verb lemma for any -ing word
    assert tag("boxing", "NN") == "box"
    assert tag("ceiling", "NN") == "ceiling"  # not a verb form in WordNet: unchanged
    assert tag("dogs", "NNS") == "dog"  # inflection.singularize for plural nouns
    assert tag("buses", "NNPS") == "bus"
    assert tag("dogs", "VBZ") == "dogs"  # not a plural noun: unchanged
    verbs = OKVQAStemmer(tokenize=str.split, pos_tag=lambda words: [(w, "VBZ") for w in words])
    assert verbs.stem("two dogs riding") == "two dogs ride"
    assert OKVQAStemmer(
        tokenize=str.split, pos_tag=lambda words: [(w, "NNS") for w in words]
    ).stem("two dogs running") == "two dog run"  # fmt: skip
    stemmer = OKVQAStemmer(
        tokenize=str.split, pos_tag=lambda words: [(w, "NN") for w in words], lemmatize_verb=str.upper
    )  # fmt: skip
    assert postprocess_ok_vqa_generation("boxing, maybe Question:", stemmer) == "BOXING"


def test_missing_nltk_data_names_the_command(tmp_path, monkeypatch):
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setenv("NLTK_DATA", str(empty))
    monkeypatch.setattr("nltk.data.path", [str(empty)])
    with pytest.raises(MissingNLTKData) as error:
        OKVQAStemmer()
    command = (
        "python -c \"import nltk; nltk.download('punkt_tab'); "
        "nltk.download('averaged_perceptron_tagger_eng'); nltk.download('wordnet')\""
    )
    assert command in str(error.value)
    assert str(empty) in str(error.value)
    with pytest.raises(MissingNLTKData) as error:
        OKVQAStemmer(tokenize=fake_nltk.tokenize, pos_tag=fake_nltk.pos_tag)
    assert "python -c \"import nltk; nltk.download('wordnet')\"" in str(error.value)
    assert "make nltk-data" in str(error.value)
    with pytest.raises(MissingNLTKData, match="punkt_tab"):
        postprocess_ok_vqa_generation("dogs")
    # Everything injected: no nltk data needed.
    assert OKVQAStemmer(str.split, lambda w: [(x, "NN") for x in w], str.upper).stem("a b") == "a b"


# ---------------------------------------------------------------- upstream as the oracle

# Answer variants grouped so that random draws often match after normalisation.
VARIANT_GROUPS = [
    ["dog", "a dog", "the dog", "Dog", "dog.", "dog!", " dog\n", "dogs"],
    ["two", "2", "Two.", "two dogs", "2 dogs", "the two"],
    ["none", "0", "zero", "None!", "no"],
    ["dont know", "don't know", "dont  know?", "do not know"],
    ["1,000", "1000", "1, 000", "one thousand", "1,000.5"],
    ["2.5", "2.5.", "two.5", "2,5"],
    ["st. louis", "st louis", "St. Louis!", "saint louis"],
    ["black/white", "black white", "black-white", "black / white", "black and white"],
    ["red, white", "red white", "red,white", "red\twhite", "(red) white"],
    ["hes", "he's", "hes happy", "he is"],
    ["yes", "yes.", "Yes", "yes!", "yeah"],
    ["an apple", "apple", "the apple.", "apples"],
    ["ten", "10", "10.", "ten!"],
    ["ow's'at", "'ow's'at", "owsat", "oclock", "o'clock"],
    ["a.b.c", "abc", "a b c", "a.b.c."],
    ["x" + "." * 35, "x" + "." * 3, "x"],
]


def random_vqa_case(rng):
    """10 ground-truth answer dicts and a prediction drawn from related variants."""
    group = rng.choice(VARIANT_GROUPS)
    pool = group + rng.choice(VARIANT_GROUPS)[:2]
    with_ids = rng.random() < 0.5
    gt = []
    for i in range(10):
        entry = {"answer": rng.choice(pool)}
        if with_ids:
            entry["answer_id"] = i + 1
        if rng.random() < 0.3:
            entry["answer_confidence"] = rng.choice(["yes", "maybe"])
        gt.append(entry)
    return gt, rng.choice(pool + ["cat"])


def test_vqa_accuracy_matches_upstream(tmp_path, run_upstream):
    rng = random.Random(0)
    cases = [random_vqa_case(rng) for _ in range(300)]
    jobs = []
    for index, (gt, prediction) in enumerate(cases):  # one file per question
        jobs.append(write_vqa(tmp_path, {index: gt}, [(index, prediction)], f"q{index}"))
    for file_index in range(5):  # whole files, with repeated question ids
        ids = rng.sample(range(len(cases)), 40)
        results = [(q, cases[q][1]) for q in ids] + [(q, rng.choice(["dog", "2", "yes"])) for q in ids[:5]]  # fmt: skip
        questions = {q: cases[q][0] for q in ids}
        jobs.append(write_vqa(tmp_path, questions, results, f"file{file_index}"))
    expected = run_upstream({"vqa": jobs})["vqa"]
    ours = [compute_vqa_accuracy(*paths) for paths in jobs]
    assert len(ours) == len(expected) == 305
    for paths, mine, theirs in zip(jobs, ours, expected, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-9), paths[0]
    # The cases exercise the scoring: many distinct accuracies, not all 0 or 100.
    assert len(set(ours[:300])) >= 8
    # ...and the rules really differ on them.
    official = [compute_vqa_accuracy(*paths, rule="official") for paths in jobs[:300]]
    assert sum(a != b for a, b in zip(ours, official, strict=False)) >= 30


def random_text(rng, pieces, length):
    return "".join(rng.choice(pieces) for _ in range(length))


def test_postprocessing_matches_upstream(run_upstream):
    rng = random.Random(1)
    pieces = [
        "Question", "Answer", "Short", "Output", "Quest", "Answ", "Outp", "short", "answer",
        ", ", ",", " ", ":", "\n", ".", "yes", "a dog", "two", "Q", "A", "S", "O", "utput",
    ]  # fmt: skip
    texts = [random_text(rng, pieces, rng.randint(0, 12)) for _ in range(400)]
    expected = run_upstream({"postprocess_vqa": texts, "postprocess_caption": texts})
    assert [postprocess_vqa_generation(t) for t in texts] == expected["postprocess_vqa"]
    assert [postprocess_captioning_generation(t) for t in texts] == expected["postprocess_caption"]
    assert sum(postprocess_vqa_generation(t) != t for t in texts) >= 100  # cuts happened


def test_ok_vqa_stemmer_matches_upstream(run_upstream, fake_stemmer):
    rng = random.Random(2)
    words = sorted(MANUAL_STEMS) + [
        "running", "swimming", "being", "ceiling", "thing", "king", "sing", "boxing", "skiing",
        "dogs", "cats", "buses", "mice", "children", "glasses", "leaves", "wolves", "news",
        "bus", "dog", "red", "yes", "men's", "two", "people", "species", "skis", "octopi",
    ]  # fmt: skip
    separators = [" ", " ", " ", ", ", ". ", "'s ", "-"]
    phrases = [w for w in words] + [
        "".join(rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(1, 4)))
        for _ in range(300)
    ]
    generations = [rng.choice(phrases) + rng.choice(["", " Question: x", ", no", "Answer:"]) for _ in range(200)]  # fmt: skip
    expected = run_upstream({"stem": phrases, "postprocess_ok_vqa": generations})
    ours = [fake_stemmer.stem(p) for p in phrases]
    assert ours == expected["stem"]
    assert [postprocess_ok_vqa_generation(g, fake_stemmer) for g in generations] == expected[
        "postprocess_ok_vqa"
    ]
    assert sum(a != b for a, b in zip(ours, phrases, strict=True)) >= 150  # words were stemmed


# ---------------------------------------------------------------- CIDEr

REFERENCES = {
    11: [
        "A brown dog runs across the green grass.",
        "a dog running on a lawn",
        "The dog is running in a park, chasing a ball.",
        "A puppy sprints over the grass",
        "brown dog playing outside on grass",
    ],
    7: [
        "Two cats are sleeping on a red sofa.",
        "two cats asleep on the couch",
        "A pair of kittens nap on a red couch.",
        "Cats lying on a sofa in a living room",
        "two sleeping cats",
    ],
    3: [
        "A man rides a bicycle down a city street.",
        "a person cycling on the road",
        "Man on a bike in traffic.",
        "A cyclist riding through a busy street",
        "a man riding his bike in the city",
    ],
    42: [
        "A plate of pasta with tomato sauce.",
        "spaghetti on a white plate",
        "A bowl of noodles with red sauce",
        "Pasta dinner served on a table.",
        "a plate of spaghetti and meatballs",
    ],
}


def write_captions(folder, references, results):
    folder.mkdir(exist_ok=True)
    annotations = {
        "images": [{"id": image_id} for image_id in references],
        "annotations": [
            {"image_id": image_id, "id": 100 * image_id + i, "caption": caption}
            for image_id, captions in references.items()
            for i, caption in enumerate(captions)
        ],
    }
    (folder / "annotations.json").write_text(json.dumps(annotations))
    (folder / "results.json").write_text(
        json.dumps([{"image_id": k, "caption": v} for k, v in results.items()])
    )
    return str(folder / "results.json"), str(folder / "annotations.json")


@pytest.fixture
def java():
    require(shutil.which("java") is not None, "Java missing: apt-get install default-jre-headless")


def test_cider_matches_pycocoevalcap(tmp_path, java):
    results = {  # results in another order than the annotations, one image left out
        42: "spaghetti with tomato sauce on a plate",
        11: "A brown dog running on the grass.",
        3: "a man riding a bike on a street",
    }
    ours = compute_cider(*write_captions(tmp_path, REFERENCES, results))
    image_ids = [i for i in REFERENCES if i in results]  # COCOEvalCap: annotation order
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in REFERENCES[i]] for i in image_ids})
    res = tokenizer.tokenize({i: [{"caption": results[i]}] for i in image_ids})
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert ours["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    assert [ours[f"Bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-12)
    assert 0.5 < ours["CIDEr"] < 5  # plausible captions, neither 0 nor a perfect 10


def test_cider_matches_upstream(tmp_path, java, run_upstream):
    rng = random.Random(3)
    vocabulary = " ".join(c for captions in REFERENCES.values() for c in captions).split()
    jobs, ours = [], []
    for index in range(3):
        chosen = rng.sample(sorted(REFERENCES), 3)
        results = {i: " ".join(rng.sample(vocabulary, rng.randint(3, 10))) for i in chosen}
        results[chosen[0]] = REFERENCES[chosen[0]][index]  # one candidate equal to a reference
        paths = write_captions(tmp_path / f"set{index}", REFERENCES, results)
        jobs.append(list(paths))
        ours.append(compute_cider(*paths))
    expected = run_upstream({"cider": jobs})["cider"]
    for mine, theirs in zip(ours, expected, strict=True):
        for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_cider_properties_and_errors(tmp_path, java):
    # Every reference of an image is the same sentence: a candidate equal to it has cosine
    # similarity 1 for each n-gram order, so CIDEr-D = 10 * 1 exactly; unrelated words score 0.
    references = {
        1: ["a black dog sleeps on the porch"] * 5,
        2: ["two kids fly a kite at the beach"] * 5,
        3: ["a chef cuts vegetables in a kitchen"] * 5,
    }
    same = {i: captions[0] for i, captions in references.items()}
    unrelated = {i: "purple elephants juggle quietly tonight" for i in references}
    high = compute_cider(*write_captions(tmp_path / "same", references, same))
    low = compute_cider(*write_captions(tmp_path / "unrelated", references, unrelated))
    assert high["CIDEr"] == pytest.approx(10.0, abs=1e-9)
    assert low["CIDEr"] == 0.0
    assert high["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and high["ROUGE_L"] == pytest.approx(1.0)

    paths = write_captions(tmp_path / "unknown", references, {1: "a dog", 99: "a cat"})
    with pytest.raises(ValueError, match=r"no reference captions .* e\.g\. \[99\]"):
        compute_cider(*paths)
    results = tmp_path / "duplicate.json"
    results.write_text(
        json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    )
    with pytest.raises(ValueError, match="image_id 1 has more than one caption"):
        compute_cider(results, paths[1])


def test_ptb_tokenizer_prerequisites_have_clear_errors(monkeypatch):
    from open_flamingo.eval import coco_metric

    monkeypatch.setattr(coco_metric.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install default-jre-headless"):
        coco_metric.check_ptb_tokenizer()
    monkeypatch.setattr(coco_metric.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(coco_metric.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match="temporary file beside its module.*not writable"):
        coco_metric.check_ptb_tokenizer()


# ---------------------------------------------------------------- ROC AUC (Hateful Memes)
def mann_whitney_auc(labels, scores):
    """The reference: the fraction of (positive, negative) pairs ranked right, ties half."""
    positives = [s for label, s in zip(labels, scores, strict=True) if label]
    negatives = [s for label, s in zip(labels, scores, strict=True) if not label]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_roc_auc_by_hand_and_against_the_pair_count():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert roc_auc([1, 0, 1], [0.9, 0.1, 0.2]) == 1.0
    generator = np.random.default_rng(0)
    for _ in range(20):
        labels = generator.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = generator.integers(0, 8, 40) / 8  # many ties
        assert roc_auc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores), abs=1e-12)


def test_roc_auc_of_one_class_is_nan_not_an_error(caplog):
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert "single class" in caplog.text
