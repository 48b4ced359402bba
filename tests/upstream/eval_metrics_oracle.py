"""Run upstream open-flamingo 2.0.1's evaluation metrics on a job and write their outputs.

Runs with PYTHONPATH=<upstream-site>/open_flamingo/eval:tests (upstream's evaluate.py imports
these modules the same way, top-level), NLTK_DATA pointing at an offline WordNet; nltk's
tokenizer and tagger are replaced by tests/fake_nltk.py's. COCOEvalCap's METEOR and SPICE are
replaced by stubs (SPICE downloads CoreNLP; neither is part of what we compare).

Usage: python eval_metrics_oracle.py JOB.json OUT.json
JOB keys (all optional): "vqa": [[results, questions, annotations], ...] paths;
"postprocess_vqa", "postprocess_caption", "stem", "postprocess_ok_vqa": [text, ...];
"cider": [[results, annotations], ...] paths. OUT has the same keys with upstream's outputs.
"""

import json
import sys

import fake_nltk
import nltk


class _NoScorer:
    def __init__(self, name):
        self.name = name

    def method(self):
        return self.name

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(res)


def main(job_path: str, out_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    nltk.pos_tag = fake_nltk.pos_tag
    nltk.tokenize.word_tokenize = fake_nltk.tokenize
    out = {}
    if "vqa" in job or "postprocess_vqa" in job:
        import vqa_metric

        out["vqa"] = [vqa_metric.compute_vqa_accuracy(*paths) for paths in job.get("vqa", [])]
        out["postprocess_vqa"] = [
            vqa_metric.postprocess_vqa_generation(text) for text in job.get("postprocess_vqa", [])
        ]
    if "stem" in job or "postprocess_ok_vqa" in job:
        import ok_vqa_utils

        out["stem"] = [ok_vqa_utils.stemmer.stem(text) for text in job.get("stem", [])]
        out["postprocess_ok_vqa"] = [
            ok_vqa_utils.postprocess_ok_vqa_generation(text)
            for text in job.get("postprocess_ok_vqa", [])
        ]
    if "cider" in job or "postprocess_caption" in job:
        import coco_metric
        import pycocoevalcap.eval

        pycocoevalcap.eval.Meteor = lambda: _NoScorer("METEOR")
        pycocoevalcap.eval.Spice = lambda: _NoScorer("SPICE")
        out["cider"] = [coco_metric.compute_cider(*paths) for paths in job.get("cider", [])]
        out["postprocess_caption"] = [
            coco_metric.postprocess_captioning_generation(text)
            for text in job.get("postprocess_caption", [])
        ]
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
