"""RICES (Yang et al. 2022): demonstrations are the training items whose CLIP image features are
most similar (cosine) to the query image's, as in OpenFlamingo's evaluation.

Shapes: N training items, B queries, D CLIP embedding width, k demonstrations.
"""

from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from PIL import Image
from tqdm import tqdm

from open_flamingo.src.pretrained_paths import open_clip_pretrained

# --cached_demonstration_features DIR holds one file per dataset, named as upstream's
RICES_FEATURE_FILES = {
    "flickr": "flickr30.pkl",
    "coco": "coco.pkl",
    "vqav2": "vqav2.pkl",
    "ok_vqa": "ok_vqa.pkl",
    "vizwiz": "vizwiz.pkl",
    "textvqa": "textvqa.pkl",
    "imagenet": "imagenet.pkl",
    "hateful_memes": "hateful_memes.pkl",
}

ImageEncoder = Callable[[list[Image.Image]], torch.Tensor]  # B images -> (B, D) unit vectors


def clip_image_encoder(
    vision_encoder_path: str, vision_encoder_pretrained: str | None, device="cpu"
) -> ImageEncoder:
    """An open_clip model's `encode_image`, L2-normalised, as a function of PIL images."""
    torch.manual_seed(0)  # identical weights on every process when randomly initialised
    model, _, preprocess = open_clip.create_model_and_transforms(
        vision_encoder_path, pretrained=open_clip_pretrained(vision_encoder_pretrained)
    )
    model = model.to(device).eval()

    @torch.no_grad()
    def encode(images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([preprocess(image) for image in images]).to(device)  # (B, C, H, W)
        features = model.encode_image(pixels).float()  # (B, D)
        return (features / features.norm(dim=-1, keepdim=True)).cpu()

    return encode


def compute_features(
    dataset, encode: ImageEncoder, batch_size: int, desc: str = "RICES features"
) -> torch.Tensor:
    """(N, D) normalised image features of every item of `dataset`, in dataset order."""
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc):
        indices = range(start, min(start + batch_size, len(dataset)))
        chunks.append(encode([dataset[i]["image"] for i in indices]))
    return torch.cat(chunks)


class RICES:
    """Retrieval of in-context examples by image similarity.

    Args:
        features: (N, D) L2-normalised features of the training items (dataset order).
        encode: maps query images to (B, D) L2-normalised features with the same model.
    """

    def __init__(self, features: torch.Tensor, encode: ImageEncoder):
        if features.ndim != 2:
            raise ValueError(f"RICES features must be (N, D), got {tuple(features.shape)}")
        self.features = features.float()
        self.encode = encode

    @classmethod
    def for_dataset(
        cls,
        dataset,
        dataset_name: str,
        encode: ImageEncoder,
        batch_size: int,
        cached_features_dir: str | None = None,
    ) -> "RICES":
        """Features from `cached_features_dir/<name>.pkl` (scripts/cache_rices_features.py),
        or computed now over `dataset`."""
        if cached_features_dir is None:
            features = compute_features(dataset, encode, batch_size, f"RICES {dataset_name}")
            return cls(features, encode)
        path = Path(cached_features_dir) / RICES_FEATURE_FILES[dataset_name]
        if not path.is_file():
            raise FileNotFoundError(
                f"No cached RICES features for {dataset_name}: {path} (make it with "
                "scripts/cache_rices_features.py)"
            )
        features = torch.load(path, map_location="cpu", weights_only=True)
        if features.shape[0] != len(dataset):
            raise ValueError(
                f"{path} has features of {features.shape[0]} items but the {dataset_name} "
                f"training set has {len(dataset)}: recompute them for this split"
            )
        return cls(features, encode)

    def find_indices(self, images: list[Image.Image], num_examples: int) -> list[list[int]]:
        """Per query image, the `num_examples` most similar training items, least similar
        first (the most similar sits next to the query, as upstream orders them)."""
        if num_examples > len(self.features):
            raise ValueError(
                f"{num_examples} demonstrations requested, only {len(self.features)} items"
            )
        query = self.encode(images).float()  # (B, D)
        similarity = query @ self.features.T  # (B, N)
        top = similarity.argsort(dim=-1, descending=True, stable=True)[:, :num_examples]
        return [row.flip(0).tolist() for row in top]
