"""A whole Flamingo in one folder: `save_pretrained`, `from_pretrained`, `push_to_hub`.

Layout (everything a reload needs, nothing fetched from a hub):

    open_flamingo_config.json   vision tower name and preprocessing, interval, token ids, ...
    flamingo.safetensors        vision encoder, perceiver, gated cross-attention
    lang_encoder/               the LM, as its own Hugging Face folder (config.json,
                                model.safetensors), in its native key names
    tokenizer/                  the tokenizer with Flamingo's special tokens, when given

The LM is kept as a plain Hugging Face folder (the decoder-layer wrappers and the cross-attention
blocks removed from its keys) so that the LM's own loader reads it: transformers' sharding, tied
weights, dtype and `device_map` handling, and the native MPT with QK-LayerNorm for MosaicGPT/MPT.
The released `checkpoint.pt` format (trainable weights only) is unchanged; this is the other
format users ask for (mlfoundations/open_flamingo #130, #133, #234).
"""

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from .mosaic_gpt import load_causal_lm
from .mpt_attention import use_sdpa_for_mpt
from .placement import place_beside_lm

CONFIG_FILE = "open_flamingo_config.json"
PARTS_FILE = "flamingo.safetensors"
LM_DIR = "lang_encoder"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
PARTS = ("vision_encoder.", "perceiver.", "lang_encoder.gated_cross_attn_layers.")


@dataclass(frozen=True)
class FlamingoFolderConfig:
    """`open_flamingo_config.json`. The `*_source` fields record where the parts first came from
    (provenance only: a reload reads this folder)."""

    clip_vision_encoder_path: str
    image_preprocess: dict
    vis_dim: int
    cross_attn_every_n_layers: int
    decoder_layers_attr_name: str
    eoc_token_id: int
    media_token_id: int
    freeze_lm_embeddings: bool
    clip_vision_encoder_source: str | None = None
    lang_encoder_source: str | None = None
    tokenizer_source: str | None = None
    format_version: int = FORMAT_VERSION


def lm_state_dict(model) -> dict[str, torch.Tensor]:
    """The LM's weights in its native key names: `<layers>.N.decoder_layer.x` -> `<layers>.N.x`,
    the cross-attention blocks left out."""
    wrapped = f"{model.decoder_layers_attr_name}."
    state = {}
    for key, tensor in model.lang_encoder.state_dict().items():
        if key.startswith("gated_cross_attn_layers."):
            continue
        if key.startswith(wrapped):
            index, _, rest = key[len(wrapped) :].partition(".")
            key = f"{wrapped}{index}.{rest.removeprefix('decoder_layer.')}"
        state[key] = tensor
    return state


def save_flamingo(model, folder, tokenizer=None, *, clip_vision_encoder_path=None) -> Path:
    """Write `model` (and `tokenizer`, recommended) to `folder`; see the module docstring.

    `clip_vision_encoder_path` (the open_clip model name) is needed only for a model that
    `create_model_and_transforms` did not build, which records it."""
    created = getattr(model, "created_from", {})
    arch = clip_vision_encoder_path or created.get("clip_vision_encoder_path")
    if arch is None:
        raise ValueError(
            "save_pretrained needs the vision tower's open_clip model name for this model (it "
            "was not built by create_model_and_transforms): pass clip_vision_encoder_path="
        )
    preprocess = getattr(model.vision_encoder, "preprocess_cfg", None)
    if preprocess is None:
        raise ValueError("the vision encoder has no open_clip `preprocess_cfg` to record")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = FlamingoFolderConfig(
        clip_vision_encoder_path=arch,
        image_preprocess={k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()},
        vis_dim=model.vis_dim,
        cross_attn_every_n_layers=model.cross_attn_every_n_layers,
        decoder_layers_attr_name=model.decoder_layers_attr_name,
        eoc_token_id=model.eoc_token_id,
        media_token_id=model.media_token_id,
        freeze_lm_embeddings=not model.lang_encoder.get_input_embeddings().weight.requires_grad,
        clip_vision_encoder_source=created.get("clip_vision_encoder_pretrained"),
        lang_encoder_source=created.get("lang_encoder_path"),
        tokenizer_source=created.get("tokenizer_path"),
    )
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    parts = {
        key: tensor.detach().contiguous()
        for key, tensor in model.state_dict().items()
        if key.startswith(PARTS)
    }
    save_file(parts, folder / PARTS_FILE, metadata={"format": "pt"})
    model.lang_encoder.save_pretrained(folder / LM_DIR, state_dict=lm_state_dict(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    return folder


def read_folder_config(folder) -> FlamingoFolderConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_FILE}: it is not a folder written by "
            "Flamingo.save_pretrained (a released checkpoint.pt loads with "
            "create_model_and_transforms + load_checkpoint)"
        )
    raw = json.loads(path.read_text())
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {raw.get('format_version')!r}; this version of open_flamingo "
            f"reads {FORMAT_VERSION}"
        )
    return FlamingoFolderConfig(**raw)


def load_flamingo(folder, *, dtype=None, device_map=None, **flamingo_kwargs):
    """The Flamingo saved in `folder` and its image processor: `(model, image_processor)`.

    dtype: as `create_model_and_transforms`'s (default: the dtypes the weights were saved in).
    device_map: passed to the LM's `from_pretrained` (e.g. "auto"; needs accelerate); the other
        parts go beside the LM parts they work with (`src/placement.py`).
    **flamingo_kwargs: passed to `Flamingo` (e.g. gradient_checkpointing).
    """
    from .factory import set_trainable_parameters
    from .flamingo import Flamingo

    folder = Path(folder)
    config = read_folder_config(folder)
    parts = load_file(folder / PARTS_FILE)
    lm_kwargs = {"dtype": dtype if dtype is not None else "auto"}
    if device_map is not None:
        lm_kwargs["device_map"] = device_map
    lang_encoder = load_causal_lm(str(folder / LM_DIR), **lm_kwargs)
    vision_encoder = open_clip.create_model(config.clip_vision_encoder_path, pretrained=None).visual
    preprocess = PreprocessCfg(**config.image_preprocess)
    vision_encoder.preprocess_cfg = asdict(preprocess)
    use_sdpa_for_mpt(lang_encoder)
    model = Flamingo(
        vision_encoder,
        lang_encoder,
        eoc_token_id=config.eoc_token_id,
        media_token_id=config.media_token_id,
        vis_dim=config.vis_dim,
        cross_attn_every_n_layers=config.cross_attn_every_n_layers,
        decoder_layers_attr_name=config.decoder_layers_attr_name,
        **flamingo_kwargs,
    )
    expected = {key for key in model.state_dict() if key.startswith(PARTS)}
    if expected != parts.keys():
        missing, unexpected = sorted(expected - parts.keys()), sorted(parts.keys() - expected)
        raise ValueError(
            f"{folder / PARTS_FILE} does not fit the model its config describes (missing: "
            f"{missing[:5]}, unexpected: {unexpected[:5]}); was the folder edited by hand?"
        )
    if dtype is not None:
        parts = {k: t.to(dtype) if t.is_floating_point() else t for k, t in parts.items()}
    model.load_state_dict(parts, strict=False, assign=True)
    if device_map is not None:
        place_beside_lm(model)
    set_trainable_parameters(model, freeze_lm_embeddings=config.freeze_lm_embeddings)
    model.created_from = {"flamingo_folder": str(folder)}
    return model, image_transform_v2(preprocess, is_train=False)


def load_model_and_transforms(folder, *, dtype=None, device_map=None, **flamingo_kwargs):
    """`(model, image_processor, tokenizer)` from a folder written by `Flamingo.save_pretrained`
    with a tokenizer: the same triple `create_model_and_transforms` returns."""
    tokenizer_dir = Path(folder) / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"{folder} holds no {TOKENIZER_DIR}/: it was saved without one. Use "
            "Flamingo.from_pretrained for the model alone, or save again with "
            "model.save_pretrained(folder, tokenizer=tokenizer)"
        )
    model, image_processor = load_flamingo(
        folder, dtype=dtype, device_map=device_map, **flamingo_kwargs
    )
    return model, image_processor, AutoTokenizer.from_pretrained(tokenizer_dir)


def push_flamingo_to_hub(
    model,
    repo_id: str,
    tokenizer=None,
    *,
    private=None,
    token=None,
    commit_message="Upload OpenFlamingo model",
    **save_kwargs,
) -> str:
    """Save to a temporary folder and upload it to the Hugging Face Hub repository `repo_id`
    (created if needed). Needs `huggingface_hub` and a token with write access."""
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ImportError(
            "push_to_hub needs huggingface_hub: pip install huggingface_hub"
        ) from error
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_flamingo(model, folder, tokenizer, **save_kwargs)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message
        )
    return str(commit)


class FlamingoFolderMixin:
    """`save_pretrained` / `from_pretrained` / `push_to_hub` on `Flamingo`."""

    def save_pretrained(self, folder, tokenizer=None, *, clip_vision_encoder_path=None) -> Path:
        """Write the whole model (and `tokenizer`) to `folder`; `Flamingo.from_pretrained`
        (model) or `open_flamingo.load_model_and_transforms` (model, image processor,
        tokenizer) reload it with identical outputs."""
        return save_flamingo(
            self, folder, tokenizer, clip_vision_encoder_path=clip_vision_encoder_path
        )

    @classmethod
    def from_pretrained(cls, folder, *, dtype=None, device_map=None, **flamingo_kwargs):
        """The model saved in `folder` by `save_pretrained` (see `load_flamingo`)."""
        return load_flamingo(folder, dtype=dtype, device_map=device_map, **flamingo_kwargs)[0]

    def push_to_hub(self, repo_id: str, tokenizer=None, **kwargs) -> str:
        """Upload the `save_pretrained` folder to the Hugging Face Hub (`push_flamingo_to_hub`)."""
        return push_flamingo_to_hub(self, repo_id, tokenizer, **kwargs)
