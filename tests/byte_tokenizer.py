"""A byte-level tokenizer for tests: one token per byte, plus EOS, no merges.

Imports only `tokenizers` / `transformers`, so the upstream reference script can use it too.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def save_byte_tokenizer(path: Path) -> Path:
    """Save the tokenizer to `path`: ids 0-255 are bytes, 256 is EOS."""
    byte_tokens = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(byte_tokens))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS)
    tokenizer.save_pretrained(path)
    return path
