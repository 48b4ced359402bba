"""The paths users pass as --lm_path / --tokenizer_path / lang_encoder_path, and the dtype they
ask for: Hugging Face cache folders, missing or wrong folders, `dtype=` / `torch_dtype=`; the
vision encoder's "none" tag."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from open_flamingo import create_model_and_transforms
from open_flamingo.eval.args import parse_args as parse_eval_args
from open_flamingo.src.pretrained_paths import open_clip_pretrained, resolve_pretrained_path
from open_flamingo.train.args import parse_args as parse_train_args
from tiny_models import VISION_ENCODER

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hf_cache_folder(root, *sources, commit=COMMIT):
    """`root/models--org--tiny`, laid out as huggingface_hub's cache: every file of `sources`
    stored once under blobs/<sha256> and linked from snapshots/<commit>/, refs/main -> commit."""
    folder = root / "models--org--tiny"
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for source in sources:
        for file in source.iterdir():
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.copyfile(file, folder / "blobs" / digest)
            (snapshot / file.name).symlink_to(f"../../blobs/{digest}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder


def test_a_hugging_face_cache_folder_loads_as_the_model_it_holds(
    tmp_path, tiny_lm_dirs, byte_tokenizer_dir
):
    cache = hf_cache_folder(tmp_path, tiny_lm_dirs["mpt"], byte_tokenizer_dir)
    assert resolve_pretrained_path(cache) == str(cache / "snapshots" / COMMIT)
    torch.manual_seed(0)
    model, _, tokenizer = create_model_and_transforms(VISION_ENCODER, None, str(cache), str(cache))
    torch.manual_seed(0)
    reference, _, reference_tokenizer = create_model_and_transforms(
        VISION_ENCODER, None, str(tiny_lm_dirs["mpt"]), str(byte_tokenizer_dir)
    )
    assert len(tokenizer) == len(reference_tokenizer) == 260
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def data_flags(root: Path) -> tuple[list[str], list[str]]:
    """(eval, train) flags naming data that exists, as both command lines check before
    anything loads: COCO's four paths, and a shard and an image of each training corpus."""
    for name in ("coco/train2014/0.jpg", "coco/val2014/0.jpg", "docs/0.jsonl", "images/0.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    for name in ("coco/dataset_coco.json", "coco/captions_val2014.json", "pairs/0.tar"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    coco = root / "coco"
    evaluation = ["--eval_coco", "--coco_train_image_dir_path", str(coco / "train2014")]
    evaluation += ["--coco_val_image_dir_path", str(coco / "val2014")]
    evaluation += ["--coco_karpathy_json_path", str(coco / "dataset_coco.json")]
    evaluation += ["--coco_annotations_json_path", str(coco / "captions_val2014.json")]
    train = ["--omnicorpus_shards", str(root / "docs"), "--laion_shards", str(root / "pairs")]
    train += ["--omnicorpus_image_prefix", str(root / "images")]
    return evaluation, train


def test_the_cache_folder_is_accepted_by_both_command_lines(
    tmp_path, tiny_lm_dirs, byte_tokenizer_dir
):
    cache = str(hf_cache_folder(tmp_path, tiny_lm_dirs["mpt"], byte_tokenizer_dir))
    evaluation, train = data_flags(tmp_path / "data")
    args = parse_eval_args(["--lm_path", cache, *evaluation])
    assert args.lm_path == cache
    assert parse_train_args(["--lm_path", cache, *train]).tokenizer_path == cache


def test_none_is_a_randomly_initialised_vision_encoder_on_both_command_lines(
    tmp_path, byte_tokenizer_dir
):
    tags = ("none", "NONE", "", None, "openai", "weights.pt")
    assert [open_clip_pretrained(tag) for tag in tags] == [None] * 4 + ["openai", "weights.pt"]
    lm = ["--lm_path", str(byte_tokenizer_dir)]
    evaluation, train = data_flags(tmp_path)
    for parse, flags in ((parse_eval_args, [*lm, *evaluation]), (parse_train_args, [*lm, *train])):
        assert parse(flags).vision_encoder_pretrained == "openai"
        tagged = parse([*flags, "--vision_encoder_pretrained", "None"])
        assert tagged.vision_encoder_pretrained is None


def test_a_cache_folder_without_refs_main_uses_its_only_snapshot(tmp_path, byte_tokenizer_dir):
    cache = hf_cache_folder(tmp_path, byte_tokenizer_dir)
    (cache / "refs" / "main").unlink()
    assert resolve_pretrained_path(cache) == str(cache / "snapshots" / COMMIT)
    (cache / "snapshots" / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="without refs/main and with 2 snapshots"):
        resolve_pretrained_path(cache)


def test_a_cache_folder_whose_snapshot_is_missing_says_the_download_is_incomplete(
    tmp_path, byte_tokenizer_dir
):
    cache = hf_cache_folder(tmp_path, byte_tokenizer_dir)
    (cache / "refs" / "main").write_text("f" * 40)
    with pytest.raises(FileNotFoundError, match="download was incomplete"):
        resolve_pretrained_path(cache)


def test_the_cache_root_names_the_model_folders_in_it(tmp_path, byte_tokenizer_dir):
    hf_cache_folder(tmp_path, byte_tokenizer_dir)
    with pytest.raises(FileNotFoundError, match="cache root, not one model.*models--org--tiny"):
        resolve_pretrained_path(tmp_path)


@pytest.mark.parametrize(
    "given, message",
    [
        ("missing", "no such file or folder"),
        ("models--org--absent", "no such file or folder"),
        ("not_a_model", "neither a model or tokenizer folder .* it holds notes.txt"),
        ("file", "is a file, not a model folder"),
    ],
)
def test_wrong_paths_say_what_they_are_before_anything_loads(tmp_path, given, message):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / given)
    with pytest.raises(FileNotFoundError, match=message):
        # the vision tower's name is wrong too: the path is checked first
        create_model_and_transforms("no-such-vision-tower", None, path, path)
    with pytest.raises(SystemExit):
        parse_eval_args(["--lm_path", path, "--eval_coco"])


def test_relative_paths_to_missing_folders_are_not_taken_for_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for missing in ("./mpt", "checkpoints/mpt", "models--anas-awadalla--mpt-1b-redpajama-200b"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            resolve_pretrained_path(missing)
    # hub ids pass unchanged to from_pretrained
    for hub_id in ("anas-awadalla/mpt-1b-redpajama-200b", "gpt2"):
        assert resolve_pretrained_path(hub_id) == hub_id


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("value", [torch.bfloat16, "bfloat16", "torch.bfloat16"])
def test_the_model_is_built_in_the_dtype_asked_for(
    keyword, value, tiny_lm_dirs, byte_tokenizer_dir
):
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(
        VISION_ENCODER,
        None,
        str(tiny_lm_dirs["llama"]),
        str(byte_tokenizer_dir),
        **{keyword: value},
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # the LM is read in bfloat16 by transformers itself: weights and float32 buffers (RoPE's
    # inverse frequencies) as its own from_pretrained(dtype=bfloat16) gives them
    native = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama"], dtype=torch.bfloat16)
    ours = model.lang_encoder.model.rotary_emb.inv_freq
    theirs = native.model.rotary_emb.inv_freq
    assert ours.dtype == theirs.dtype == torch.float32 and torch.equal(ours, theirs)
    embedding = model.lang_encoder.get_input_embeddings().weight
    assert torch.equal(embedding[:257], native.get_input_embeddings().weight[:257])


def test_the_default_dtype_is_float32_and_bad_dtypes_are_refused(tiny_lm_dirs, byte_tokenizer_dir):
    lm, tok = str(tiny_lm_dirs["mpt"]), str(byte_tokenizer_dir)
    model, _, _ = create_model_and_transforms(VISION_ENCODER, None, lm, tok)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="disagree"):
        create_model_and_transforms(
            VISION_ENCODER, None, lm, tok, dtype=torch.float16, torch_dtype=torch.bfloat16
        )
    for bad in ("bf16", torch.int8):
        with pytest.raises(ValueError, match="not a floating-point torch dtype"):
            create_model_and_transforms(VISION_ENCODER, None, lm, tok, dtype=bad)
