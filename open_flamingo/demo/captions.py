"""The demo's captioning stage: a trained checkpoint captions held-out images after NUM_SHOTS
solved examples, and a table shows which attributes each caption got right."""

import json
from pathlib import Path

from open_flamingo.demo.settings import NUM_SHOTS, VISION_ENCODER, Settings

ATTRIBUTES = ("color", "shape", "size", "position")


def attributes(caption: str) -> dict[str, str | None]:
    """The colour, shape, size and position words that a caption names (None: not named)."""
    from open_flamingo.data.synthetic import COLORS, POSITIONS, SHAPES, SIZES

    text = f" {caption.lower().replace('.', ' ')} "
    found = {}
    for attribute, words in zip(ATTRIBUTES, (COLORS, SHAPES, SIZES, POSITIONS), strict=True):
        named = [word for word in words if f" {word} " in text]
        found[attribute] = named[0] if len(named) == 1 else None
    return found


def split_shots(items: list[dict], num_queries: int) -> tuple[list[dict], list[dict]]:
    """NUM_SHOTS solved examples that differ in every attribute (so that the prompt does not
    suggest one colour or shape), and the first `num_queries` other items."""
    shots = [items[0]]
    for item in items[1:]:
        if len(shots) == NUM_SHOTS:
            break
        if all(item[a] != shot[a] for shot in shots for a in ATTRIBUTES):
            shots.append(item)
    if len(shots) < NUM_SHOTS:
        shots = items[:NUM_SHOTS]
    queries = [item for item in items if item not in shots][:num_queries]
    return shots, queries


def caption_held_out(
    settings: Settings, lm: Path, vision: Path, checkpoint: Path, corpus: dict
) -> list[dict]:
    """Load `checkpoint` into a fresh model and caption the held-out images after NUM_SHOTS
    solved examples. Returns one row per image: truth, generated text and attribute hits."""
    import torch
    from PIL import Image

    from open_flamingo import create_model_and_transforms
    from open_flamingo.src.checkpoint import load_checkpoint, read_checkpoint

    model, image_processor, tokenizer = create_model_and_transforms(
        VISION_ENCODER,
        str(vision),
        str(lm),
        str(lm),
        cross_attn_every_n_layers=settings.cross_attn_every_n_layers,
        use_local_files=True,
    )
    weights = read_checkpoint(checkpoint)
    result = load_checkpoint(model, weights)  # refuses weights that do not fit this model
    if result.unexpected_keys:
        raise SystemExit(f"{checkpoint} has keys this model lacks: {result.unexpected_keys[:5]}")
    print(f"loaded {len(weights)} trained tensors from {checkpoint}")
    model.eval()

    eval_json = Path(corpus["eval_json"])
    items = json.loads(eval_json.read_text())
    shots, queries = split_shots(items, settings.num_captions)

    def pixels(item: dict) -> torch.Tensor:
        with Image.open(eval_json.parent / item["file_name"]) as image:
            return image_processor(image.convert("RGB"))

    shot_pixels = [pixels(item) for item in shots]
    vision_x = torch.stack(
        [torch.stack([*shot_pixels, pixels(item)]) for item in queries]
    ).unsqueeze(2)  # (queries, shots + 1 images, 1 frame, C, H, W)
    prompt = "".join(f"<image>{item['caption']}<|endofchunk|>" for item in shots) + "<image>"
    print(f"prompt: {prompt!r} (+ the query image)")
    encoded = tokenizer([prompt] * len(queries), return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(
            vision_x=vision_x,
            lang_x=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=20,
            num_beams=1,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    rows = []
    for item, tokens in zip(queries, generated, strict=True):
        new = tokenizer.decode(tokens[encoded["input_ids"].shape[1] :], skip_special_tokens=False)
        text = new.split("<|endofchunk|>")[0].replace(tokenizer.pad_token or "\0", "").strip()
        said = attributes(text)
        hits = {attribute: said[attribute] == item[attribute] for attribute in ATTRIBUTES}
        rows.append({"id": item["id"], "truth": item["caption"], "generated": text, "hits": hits})
    return rows


def print_caption_table(rows: list[dict], max_width: int = 48) -> None:
    """truth | generated | the attributes the generated caption got right."""

    def shown(text: str) -> str:
        text = text or "(empty)"
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    truth_width = max(len("truth"), *(len(row["truth"]) for row in rows))
    generated_width = max(len("generated"), *(len(shown(row["generated"])) for row in rows))
    header = f"{'#':>2}  {'truth':<{truth_width}}  {'generated':<{generated_width}}  right"
    print(header)
    print("-" * len(header))
    for index, row in enumerate(rows, 1):
        right = ",".join(a for a in ATTRIBUTES if row["hits"][a]) or "-"
        print(
            f"{index:>2}  {row['truth']:<{truth_width}}  "
            f"{shown(row['generated']):<{generated_width}}  {right}"
        )
    print("-" * len(header))
    chance = {"color": "1/6", "shape": "1/5", "size": "1/2", "position": "1/5"}
    print(
        "right: "
        + ", ".join(
            f"{a} {sum(row['hits'][a] for row in rows)}/{len(rows)} (chance {chance[a]})"
            for a in ATTRIBUTES
        )
    )
