"""Where each Hugging Face causal-LM family keeps its decoder layers.

An explicit table keyed by `config.model_type`. A family that is not listed needs
`decoder_layers_attr_name` (the dotted path of the decoder-layer list, e.g. "model.layers").
"""

from torch import nn

DECODER_LAYERS_BY_MODEL_TYPE: dict[str, str] = {
    "mpt": "transformer.blocks",
    # MPT-1B-RedPajama's remote-code model (OpenFlamingo-3B's LM), if one is passed in;
    # load_causal_lm (mosaic_gpt.py) loads it as transformers' MPT, model_type "mpt".
    "mosaic_gpt": "transformer.blocks",
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "opt": "model.decoder.layers",
    "gpt_neox": "gpt_neox.layers",
    "gptj": "transformer.h",
    "gpt_neo": "transformer.h",
}


def infer_decoder_layers_attr_name(lang_encoder: nn.Module) -> str:
    """The dotted path of `lang_encoder`'s decoder-layer list, looked up by model type."""
    model_type = getattr(getattr(lang_encoder, "config", None), "model_type", None)
    if model_type in DECODER_LAYERS_BY_MODEL_TYPE:
        return DECODER_LAYERS_BY_MODEL_TYPE[model_type]
    known = ", ".join(sorted(DECODER_LAYERS_BY_MODEL_TYPE))
    raise ValueError(
        f"Cannot tell where the decoder layers of {type(lang_encoder).__name__} "
        f"(model_type={model_type!r}) are. Pass decoder_layers_attr_name, the dotted path of its "
        f'decoder-layer ModuleList (for example "model.layers"). Known model types: {known}.'
    )


def get_submodule_by_path(root: nn.Module, path: str) -> nn.Module:
    """`root.a.b.c` for path "a.b.c", with an error that names the missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(
                f"{type(root).__name__} has no attribute path {path!r} (missing {part!r}); "
                "check decoder_layers_attr_name."
            )
        module = getattr(module, part)
    return module


def lm_hidden_size(config) -> int:
    """Hidden width of the LM: `d_model` for MPT-style configs, else `hidden_size`."""
    for name in ("d_model", "hidden_size", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"Cannot read the hidden size from {type(config).__name__}")
