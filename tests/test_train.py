"""train_omnicorpus.py: flags, the loop's arithmetic, checkpoints, DDP / DeepSpeed runs, exact
resume after SIGKILL. Everything on CPU with a tiny model and the synthetic corpus."""

import json
import os
import socket
import subprocess
import time

import pytest
import torch

from conftest import REPO
from open_flamingo import create_model_and_transforms, trainable_state_dict
from open_flamingo.benchmarks.training_runs import kill_launch
from open_flamingo.data.doc_types import image_object_name
from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.tools.byte_tokenizer import save_byte_tokenizer
from open_flamingo.tools.convert_mmc4_to_wds import convert_mmc4_to_wds
from open_flamingo.train import checkpointing
from open_flamingo.train.args import parse_args
from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.train_omnicorpus import main
from tiny_models import VISION_ENCODER, save_tiny_lm

TRAIN_SCRIPT = REPO / "open_flamingo" / "train" / "train_omnicorpus.py"
ACCELERATE = REPO / ".venv" / "bin" / "accelerate"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_synthetic_corpus(
        str(root / "corpus"),
        num_docs=48,
        num_pairs=48,
        num_eval=0,
        docs_per_shard=12,
        pairs_per_shard=12,
        image_size=64,
        seed=0,
    )
    return {
        "root": root,
        "lm": save_tiny_lm("llama", root / "lm"),
        "tokenizer": save_byte_tokenizer(root / "tokenizer"),
    }


def argv(tiny, run_dir, **flags) -> list[str]:
    corpus = tiny["root"] / "corpus"
    base = {
        "lm_path": tiny["lm"],
        "tokenizer_path": tiny["tokenizer"],
        "vision_encoder_path": VISION_ENCODER,
        "vision_encoder_pretrained": "none",
        "omnicorpus_shards": corpus / "interleaved",
        "omnicorpus_image_prefix": corpus / "images",
        "laion_shards": corpus / "pairs",
        "batch_size_interleaved": 2,
        "batch_size_laion": 2,
        "max_tokens_interleaved": 96,
        "max_tokens_laion": 32,
        "train_num_samples_interleaved": 12,
        "train_num_samples_laion": 12,
        "precision": "fp32",
        "workers": 0,
        "external_save_dir": run_dir.parent,
        "run_name": run_dir.name,
        "checkpointing_steps": 2,
        "logging_steps": 1,
        "warmup_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "seed": 3,
    }
    base.update(flags)
    out = []
    for key, value in base.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False and value is not None:
            out += [f"--{key}", str(value)]
    return out


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"batch_size_laion": 0}, "--batch_size_laion must be >= 1"),
        ({"learning_rate": -1}, "--learning_rate must be a positive number"),
        ({"precision": "int8"}, "invalid choice: 'int8'"),
        ({"lr_scheduler": "step"}, "invalid choice: 'step'"),
        (
            {"save_checkpoints_to_wandb": True},
            "--save_checkpoints_to_wandb needs --report_to_wandb",
        ),
        ({"offline": True}, "--offline only apply with --report_to_wandb"),
        ({"resume_from_checkpoint": "latest", "load_from_pretrained": "x.pt"}, "Use one"),
        ({"interleaved_dataset": "mmc4"}, "needs --mmc4_shards"),
        (
            {"loss_multiplier_interleaved": 0, "loss_multiplier_laion": 0},
            "nothing would be trained",
        ),
        ({"special_checkpointing_steps": "10,x"}, "invalid _steps value"),
        ({"special_checkpointing_steps": "0,10"}, "--special_checkpointing_steps must be >= 1"),
        ({"max_grad_norm": -1}, "--max_grad_norm must be a positive number (got -1.0)"),
        ({"peak_tflops": 0}, "--peak_tflops must be a positive number"),
        ({"loss_multiplier_laion": "nan"}, "--loss_multiplier_laion must be a finite number"),
        ({"weight_decay": "inf"}, "--weight_decay must be a finite number"),
        ({"seed": -1}, "--seed must be in [0, 2**32) (got -1)"),
        ({"resume_from_checkpoint": "nowhere"}, "nowhere is not a checkpoint folder"),
        ({"load_from_pretrained": "nowhere.pt"}, "--load_from_pretrained nowhere.pt: no such"),
        ({"fsdp": True}, "--fsdp is not a flag of this trainer"),
        ({"dist-url": "env://"}, "the distributed set-up comes from `accelerate launch"),
    ],
)
def test_invalid_flags_are_rejected_with_a_reason(flags, message, tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv(tiny, tmp_path / "run", **flags))
    assert message in capsys.readouterr().err


def test_flags_of_the_seed_command_parse(tiny, tmp_path):
    args = parse_args(
        argv(
            tiny,
            tmp_path / "run",
            special_checkpointing_steps="10,20 30",
            dataset_resampled=True,
            gradient_checkpointing=True,
            freeze_lm_embeddings=True,
            delete_previous_checkpoint=True,
        )
    )
    assert args.special_checkpointing_steps == [10, 20, 30]
    assert args.vision_encoder_pretrained is None and args.dataset_resampled


def test_unequal_epochs_of_the_two_corpora_are_explained(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(argv(tiny, tmp_path / "run", train_num_samples_laion=20))
    assert "Set --train_num_samples_laion to 12." in capsys.readouterr().err


def test_accumulating_past_the_run_is_explained(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(argv(tiny, tmp_path / "run", gradient_accumulation_steps=7))
    assert "--gradient_accumulation_steps 7 exceeds the 6 batches" in capsys.readouterr().err


# ---------------------------------------------------------------- a single-process run


def fresh_model(tiny):
    torch.manual_seed(3)
    model, _, _ = create_model_and_transforms(
        VISION_ENCODER, None, str(tiny["lm"]), str(tiny["tokenizer"])
    )
    return model


def test_single_process_run_honours_its_flags(tiny, tmp_path):
    run = tmp_path / "single"
    main(
        argv(
            tiny,
            run,
            lr_scheduler="cosine",
            warmup_steps=1,
            gradient_accumulation_steps=2,
            special_checkpointing_steps="1",
            delete_previous_checkpoint=True,
            report_to_wandb=True,
            wandb_project="tests",
            offline=True,
        )
    )
    rows = read_metrics(run / "metrics.jsonl")
    # 6 micro-steps per epoch (12 samples / batch 2), 2 per optimizer step
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(r["peak_memory_gib"] is None for r in rows)  # on CUDA: tests/test_gpu.py
    # cosine after one warm-up step over 3 steps: lr(k) = lr * 0.5 * (1 + cos(pi * (k - 1) / 2))
    expected_lr = [
        1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (k - 1) / 2)).item()) for k in (1, 2, 3)
    ]
    assert [r["lr"] for r in rows] == pytest.approx(expected_lr)
    # the special checkpoint of step 1 is kept, step 2's deleted, step 3 (the last) written
    assert checkpointing.checkpoint_steps(run) == [1, 3]
    assert (run / "latest").read_text() == "checkpoint-3"
    assert list((run / "wandb").glob("offline-run-*"))
    # the released-format export loads with load_state_dict(strict=False)
    model = fresh_model(tiny)
    before = model.lang_encoder.get_input_embeddings().weight.detach().clone()
    result = model.load_state_dict(torch.load(run / "checkpoint-3" / "checkpoint.pt"), strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "gated_cross_attn" in k or "perceiver" in k]
    changed = (model.lang_encoder.get_input_embeddings().weight != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [257, 258]  # <|endofchunk|>, <image>


def test_frozen_embeddings_bf16_and_load_from_pretrained(tiny, tmp_path):
    model = fresh_model(tiny)
    start = trainable_state_dict(model)
    start["perceiver.latents"] = start["perceiver.latents"] + 5.0  # a recognisable start
    torch.save(start, tmp_path / "start.pt")
    run = tmp_path / "bf16"
    main(
        argv(
            tiny,
            run,
            freeze_lm_embeddings=True,
            precision="bf16",
            gradient_checkpointing=True,
            load_from_pretrained=tmp_path / "start.pt",
            train_num_samples_interleaved=4,
            train_num_samples_laion=4,
        )
    )
    saved = torch.load(run / "checkpoint-2" / "checkpoint.pt")
    assert saved["perceiver.latents"].dtype == torch.bfloat16
    drift = (saved["perceiver.latents"].float() - start["perceiver.latents"]).abs().max()
    assert drift < 0.1  # trained from the loaded weights (2 steps of lr 1e-3), not from init
    embedding = saved["lang_encoder.model.embed_tokens.weight"]
    assert torch.equal(
        embedding, start["lang_encoder.model.embed_tokens.weight"].to(torch.bfloat16)
    )


def test_load_from_pretrained_of_another_cross_attention_interval_is_refused(tiny, tmp_path):
    """A checkpoint with a block before every 2nd layer, into a model with one before every
    layer (the default): training would start the missing blocks from scratch."""
    torch.manual_seed(3)
    every_second, _, _ = create_model_and_transforms(
        VISION_ENCODER, None, str(tiny["lm"]), str(tiny["tokenizer"]), cross_attn_every_n_layers=2
    )
    torch.save(trainable_state_dict(every_second), tmp_path / "start.pt")
    with pytest.raises(SystemExit) as refused:
        main(argv(tiny, tmp_path / "run", load_from_pretrained=tmp_path / "start.pt"))
    message = str(refused.value)
    assert message.startswith(f"--load_from_pretrained {tmp_path / 'start.pt'}: ")
    assert "sit before decoder layers 1, 3 (cross_attn_every_n_layers=2)" in message
    assert "--cross_attn_every_n_layers 2" in message
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_checkpoint_interrupted_while_written_leaves_latest_intact(tiny, tmp_path, monkeypatch):
    run = tmp_path / "atomic"
    main(argv(tiny, run))  # 6 steps: checkpoints 2, 4 and 6
    assert (run / "latest").read_text() == "checkpoint-6"
    real_save = checkpointing.save_file

    def dying_save(obj, path):
        if str(path).endswith("scheduler.pt"):
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, path)

    monkeypatch.setattr(checkpointing, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):  # redo steps 3-4, die while saving checkpoint-4
        main(argv(tiny, run, resume_from_checkpoint=run / "checkpoint-2"))
    monkeypatch.setattr(checkpointing, "save_file", real_save)
    assert (run / "latest").read_text() == "checkpoint-6"
    assert [p.name for p in run.glob(".checkpoint-*.incomplete")] == [".checkpoint-4.incomplete"]
    assert checkpointing.resolve_resume("latest", run) == run / "checkpoint-6"
    main(argv(tiny, run, resume_from_checkpoint="latest", num_epochs=2))
    assert not list(run.glob(".checkpoint-*.incomplete"))
    assert checkpointing.checkpoint_steps(run) == [2, 4, 6, 8, 10, 12]


# ---------------------------------------------------------------- multi-process runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    tiny, run_dir, *, deepspeed_config=None, script=TRAIN_SCRIPT, script_args=(), **flags
) -> subprocess.Popen:
    """`accelerate launch` of 2 CPU processes: DDP over gloo, or DeepSpeed with the named
    accelerate config. `script` (the trainer by default) gets `script_args`, then the flags."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if deepspeed_config:
        env.pop("ACCELERATE_USE_CPU", None)  # with it, accelerate silently runs DDP instead
        # DeepSpeed's CPU ops (communication, CPU Adam) are built once into this checkout's cache
        env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
        config = ["--config_file", str(REPO / "accelerate_configs" / deepspeed_config)]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        config = ["--multi_gpu"]
    command = [
        str(ACCELERATE),
        "launch",
        *config,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        str(script),
        *map(str, script_args),
        *argv(tiny, run_dir, **flags),
    ]
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:  # the child keeps its copy
        return subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, run_dir, timeout=900) -> None:
    code = process.wait(timeout=timeout)
    log = (run_dir.parent / f"{run_dir.name}.log").read_text()
    assert code == 0, log[-4000:]


def losses(run_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(run_dir / "metrics.jsonl")}


RESUME_FLAGS = dict(
    train_num_samples_interleaved=24, train_num_samples_laion=24, checkpointing_steps=2, workers=1
)  # 6 steps, 2 processes, 1 worker each


@pytest.fixture(scope="module")
def uninterrupted_ddp(tiny):
    run = tiny["root"] / "ddp-uninterrupted"
    finish(launch(tiny, run, **RESUME_FLAGS), run)
    return losses(run)


def test_ddp_run_killed_with_sigkill_resumes_exactly(tiny, uninterrupted_ddp):
    assert sorted(uninterrupted_ddp) == [1, 2, 3, 4, 5, 6]
    run = tiny["root"] / "ddp-killed"
    process = launch(tiny, run, **RESUME_FLAGS)
    deadline = time.monotonic() + 600
    # kill once step 3 is logged: checkpoint-2 is complete, step 3 is lost
    while time.monotonic() < deadline and 3 not in (
        losses(run) if (run / "metrics.jsonl").exists() else {}
    ):
        assert process.poll() is None, (run.parent / f"{run.name}.log").read_text()[-3000:]
        time.sleep(0.2)
    kill_launch(process)  # the trainers too, not only the launcher
    killed = losses(run)
    assert checkpointing.resolve_resume("latest", run) == run / "checkpoint-2"
    finish(launch(tiny, run, resume_from_checkpoint="latest", **RESUME_FLAGS), run)
    log = (run.parent / f"{run.name}.log").read_text()
    assert f"resuming from {run / 'checkpoint-2'}" in log  # the resumed run wrote steps 3 to 6
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len(killed) + 4  # nothing else wrote to the run after the kill
    resumed = losses(run)
    assert [resumed[s] for s in (3, 4, 5, 6)] == [uninterrupted_ddp[s] for s in (3, 4, 5, 6)]


def test_deepspeed_zero1_matches_ddp_and_writes_sharded_optimizer(tiny, uninterrupted_ddp):
    run = tiny["root"] / "zero1"
    config = "accelerate_config_zero1.yaml"
    finish(launch(tiny, run, deepspeed_config=config, **RESUME_FLAGS, num_epochs=1), run)
    log = (run.parent / f"{run.name}.log").read_text()
    assert "DeepSpeed ZeRO-1 on 2 processes (cpu)" in log
    got = losses(run)
    assert got == pytest.approx(uninterrupted_ddp, rel=1e-5)
    shards = sorted(p.name for p in (run / "checkpoint-6" / "deepspeed" / "state").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    assert not (run / "checkpoint-6" / "optimizer.pt").exists()
    assert json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["step"] == 6


def test_zero1_slurm_config_offloads_the_optimizer_to_cpu_adam(tiny, uninterrupted_ddp):
    """The seed's config (ZeRO-1, optimizer offloaded to DeepSpeed's CPU Adam), here with its
    machine and process counts overridden to 2 processes on this machine, as the sbatch script
    overrides them."""
    run = tiny["root"] / "zero1-slurm"
    config = "accelerate_config_zero1_slurm.yaml"
    finish(launch(tiny, run, deepspeed_config=config, **RESUME_FLAGS, num_epochs=1), run)
    log = (run.parent / f"{run.name}.log").read_text()
    assert "DeepSpeed ZeRO-1, optimizer on the CPU on 2 processes (cpu)" in log
    # every step as DDP's: DeepSpeed's CPU Adam runs as AdamW. (When it ran as Adam with L2
    # decay, step 6 was 1.3% off; test_offloaded_optimizer_becomes_cpu_adam_in_adamw_mode.)
    assert losses(run) == pytest.approx(uninterrupted_ddp, rel=1e-5)
    state = run / "checkpoint-6" / "deepspeed" / "state"
    shards = sorted(p.name for p in state.iterdir())
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    saved = torch.load(state / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
    stepped = saved["optimizer_state_dict"]["base_optimizer_state"]
    # DeepSpeedCPUAdam stepped: its groups carry `bias_correction` and its step counts are ints
    # (torch's AdamW, as under the plain zero1 config, keeps tensors and no such key)
    assert all(group["bias_correction"] is True for group in stepped["param_groups"])
    assert stepped["state"][0]["step"] == 6 and isinstance(stepped["state"][0]["step"], int)


def test_deepspeed_zero2_matches_ddp(tiny, uninterrupted_ddp):
    run = tiny["root"] / "zero2"
    config = "accelerate_config_zero2.yaml"
    finish(launch(tiny, run, deepspeed_config=config, **RESUME_FLAGS, num_epochs=1), run)
    assert losses(run) == pytest.approx(uninterrupted_ddp, rel=1e-5)


def test_deepspeed_zero3_saves_the_full_released_weights_and_resumes_exactly(tiny):
    """ZeRO-3 partitions every parameter over the 2 processes. checkpoint.pt must still hold
    each released tensor whole: the fp32 weights DeepSpeed itself reconstructs from its sharded
    checkpoint. Resuming from checkpoint-4 repeats steps 5 and 6 exactly.

    (The random init of the perceiver and cross-attention differs from the other backends'
    under the same seed: with ZeRO-3 on, transformers draws more random numbers while loading
    the LM. The losses are therefore not compared with DDP's.)"""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = tiny["root"] / "zero3"
    config = "accelerate_config_zero3.yaml"
    finish(launch(tiny, run, deepspeed_config=config, **RESUME_FLAGS, num_epochs=1), run)
    first = losses(run)
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    checkpoint = run / "checkpoint-6"
    released = torch.load(checkpoint / "checkpoint.pt")
    model = fresh_model(tiny)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert set(released) == set(trainable_state_dict(model))
    assert all(v.shape == shapes[k] for k, v in released.items())
    consolidated = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint / "deepspeed"), tag="state", exclude_frozen_parameters=True
    )
    trained = [k for k in released if k in consolidated]
    assert len(trained) == len(released)  # every released weight trains here
    for name in trained:
        assert torch.equal(released[name], consolidated[name]), name

    resumed_from = run / "checkpoint-4"
    finish(
        launch(
            tiny,
            run,
            deepspeed_config=config,
            **RESUME_FLAGS,
            num_epochs=1,
            resume_from_checkpoint=resumed_from,
        ),
        run,
    )
    again = losses(run)
    assert [again[s] for s in (5, 6)] == [first[s] for s in (5, 6)]


GRAD_SYNC_PROBE = REPO / "tests" / "grad_sync_probe.py"


@pytest.mark.parametrize(
    "config",
    [None, "accelerate_config_zero1.yaml", "accelerate_config_zero1_slurm.yaml"],
    ids=["ddp", "zero1", "zero1_slurm"],
)
def test_gradients_are_reduced_only_at_accumulation_boundaries(tiny, tmp_path, config):
    """2 processes, 6 micro-steps, --gradient_accumulation_steps 3: TrainStep reduces gradients
    across processes in the backward of micro-steps 3 and 6 only, and the optimizer then gets
    the average over processes of each process's gradient accumulated over the 3 micro-steps."""
    run = tmp_path / "probe"
    process = launch(
        tiny,
        run,
        deepspeed_config=config,
        script=GRAD_SYNC_PROBE,
        script_args=[run],
        gradient_accumulation_steps=3,
        max_grad_norm=1e9,  # clipping off: the optimizer gets the reduced gradient itself
        train_num_samples_interleaved=24,
        train_num_samples_laion=24,
    )
    finish(process, run)
    ranks = [torch.load(run / f"rank{k}.pt") for k in (0, 1)]
    boundaries = [False, False, True, False, False, True]
    for rank in ranks:
        steps = rank["micro_steps"]
        assert [s["boundary"] for s in steps] == boundaries
        if config is None:  # DDP: bucket reductions seen by a communication hook
            reductions = [s["bucket_reductions"] for s in steps]
        else:  # DeepSpeed: collectives called during accelerator.backward (backward + step)
            reductions = [sum(s["collectives"].values()) for s in steps]
            assert all(
                s["collectives"].get("deepspeed.comm.all_reduce", 0) > 0
                for s, boundary in zip(steps, boundaries, strict=True)
                if boundary
            )
        assert [n > 0 for n in reductions] == boundaries, reductions
        # the plain copy reproduces the step's losses: same weights, same batches
        reference, stepped = zip(*rank["losses"], strict=True)
        assert reference == pytest.approx(stepped, rel=1e-6)
        assert len(rank["received"]) == len(rank["local"]) == 2

    names = sorted(ranks[0]["local"][0])
    assert "perceiver.latents" in names  # every trainable parameter, these among them
    assert "lang_encoder.gated_cross_attn_layers.0.attn.to_q.weight" in names

    def flat(grads: dict) -> torch.Tensor:
        return torch.cat([grads[n].flatten().double() for n in names])

    for window in (0, 1):
        local = [flat(rank["local"][window]) for rank in ranks]
        mean = (local[0] + local[1]) / 2
        last_only = (flat(ranks[0]["last_only"][window]) + flat(ranks[1]["last_only"][window])) / 2
        scale = mean.norm()
        assert scale > 1
        for k, rank in enumerate(ranks):
            received = flat(rank["received"][window])
            # measured: |received - mean| / |mean| ~ 4e-8
            assert (received - mean).norm() < 1e-6 * scale
            # and that is a real average: each process's own gradient is 4-6% away from it,
            # the average of the boundary micro-step's gradients alone 67%
            assert (local[k] - mean).norm() > 0.02 * scale
        assert (last_only - mean).norm() > 0.5 * scale


# ---------------------------------------------------------------- OpenFlamingo's train.py


def write_mmc4_wds(tiny, out) -> None:
    """The synthetic docs in OpenFlamingo's MMC4 webdataset form (images over MMC4's 10 KB)."""
    from test_data_formats import mmc4_record, with_comment, zip_bytes

    corpus = tiny["root"] / "corpus"
    (out / "docs").mkdir(parents=True)
    (out / "images").mkdir()
    lines = []
    for shard in sorted((corpus / "interleaved").iterdir()):
        for line in shard.read_text().splitlines():
            record = json.loads(line)
            doc, names = mmc4_record(record, len(lines))
            urls = [url for url in record["images"] if url is not None]
            for name, url in zip(names, urls, strict=True):
                jpeg = (corpus / "images" / image_object_name(url)).read_bytes()
                (out / "images" / name).write_bytes(with_comment(jpeg, 12_000))
            lines.append(json.dumps(doc))
    (out / "docs" / "mmc4.zip").write_bytes(zip_bytes({"mmc4.jsonl": "\n".join(lines).encode()}))
    convert_mmc4_to_wds(str(out / "docs"), str(out / "images"), str(out / "wds"))


def test_openflamingo_train_script_runs_mmc4_and_laion_with_upstream_flag_names(tiny, tmp_path):
    from open_flamingo.train.train import main as train_main

    write_mmc4_wds(tiny, tmp_path / "mmc4")
    run = tmp_path / "of"
    flags = argv(
        tiny,
        run,
        omnicorpus_shards=None,
        omnicorpus_image_prefix=None,
        batch_size_interleaved=None,
        train_num_samples_interleaved=None,
    )
    flags += [
        "--mmc4_shards",
        str(tmp_path / "mmc4" / "wds"),
        "--batch_size_mmc4",
        "2",
        "--train_num_samples_mmc4",
        "12",
        "--loss_multiplier_mmc4",
        "1.0",
    ]
    train_main(flags)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss_interleaved"] > 0 for r in rows)
    assert (run / "checkpoint-6" / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- the loop's rules


def test_weight_decay_only_on_cross_attention_weights(tiny):
    from open_flamingo.train.optim import parameter_groups

    model = fresh_model(tiny)
    decayed, plain = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decayed_names and all(".gated_cross_attn_layers." in n for n in decayed_names)
    assert not [n for n in decayed_names if n.endswith(("gate", "bias")) or "norm" in n]
    # upstream's rule is by name: the feed-forward's LayerNorm weight (`ff.0.weight`) has no
    # "norm" in its name and is decayed there too; its bias is not
    assert {
        "attn.to_q.weight",
        "attn.to_kv.weight",
        "attn.to_out.weight",
        "ff.0.weight",
        "ff.1.weight",
        "ff.3.weight",
    } == {n.split(".", 3)[-1] for n in decayed_names}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "perceiver.latents" in plain_names
    assert "lang_encoder.model.embed_tokens.weight" in plain_names
    assert "lang_encoder.gated_cross_attn_layers.0.attn_gate" in plain_names


def test_offloaded_optimizer_becomes_cpu_adam_in_adamw_mode(tiny, monkeypatch):
    """With the optimizer offloaded to CPU, accelerator.prepare swaps the optimizer for a
    DeepSpeedCPUAdam over its parameter groups (accelerate's map_pytorch_optim_to_deepspeed),
    in AdamW mode only for a torch AdamW. The DeepSpeedCPUAdam(adamw_mode=True) we used to pass
    came back as Adam with L2 decay: the weight decay added to the gradient, so a decayed weight
    with a zero gradient moved by the full learning rate instead of shrinking by lr * decay."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ:  # the op built once, as for the launches
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    from accelerate.utils import map_pytorch_optim_to_deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from open_flamingo.train.optim import build_optimizer, parameter_groups

    def one_step_with_zero_gradients(optimizer, model):
        param = model.lang_encoder.gated_cross_attn_layers[0].attn.to_q.weight  # decayed
        before = param.detach().clone()
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        return before, param.detach()

    model = fresh_model(tiny)
    swapped = map_pytorch_optim_to_deepspeed(build_optimizer(model, 1e-3, 0.1, cpu_offload=True))
    assert isinstance(swapped, DeepSpeedCPUAdam) and swapped.adam_w_mode
    before, after = one_step_with_zero_gradients(swapped, model)
    assert torch.allclose(after, before * (1 - 1e-3 * 0.1), rtol=1e-6, atol=0)

    model = fresh_model(tiny)  # what build_optimizer passed before
    old = DeepSpeedCPUAdam(parameter_groups(model, 0.1), lr=1e-3, adamw_mode=True)
    swapped = map_pytorch_optim_to_deepspeed(old)
    assert not swapped.adam_w_mode
    before, after = one_step_with_zero_gradients(swapped, model)
    # Adam's first step on the gradient g = 0.1 * w: lr * g / (|g| + eps), ~ lr * sign(w)
    g = 0.1 * before
    assert torch.allclose(after, before - 1e-3 * g / (g.abs() + 1e-8), rtol=0, atol=1e-8)
    assert (after - before).abs().mean() > 0.9e-3


def test_a_launch_config_this_machine_cannot_run_is_refused(tiny, tmp_path):
    """The FSDP config on a machine without GPUs: accelerate would make each of the launched
    processes a lone, unsynchronised run; the trainer stops with the reason instead."""
    run = tmp_path / "fsdp_on_cpu"
    process = launch(tiny, run, deepspeed_config="accelerate_config_fsdp.yaml")
    code = process.wait(timeout=600)
    log = (run.parent / f"{run.name}.log").read_text()
    assert code != 0, log[-3000:]
    assert "2 processes were launched" in log and "FSDP needs GPUs" in log, log[-3000:]
    assert not list(run.glob("*checkpoint-*"))


def test_adamw_is_fused_where_it_will_step_on_cuda(tiny):
    from open_flamingo.train.optim import build_optimizer

    model = fresh_model(tiny)  # on the CPU: the trainer builds the optimizer before prepare()

    def fused(**where):
        return {group["fused"] for group in build_optimizer(model, 1e-3, 0.1, **where).param_groups}

    assert fused(device="cuda") == {True}
    assert fused() == {None}  # where the parameters are now: the CPU
    assert fused(device="cuda", cpu_offload=True) == {None}  # DeepSpeed's CPU Adam steps


def test_the_log_names_the_optimizer_that_steps():
    from types import SimpleNamespace

    from open_flamingo.train.run import stepping_optimizer_name

    adamw = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    assert stepping_optimizer_name(adamw) == "AdamW"
    # accelerate's wrapper around DeepSpeed's ZeRO optimizer around the basic optimizer
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=adamw))
    assert stepping_optimizer_name(wrapped) == "AdamW"


def test_non_finite_losses_are_skipped_without_an_update(tiny, tmp_path, monkeypatch):
    from open_flamingo.train.step import TrainStep

    real_loss = TrainStep.loss
    monkeypatch.setattr(TrainStep, "loss", lambda self, batch: real_loss(self, batch) * torch.nan)
    run = tmp_path / "nan"
    main(argv(tiny, run, train_num_samples_interleaved=4, train_num_samples_laion=4))
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["nonfinite_skipped"] for r in rows] == [1, 2]
    saved = torch.load(run / "checkpoint-2" / "checkpoint.pt")
    initial = trainable_state_dict(fresh_model(tiny))
    assert all(torch.equal(saved[k], initial[k]) for k in saved)
