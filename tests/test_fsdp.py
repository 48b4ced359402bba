"""The trainer's FSDP2 backend (open_flamingo/train/backend/fsdp2.py, and the checkpoint save /
resume that uses it) on CPU: 2 processes over gloo, the model sharded with torch's `fully_shard`, against a
plain copy (tests/fsdp_probe.py). accelerate makes FSDP only on GPUs;
scripts/gpu_training_runs.py runs the fsdp config end to end on one."""

import os
import subprocess
import sys

import pytest
import torch
from test_train import free_port

from conftest import REPO

PROBE = REPO / "tests" / "fsdp_probe.py"


@pytest.fixture(scope="module")
def probe(tmp_path_factory, tiny_lm_dirs, byte_tokenizer_dir):
    out = tmp_path_factory.mktemp("fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(PROBE), str(out)]
    command += [str(tiny_lm_dirs["llama"]), str(byte_tokenizer_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO / 'tests'}:{REPO}")
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)], out


def test_sharded_gradients_equal_the_plain_model_s_with_the_embedding_rows_masked(probe):
    ranks, _ = probe
    for report in ranks:
        assert report["losses"] == pytest.approx(report["plain_losses"], rel=1e-6)
        assert max(report["grad_rel_diff"]) < 1e-5
        # only <|endofchunk|> and <image> (the byte tokenizer's ids 257, 258) keep a gradient
        assert report["embedding_rows_with_grad"] == [257, 258]


def test_checkpoint_pt_holds_whole_tensors_equal_to_the_plain_model_s(probe, make_flamingo):
    ranks, out = probe
    released = torch.load(out / "run" / "checkpoint-2" / "checkpoint.pt")
    model, _, _ = make_flamingo("llama")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert sorted(released) == ranks[0]["released_keys"]
    assert "perceiver.latents" in released and "lang_encoder.model.embed_tokens.weight" in released
    assert all(not hasattr(v, "placements") for v in released.values())  # no DTensor
    assert all(v.shape == shapes[k] for k, v in released.items())
    # after 2 steps of AdamW, the sharded run's weights are the plain run's
    assert ranks[0]["released_vs_plain"] < 1e-5


def test_resuming_from_the_saved_weights_and_optimizer_continues_exactly(probe):
    ranks, out = probe
    optimizer = torch.load(out / "run" / "checkpoint-2" / "optimizer.pt", weights_only=False)
    assert "perceiver.latents" in optimizer["state"]  # whole state, keyed by parameter name
    for report in ranks:
        assert report["step3_resumed"] == report["step3"]
        assert report["params_differing_after_resume"] == []
