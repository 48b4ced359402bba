"""Captioning metrics (COCO, Flickr30k): CIDEr-D, BLEU and ROUGE-L, as COCOEvalCap computes them.

Upstream OpenFlamingo calls `pycocoevalcap.eval.COCOEvalCap.evaluate()`, which also runs METEOR
and SPICE; SPICE downloads Stanford CoreNLP on first use and so fails offline. Here the same
steps are taken without them: the images of the results file (in the annotation file's image
order, as `COCO.loadRes` + `COCOEvalCap` order them), the PTB tokenizer on references and
candidates, then pycocoevalcap's scorers, so the numbers are those COCOEvalCap reports.

Requirements: a Java runtime on PATH (the PTB tokenizer is Stanford CoreNLP's, run with
`java`), and a writable pycocoevalcap install folder (the tokenizer writes its input to a
temporary file beside its own module).
"""

import contextlib
import io
import os
import shutil
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from .json_files import read_json

Captions = dict[int, list[str]]


def load_results(result_path) -> dict[int, str]:
    """{"image_id", "caption"} list -> {image_id: caption}; one caption per image."""
    results = read_json(result_path, "caption results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"{result_path}: expected a non-empty JSON list of results")
    captions = {}
    for result in results:
        image_id, caption = result["image_id"], result["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"{result_path}: caption of image {image_id!r} is not a string")
        if image_id in captions:
            raise ValueError(f"{result_path}: image_id {image_id!r} has more than one caption")
        captions[image_id] = caption
    return captions


def load_references(annotations_path) -> Captions:
    """COCO captions JSON -> {image_id: [reference captions]}, in the order of its "images" list
    (or of first appearance in "annotations" when it has none)."""
    dataset = read_json(annotations_path, "caption annotations")
    references: Captions = {}
    for image in dataset.get("images", []):
        references[image["id"]] = []
    for annotation in dataset["annotations"]:
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return references


def check_ptb_tokenizer() -> None:
    """Raise a RuntimeError saying what to do if pycocoevalcap's PTB tokenizer cannot run."""
    if shutil.which("java") is None:
        raise RuntimeError(
            "CIDEr needs a Java runtime for pycocoevalcap's PTB tokenizer, and `java` is not on "
            "PATH: install one, e.g. `sudo apt-get install default-jre-headless`."
        )
    folder = Path(ptbtokenizer.__file__).resolve().parent
    if not os.access(folder, os.W_OK):
        raise RuntimeError(
            f"pycocoevalcap's PTB tokenizer writes a temporary file beside its module, in {folder}, "
            "which is not writable. Install pycocoevalcap in a writable environment (a "
            "virtualenv or `pip install --user`), or make that folder writable."
        )


def ptb_tokenize(captions: Captions) -> Captions:
    """Tokenize with pycocoevalcap's PTBTokenizer (lower-cased, punctuation removed)."""
    check_ptb_tokenizer()
    tokenized = PTBTokenizer().tokenize(
        {key: [{"caption": caption} for caption in texts] for key, texts in captions.items()}
    )
    got = sum(len(texts) for texts in tokenized.values())
    expected = sum(len(texts) for texts in captions.values())
    if got != expected:
        raise RuntimeError(f"the PTB tokenizer returned {got} captions for {expected}")
    return tokenized


def caption_scores(references: Captions, candidates: Captions) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr(-D) of tokenized candidates (one per image) against
    tokenized references, corpus-level, as COCOEvalCap reports them."""
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(references, candidates, verbose=0)
    scores.update({f"Bleu_{n}": float(value) for n, value in enumerate(bleu, start=1)})
    scores["ROUGE_L"] = float(Rouge().compute_score(references, candidates)[0])
    scores["CIDEr"] = float(Cider().compute_score(references, candidates)[0])
    return scores


def compute_cider(result_path, annotations_path) -> dict[str, float]:
    """Caption metrics of a results file against COCO-format annotations.

    Args:
        result_path: JSON list of {"image_id": int, "caption": str}, one caption per image.
            Only these images are scored.
        annotations_path: COCO captions JSON ({"images": [{"id"}], "annotations":
            [{"image_id", "caption"}]}), e.g. captions_val2014.json or Karpathy-split files.

    Returns:
        {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}: COCOEvalCap's values
        (CIDEr as a fraction, e.g. 0.93; OpenFlamingo reports 100 * CIDEr). METEOR and SPICE
        are not computed.
    """
    candidates = load_results(result_path)
    references = load_references(annotations_path)
    unknown = [image_id for image_id in candidates if not references.get(image_id)]
    if unknown:
        raise ValueError(
            f"{result_path}: {len(unknown)} image id(s) have no reference captions in "
            f"{annotations_path}, e.g. {unknown[:5]} (wrong split or annotation file?)"
        )
    image_ids = [image_id for image_id in references if image_id in candidates]
    references = ptb_tokenize({image_id: references[image_id] for image_id in image_ids})
    tokenized = ptb_tokenize({image_id: [candidates[image_id]] for image_id in image_ids})
    return caption_scores(references, tokenized)


def postprocess_captioning_generation(text: str) -> str:
    """A generated caption, cut where the model starts a new "Output:" turn."""
    return text.split("Output", 1)[0]
