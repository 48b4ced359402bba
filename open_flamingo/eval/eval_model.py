"""The `--model open_flamingo` evaluation wrapper: batched generation and class-name scoring.

Shapes: B queries, T images per query (demonstrations + query), C classes, n class-name tokens,
L prompt tokens, V vocabulary.
"""

import contextlib
import copy
import logging

import torch
from PIL import Image

from open_flamingo import create_model_and_transforms
from open_flamingo.src.checkpoint import load_checkpoint
from open_flamingo.src.checkpoint_fit import CheckpointMismatchError
from open_flamingo.src.precision import PRECISIONS

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 2000  # upstream's tokenizer truncation length
CLASS_SCORING_BYTES = 1 << 30  # memory for one chunk of class names (expanded KV cache + logits)


def classes_per_chunk(num_classes: int, bytes_per_class: int) -> int:
    """How many class names to score at once within `CLASS_SCORING_BYTES` (at least one)."""
    return max(1, min(num_classes, CLASS_SCORING_BYTES // bytes_per_class))


class EvalModel:
    """An OpenFlamingo model with its image processor and tokenizer, in eval mode on `device`."""

    def __init__(self, model, image_processor, tokenizer, device="cpu", precision="fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"--precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        dtype, self.autocast_dtype = PRECISIONS[precision]
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype=dtype).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # generation continues every row at the end

    @classmethod
    def from_args(cls, args, device) -> "EvalModel":
        """Build from the CLI flags: `create_model_and_transforms` + `--checkpoint_path`."""
        # the same weights on every process, also where some are randomly initialised
        torch.manual_seed(0)
        model, image_processor, tokenizer = create_model_and_transforms(
            args.vision_encoder_path,
            args.vision_encoder_pretrained,
            args.lm_path,
            args.lm_tokenizer_path or args.lm_path,
            cross_attn_every_n_layers=args.cross_attn_every_n_layers,
            trust_remote_code=args.trust_remote_code,
        )
        if args.checkpoint_path:
            try:
                load_checkpoint(model, args.checkpoint_path)
            except CheckpointMismatchError as error:
                raise SystemExit(f"--checkpoint_path {args.checkpoint_path}: {error}") from None
        else:
            logger.warning("No --checkpoint_path: evaluating untrained Flamingo layers.")
        return cls(model, image_processor, tokenizer, device=device, precision=args.precision)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ inputs
    def prepare_images(self, batch_images: list[list[Image.Image]]) -> torch.Tensor:
        """Per query a list of images -> (B, T_max, 1, C, H, W); missing images are zeros."""
        processed = [[self.image_processor(image) for image in images] for images in batch_images]
        first = next((x for images in processed for x in images), None)
        if first is None:
            raise ValueError("Every query needs at least one image.")
        num_images = max(len(images) for images in processed)
        vision_x = torch.zeros((len(processed), num_images, 1, *first.shape), dtype=first.dtype)
        for row, images in enumerate(processed):
            for col, pixels in enumerate(images):
                vision_x[row, col, 0] = pixels
        return vision_x.to(self.device)

    def prepare_text(self, batch_text: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (B, L) input ids and attention mask."""
        encoded = self.tokenizer(
            batch_text,
            padding="longest",
            truncation=True,
            max_length=MAX_PROMPT_TOKENS,
            return_tensors="pt",
        )
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def get_outputs(
        self,
        batch_text: list[str],
        batch_images: list[list[Image.Image]],
        min_generation_length: int = 0,
        max_generation_length: int = 20,
        num_beams: int = 3,
        length_penalty: float = 0.0,
    ) -> list[str]:
        """Generate a continuation per prompt (images encoded once for the batch); returns the
        new text only, special tokens dropped."""
        vision_x = self.prepare_images(batch_images)
        input_ids, attention_mask = self.prepare_text(batch_text)
        with self.autocast():
            generated = self.model.generate(
                vision_x,
                input_ids,
                attention_mask,
                min_new_tokens=min_generation_length,
                max_new_tokens=max_generation_length,
                num_beams=num_beams,
                length_penalty=length_penalty,
            )
        new_tokens = generated[:, input_ids.shape[1] :]  # (B, new)
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    # ------------------------------------------------------------------ classification
    def _class_tokens(self, class_names: list[str]) -> list[list[int]]:
        return [self.tokenizer(name, add_special_tokens=False)["input_ids"] for name in class_names]

    @torch.inference_mode()
    def get_rank_classifications(
        self,
        batch_text: list[str],
        batch_images: list[list[Image.Image]],
        all_class_names: list[str],
        use_cache: bool = True,
        normalize_length: bool = True,
    ) -> torch.Tensor:
        """(B, C) log-likelihood of each class name following each prompt (mean over the name's
        tokens if `normalize_length`, else the sum), on the CPU in float32.

        With `use_cache` the prompts run once and their KV cache is shared by all class names,
        scored in chunks of as many (query, class) rows as fit `CLASS_SCORING_BYTES`; without
        it each class runs over prompt + name, one at a time, against the prompts' media
        encoded once.
        """
        vision_x = self.prepare_images(batch_images)
        ctx_ids, ctx_mask = self.prepare_text(batch_text)
        class_tokens = self._class_tokens(all_class_names)
        with self.autocast():
            if use_cache:
                scores = self._score_with_cache(ctx_ids, ctx_mask, vision_x, class_tokens)
            else:
                scores = self._score_without_cache(ctx_ids, ctx_mask, vision_x, class_tokens)
        if normalize_length:
            return scores / torch.tensor([len(t) for t in class_tokens], dtype=torch.float32)
        return scores

    def _score_without_cache(self, ctx_ids, ctx_mask, vision_x, class_tokens) -> torch.Tensor:
        self.model.cache_media(input_ids=ctx_ids, vision_x=vision_x)
        try:
            columns = []
            for tokens in class_tokens:
                names = torch.tensor(tokens, device=self.device).expand(ctx_ids.shape[0], -1)
                lang_x = torch.cat([ctx_ids, names], dim=1)  # (B, L + n)
                mask = torch.cat([ctx_mask, torch.ones_like(names)], dim=1)
                out = self.model(None, lang_x, mask, clear_conditioned_layers=False)
                logits = out.logits[:, -len(tokens) - 1 : -1].float()  # (B, n, V) predict the name
                logprobs = logits.log_softmax(-1).gather(2, names[:, :, None]).squeeze(-1)
                columns.append(logprobs.sum(1).cpu())
        finally:
            self.model.uncache_media()
        return torch.stack(columns, dim=1)  # (B, C) summed log-probs

    def _class_name_media(self, ctx_ids: torch.Tensor, vision_x: torch.Tensor):
        """What the class names following the prompts attend to: (input_ids, vision_x) for
        `cache_media`. Each prompt's last image only, with one `<image>` per row, when that is
        all its last tokens see: tokens after the last `<image>` attend to that image only
        (only_attend_immediate_media), so the scores are unchanged while the cross-attention of
        the (query, class) rows does not project the keys / values of every demonstration
        image (T times less work). Otherwise the prompts' own."""
        blocks = [b for b in self.model.lang_encoder.gated_cross_attn_layers if b is not None]
        counts = (ctx_ids == self.model.media_token_id).sum(dim=1)  # (B,) images per prompt
        if (
            not all(block.attn.only_attend_immediate_media for block in blocks)
            or (counts == 0).any()
            or (counts > vision_x.shape[1]).any()
        ):
            return ctx_ids, vision_x
        rows = torch.arange(len(counts), device=counts.device)
        last_image = vision_x[rows, counts - 1][:, None]  # (B, 1, 1, C, H, W)
        one_image = torch.full_like(ctx_ids[:, :1], self.model.media_token_id)  # (B, 1)
        return one_image, last_image

    def _score_with_cache(self, ctx_ids, ctx_mask, vision_x, class_tokens) -> torch.Tensor:
        b, ctx_len = ctx_ids.shape
        out = self.model(vision_x, ctx_ids, ctx_mask, use_cache=True)
        ctx_cache = out.past_key_values
        last_logits = out.logits[:, -1].float()  # (B, V): predicts each name's first token
        if ctx_cache is None or ctx_cache.get_seq_length() != ctx_len:
            logger.warning("This LM's KV cache cannot be shared; scoring without it.")
            return self._score_without_cache(ctx_ids, ctx_mask, vision_x, class_tokens)

        num_classes, longest = len(class_tokens), max(len(t) for t in class_tokens)
        cache_bytes = sum(
            layer.keys.numel() * layer.keys.element_size() * 2 for layer in ctx_cache.layers
        )
        row_bytes = cache_bytes // b + 3 * longest * last_logits.shape[-1] * 4
        chunk = classes_per_chunk(num_classes, row_bytes * b)
        pad_id = self.tokenizer.pad_token_id
        sums = []
        self.model.cache_media(*self._class_name_media(ctx_ids, vision_x))
        try:
            for start in range(0, num_classes, chunk):
                names = class_tokens[start : start + chunk]
                k = len(names)  # the last chunk may be shorter
                ids = torch.full((k, longest), pad_id, dtype=torch.long)
                real = torch.zeros((k, longest), dtype=torch.long)
                for j, tokens in enumerate(names):
                    ids[j, : len(tokens)] = torch.tensor(tokens)
                    real[j, : len(tokens)] = 1
                ids, real = ids.to(self.device).repeat(b, 1), real.to(self.device).repeat(b, 1)
                # rows are (query, class): query-major, as the cache and media are repeated
                cache = copy.deepcopy(ctx_cache)
                cache.batch_repeat_interleave(k)
                mask = torch.cat([ctx_mask.repeat_interleave(k, 0), real], dim=1)
                out = self.model(
                    None, ids, mask, clear_conditioned_layers=False, past_key_values=cache
                )
                logits = torch.cat(
                    [last_logits.repeat_interleave(k, 0)[:, None], out.logits[:, :-1].float()],
                    dim=1,
                )  # (B*k, n, V): logits[:, t] predicts ids[:, t]
                logprobs = logits.log_softmax(-1).gather(2, ids[:, :, None]).squeeze(-1)
                sums.append((logprobs * real).sum(1).view(b, k).cpu())
                del cache, out, logits
        finally:
            self.model.uncache_media()
        return torch.cat(sums, dim=1)  # (B, C) summed log-probs
