"""Prompts, and which queries / demonstrations a trial uses: upstream's exact random streams."""

import socket

import pytest
import torch.distributed as dist

from conftest import REPO, load_module, require
from open_flamingo.eval.captioning import captioning_query
from open_flamingo.eval.classification import classification_query
from open_flamingo.eval.prompts import (
    caption_prompt,
    hateful_memes_prompt,
    imagenet_prompt,
    vqa_prompt,
)
from open_flamingo.eval.sampling import effective_num_shots, make_plan, shard
from open_flamingo.eval.vqa import vqa_query

UPSTREAM_UTILS = REPO / ".cache/upstream-site/open_flamingo/eval/utils.py"


def test_prompts_are_upstreams():
    assert caption_prompt("two cats") == "<image>Output:two cats<|endofchunk|>"
    assert caption_prompt() == "<image>Output:"
    assert vqa_prompt("What is it?", "cat") == (
        "<image>Question:What is it? Short answer:cat<|endofchunk|>"
    )
    assert vqa_prompt("What is it?") == "<image>Question:What is it? Short answer:"
    assert imagenet_prompt("tench") == "<image>Output:tench<|endofchunk|>"
    assert hateful_memes_prompt("love you", "no") == (
        "<image>is an image with: 'love you' written on it. Is it hateful? Answer:no<|endofchunk|>"
    )
    assert hateful_memes_prompt("x") == (
        "<image>is an image with: 'x' written on it. Is it hateful? Answer:"
    )


DEMOS = [
    {"caption": " A cat. ", "question": "Color?", "answers": ["red", "blue"]},
    {"caption": "A dog", "question": "How many?", "answers": ["2"]},
]


def test_queries_with_demonstrations():
    # captions are stripped; demonstrations end with a newline
    assert captioning_query(DEMOS, 2) == (
        "<image>Output:A cat.<|endofchunk|>\n<image>Output:A dog<|endofchunk|>\n<image>Output:"
    )
    # zero shots: the same 2 demonstrations, text only
    assert captioning_query(DEMOS, 0) == (
        "Output:A cat.<|endofchunk|>\nOutput:A dog<|endofchunk|>\n<image>Output:"
    )
    assert vqa_query(DEMOS, "Shape?", 0) == (
        "Question:Color? Short answer:red<|endofchunk|>\n"
        "Question:How many? Short answer:2<|endofchunk|>\n"
        "<image>Question:Shape? Short answer:"
    )
    memes = [{"ocr": "a", "class_name": "yes"}, {"ocr": "b", "class_name": "no"}]
    assert classification_query("hateful_memes", memes, {"ocr": "c"}, 2) == (
        "<image>is an image with: 'a' written on it. Is it hateful? Answer:yes<|endofchunk|>"
        "<image>is an image with: 'b' written on it. Is it hateful? Answer:no<|endofchunk|>"
        "<image>is an image with: 'c' written on it. Is it hateful? Answer:"
    )
    fish = [{"class_name": "tench"}, {"class_name": "goldfish"}]
    assert classification_query("imagenet", fish, {}, 0) == (
        "Output:tench<|endofchunk|>Output:goldfish<|endofchunk|><image>Output:"
    )
    assert [effective_num_shots(s) for s in (0, 4, 32)] == [2, 4, 32]


PLAN = dict(num_test=50, num_train=40, num_samples=13, query_set_size=20, batch_size=4)


def test_plan_is_deterministic_per_seed():
    a = make_plan(**PLAN, num_shots=4, seed=42, rices=False)
    b = make_plan(**PLAN, num_shots=4, seed=42, rices=False)
    c = make_plan(**PLAN, num_shots=4, seed=43, rices=False)
    assert [x.test_indices for x in a] == [x.test_indices for x in b]
    assert [x.demo_indices for x in a] == [x.demo_indices for x in b]
    assert [x.test_indices for x in a] != [x.test_indices for x in c]
    assert [x.demo_indices for x in a] != [x.demo_indices for x in c]
    assert [len(x.test_indices) for x in a] == [4, 4, 4, 1]
    queries = [i for x in a for i in x.test_indices]
    assert len(set(queries)) == 13 and all(0 <= i < 50 for i in queries)
    for batch in a:
        for demos in batch.demo_indices:
            assert len(demos) == len(set(demos)) == 4
    # zero shots still draws 2 demonstrations (shown as text only)
    zero = make_plan(**PLAN, num_shots=0, seed=42, rices=False)
    assert all(len(d) == 2 for x in zero for d in x.demo_indices)
    # RICES: no random demonstrations, the same queries
    rices = make_plan(**PLAN, num_shots=4, seed=42, rices=True)
    assert [x.test_indices for x in rices] == [x.test_indices for x in a]
    assert all(x.demo_indices is None for x in rices)


def test_shards_cover_the_plan_once():
    plan = make_plan(**PLAN, num_shots=2, seed=1, rices=False)
    shards = [shard(plan, rank, 3) for rank in range(3)]
    positions = sorted(x.position for part in shards for x in part)
    assert positions == list(range(len(plan)))
    assert [x.position for x in shards[1]] == [1]


def test_prompt_ensembling_permutations():
    plan = make_plan(**PLAN, num_shots=3, seed=5, rices=False, ensemble_prompts=True)
    for batch in plan:
        for orders in batch.permutations:
            assert len(orders) == 6 and all(sorted(o) == [0, 1, 2] for o in orders)
    plain = make_plan(**PLAN, num_shots=3, seed=5, rices=False)
    assert plain[0].permutations[0] == [[0, 1, 2]]


def load_upstream_utils():
    require(UPSTREAM_UTILS.is_file(), "upstream reference missing: run `make upstream`")
    return load_module(UPSTREAM_UTILS, "upstream_eval_utils")


@pytest.fixture
def single_process_group():
    """Upstream builds a DistributedSampler, which needs a (1-process) group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("num_shots, seed", [(4, 42), (0, 7)])
def test_plan_reproduces_upstream_streams(single_process_group, num_shots, seed):
    """Upstream's utils (np.random.seed, prepare_eval_samples, get_query_set, random_seed,
    sample_batch_demos_from_query_set) on index datasets pick the same queries, in the same
    batches, with the same demonstrations."""
    utils = load_upstream_utils()
    test = [{"index": i} for i in range(PLAN["num_test"])]
    train = [{"index": i} for i in range(PLAN["num_train"])]
    shots = utils.compute_effective_num_shots(num_shots, "open_flamingo")

    import numpy as np

    np.random.seed(seed)
    loader = utils.prepare_eval_samples(test, PLAN["num_samples"], PLAN["batch_size"])
    query_set = utils.get_query_set(train, PLAN["query_set_size"])
    utils.random_seed(seed, 0)
    upstream = []
    for batch in loader:
        demos = utils.sample_batch_demos_from_query_set(query_set, shots, len(batch["index"]))
        upstream.append((batch["index"], [[d["index"] for d in row] for row in demos]))

    ours = make_plan(**PLAN, num_shots=num_shots, seed=seed, rices=False)
    assert [(b.test_indices, b.demo_indices) for b in ours] == upstream
