"""The demo's vision encoder: a tiny open_clip ViT taught to see the synthetic shapes.

OpenFlamingo starts from a pretrained CLIP: its Perceiver and gated cross-attention learn to read
features that already say what an image shows. No package ships CLIP weights, and a random-init
tower says little: its patch tokens are mostly position embedding and grey background (mean
cosine similarity 0.88 between two shapes' tokens). Trained on those for the demo's 150 CPU
steps, the gates stayed within ±0.07 and every held-out image got the same caption.

So the demo gives its tower the role of CLIP's pretraining in a few hundred CPU steps (about 15
s): from its patch tokens (what the Perceiver reads), linear heads name the shape, colour, size
and position of freshly drawn shapes. The heads are then dropped and the
tower is frozen, as in Flamingo. The drawings come from their own random stream: they share the
corpus's attribute combinations, as CLIP's data shares LAION's concepts, but not its images.
"""

import random

import torch
import torch.nn.functional as F
from torch import nn

from open_flamingo.data.synthetic import COLORS, POSITIONS, SHAPES, SIZES, draw_shape, random_spec

# attribute -> its values; a head per attribute predicts the value's index
ATTRIBUTE_VALUES = {
    "shape": list(SHAPES),
    "color": sorted(COLORS),
    "size": list(SIZES),
    "position": list(POSITIONS),
}


def drawn_shapes(
    count: int, preprocess, image_size: int, seed: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`count` freshly drawn shapes: pixels (count, 3, H, W) after `preprocess`, and per
    attribute the value indices (count,)."""
    rng = random.Random(f"shapes-vision-{seed}")
    specs = [random_spec(rng) for _ in range(count)]
    pixels = torch.stack([preprocess(draw_shape(spec, image_size)) for spec in specs])
    labels = {
        name: torch.tensor([values.index(getattr(spec, name)) for spec in specs])
        for name, values in ATTRIBUTE_VALUES.items()
    }
    return pixels, labels


def pretrain_visual(
    visual: nn.Module,
    preprocess,
    *,
    steps: int,
    seed: int,
    image_size: int = 64,
    num_images: int = 4096,
    num_held_out: int = 512,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
) -> dict[str, float]:
    """Train open_clip's `visual` tower in place to name the shapes' attributes; returns the
    accuracy per attribute on `num_held_out` drawings it never trained on."""
    torch.manual_seed(seed)
    pixels, labels = drawn_shapes(num_images + num_held_out, preprocess, image_size, seed)
    visual.output_tokens = True
    features = visual(pixels[:1])[1][0].numel()  # patches x width
    heads = nn.ModuleDict({n: nn.Linear(features, len(v)) for n, v in ATTRIBUTE_VALUES.items()})
    optimizer = torch.optim.AdamW([*visual.parameters(), *heads.parameters()], lr=learning_rate)

    def logits(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = visual(batch)[1].flatten(1)  # (B, patches, width) -> (B, patches * width)
        return {name: head(tokens) for name, head in heads.items()}

    visual.train()
    for _ in range(steps):
        index = torch.randint(0, num_images, (batch_size,))
        predicted = logits(pixels[index])
        loss = sum(F.cross_entropy(predicted[name], labels[name][index]) for name in heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    visual.eval()
    with torch.no_grad():
        predicted = logits(pixels[num_images:])
    return {
        name: (predicted[name].argmax(dim=1) == labels[name][num_images:]).float().mean().item()
        for name in heads
    }
