"""A byte-level tokenizer: one token per byte, plus EOS, no merges. It needs no asset, so the
tests, the demo's `--quick` LM and the GPU training runs build their tiny LMs on it.

Imports only `tokenizers` / `transformers`: tests/upstream/dump_upstream.py, which runs on
upstream's stack (transformers 4.46, where `open_flamingo` is upstream's package), loads this
file by its path.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0-255 are the bytes (as ByteLevel's printable stand-ins, sorted), 256 is EOS (also
    BOS)."""
    byte_tokens = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(byte_tokens))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS)


def save_byte_tokenizer(path: Path) -> Path:
    """Save the tokenizer to `path`; returns `path`."""
    byte_tokenizer().save_pretrained(path)
    return path
