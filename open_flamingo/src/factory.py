"""create_model_and_transforms: open_clip vision tower + Hugging Face LM + tokenizer -> Flamingo."""

import logging
from pathlib import Path

import open_clip
import torch
from transformers import AutoTokenizer

from .flamingo import Flamingo
from .mosaic_gpt import load_causal_lm
from .mpt_attention import use_sdpa_for_mpt
from .placement import place_beside_lm
from .pretrained_paths import resolve_pretrained_path

logger = logging.getLogger(__name__)

# Small open_clip architectures shipped with this package (e.g. "ViT-Tiny-16" for the demo and
# the tests), registered next to open_clip's own configs.
open_clip.add_model_config(Path(__file__).resolve().parent.parent / "model_configs")

# Added in this order, so ids match released checkpoints: for the GPT-NeoX-20B tokenizer of
# MPT-1B/7B (50277 tokens) <|endofchunk|> = 50277, <image> = 50278, <PAD> = 50279.
FLAMINGO_SPECIAL_TOKENS = ["<|endofchunk|>", "<image>"]
PAD_TOKEN = "<PAD>"


def _from_pretrained(auto_class, path: str, **kwargs):
    """`auto_class.from_pretrained(path)`; a path to a single `.gguf` file loads from its folder
    with `gguf_file=`, a Hugging Face cache folder from its snapshot."""
    path = resolve_pretrained_path(path)
    if path.endswith(".gguf") and Path(path).is_file():
        return auto_class.from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, **kwargs
        )
    return auto_class.from_pretrained(path, **kwargs)


def load_flamingo_tokenizer(
    tokenizer_path: str,
    *,
    use_local_files: bool = False,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
):
    """The LM tokenizer with `<|endofchunk|>`, `<image>` and (if it had none) `<PAD>` added."""
    tokenizer = _from_pretrained(
        AutoTokenizer,
        tokenizer_path,
        local_files_only=use_local_files,
        trust_remote_code=trust_remote_code,
        cache_dir=cache_dir,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": FLAMINGO_SPECIAL_TOKENS})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def model_dtype(
    dtype: torch.dtype | str | None, torch_dtype: torch.dtype | str | None = None
) -> torch.dtype:
    """The dtype `create_model_and_transforms` builds in: `dtype` or its older name
    `torch_dtype` (not both), as a torch.dtype or its name; float32 when neither is given."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree: pass one")
    chosen = dtype if dtype is not None else torch_dtype
    if chosen is None:
        return torch.float32  # upstream's numerics; training and eval cast to their precision
    if isinstance(chosen, str):
        chosen = getattr(torch, chosen.removeprefix("torch."), None)
    if not isinstance(chosen, torch.dtype) or not chosen.is_floating_point:
        raise ValueError(
            f"dtype {dtype if dtype is not None else torch_dtype!r} is not a floating-point "
            "torch dtype: use torch.float32, torch.bfloat16 or torch.float16"
        )
    return chosen


def set_trainable_parameters(model: Flamingo, freeze_lm_embeddings: bool = False) -> None:
    """Upstream's policy: train the perceiver, the gated cross-attention layers and, unless
    `freeze_lm_embeddings`, the LM input embeddings; freeze everything else."""
    model.requires_grad_(False)
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    if not freeze_lm_embeddings:
        model.lang_encoder.get_input_embeddings().requires_grad_(True)


def assemble_flamingo(
    vision_encoder: torch.nn.Module,
    vis_dim: int,
    lang_encoder: torch.nn.Module,
    tokenizer,
    cross_attn_every_n_layers: int = 1,
    freeze_lm_embeddings: bool = False,
    gradient_checkpointing: bool | str = False,
    decoder_layers_attr_name: str | None = None,
    **flamingo_kwargs,
) -> Flamingo:
    """A Flamingo from an open_clip visual tower, a causal LM (resized to the tokenizer, which
    must already hold the special tokens) and its tokenizer, with upstream's trainable set.
    `create_model_and_transforms` loads the parts; benchmarks pass randomly initialised ones."""
    vision_encoder.output_tokens = True
    use_sdpa_for_mpt(lang_encoder)  # transformers' MPT has only an eager attention
    lang_encoder.resize_token_embeddings(len(tokenizer))
    model = Flamingo(
        vision_encoder,
        lang_encoder,
        eoc_token_id=tokenizer.convert_tokens_to_ids("<|endofchunk|>"),
        media_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vis_dim=vis_dim,
        cross_attn_every_n_layers=cross_attn_every_n_layers,
        gradient_checkpointing=gradient_checkpointing,
        decoder_layers_attr_name=decoder_layers_attr_name,
        **flamingo_kwargs,
    )
    set_trainable_parameters(model, freeze_lm_embeddings=freeze_lm_embeddings)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Flamingo model initialized with %s trainable parameters", f"{n_trainable:,}")
    return model


def create_model_and_transforms(
    clip_vision_encoder_path: str,
    clip_vision_encoder_pretrained: str | None,
    lang_encoder_path: str,
    tokenizer_path: str,
    cross_attn_every_n_layers: int = 1,
    use_local_files: bool = False,
    decoder_layers_attr_name: str | None = None,
    freeze_lm_embeddings: bool = False,
    cache_dir: str | None = None,
    gradient_checkpointing: bool | str = False,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    **flamingo_kwargs,
):
    """Build an OpenFlamingo model, its image processor and its tokenizer.

    Args:
        clip_vision_encoder_path: open_clip model name, e.g. "ViT-L-14".
        clip_vision_encoder_pretrained: open_clip pretrained tag (e.g. "openai"), a local weights
            file, or None for random initialisation.
        lang_encoder_path: Hugging Face model id, local folder, Hugging Face cache folder
            (`models--ORG--NAME`) or `.gguf` file of the LM.
        tokenizer_path: the same for the tokenizer.
        cross_attn_every_n_layers: insert cross-attention before every n-th decoder layer.
        use_local_files: only read local files (`local_files_only`).
        decoder_layers_attr_name: dotted path of the decoder layers, for LM families that are not
            in `open_flamingo.src.lm_registry`.
        freeze_lm_embeddings: keep the LM input embeddings frozen.
        cache_dir: download cache for open_clip and Hugging Face.
        gradient_checkpointing: recompute activations in backward to save memory: True or
            "full" (whole layers), or "selective" (elementwise ops only, no extra matmuls).
        trust_remote_code: allow Hugging Face remote code (upstream always enabled it; here it
            is opt-in).
        dtype: the dtype of the whole model, e.g. `torch.bfloat16` or "bfloat16". The LM is
            read from disk in it (a 9B's LM in float32 needs about 36 GB of RAM), the rest is
            cast to it. Default float32, upstream's numerics. `torch_dtype` is the same
            argument under the name older Hugging Face code uses.
        device_map: where the LM's layers go, as `from_pretrained` takes it ("auto", a device,
            or a dict; needs accelerate). The vision encoder and perceiver then go to the
            device of the LM's input embedding and each cross-attention block beside the
            decoder layer it precedes (`src/placement.py`). Default: everything on the CPU.
        **flamingo_kwargs: passed to `Flamingo`.

    Returns:
        (model, image_processor, tokenizer): the Flamingo model (in `dtype`, frozen except the
        perceiver, cross-attention and embeddings), open_clip's evaluation transform, and the
        tokenizer with Flamingo's special tokens.

    Example:
        >>> model, image_processor, tokenizer = create_model_and_transforms(
        ...     "ViT-L-14", "openai", "anas-awadalla/mpt-1b-redpajama-200b",
        ...     "anas-awadalla/mpt-1b-redpajama-200b", cross_attn_every_n_layers=1)
    """
    dtype = model_dtype(dtype, torch_dtype)
    # checked before anything loads: a wrong path fails in seconds, not after the vision tower
    lang_encoder_path = resolve_pretrained_path(lang_encoder_path)
    tokenizer_path = resolve_pretrained_path(tokenizer_path)
    clip_model, _, image_processor = open_clip.create_model_and_transforms(
        clip_vision_encoder_path,
        pretrained=clip_vision_encoder_pretrained,
        cache_dir=cache_dir,
    )
    vision_encoder = clip_model.visual
    vis_dim = open_clip.get_model_config(clip_vision_encoder_path)["vision_cfg"]["width"]

    text_tokenizer = load_flamingo_tokenizer(
        tokenizer_path,
        use_local_files=use_local_files,
        trust_remote_code=trust_remote_code,
        cache_dir=cache_dir,
    )

    placement = {} if device_map is None else {"device_map": device_map}
    lang_encoder = load_causal_lm(  # MosaicGPT / MPT natively, others via AutoModelForCausalLM
        lang_encoder_path,
        local_files_only=use_local_files,
        trust_remote_code=trust_remote_code,
        cache_dir=cache_dir,
        dtype=dtype,
        **placement,
    )
    model = assemble_flamingo(
        vision_encoder,
        vis_dim,
        lang_encoder,
        text_tokenizer,
        cross_attn_every_n_layers=cross_attn_every_n_layers,
        freeze_lm_embeddings=freeze_lm_embeddings,
        gradient_checkpointing=gradient_checkpointing,
        decoder_layers_attr_name=decoder_layers_attr_name,
        **flamingo_kwargs,
    )
    # the LM was read in `dtype` (its float32 buffers, such as RoPE's, as transformers keeps
    # them); the parts built here follow it
    for part in (model.vision_encoder, model.perceiver, model.lang_encoder.gated_cross_attn_layers):
        part.to(dtype)
    if device_map is not None:
        place_beside_lm(model)
    # what save_pretrained records (the open_clip name is needed to rebuild the vision tower)
    model.created_from = {
        "clip_vision_encoder_path": clip_vision_encoder_path,
        "clip_vision_encoder_pretrained": clip_vision_encoder_pretrained,
        "lang_encoder_path": lang_encoder_path,
        "tokenizer_path": tokenizer_path,
    }
    return model, image_processor, text_tokenizer
