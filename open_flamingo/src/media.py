"""What the gated cross-attention blocks attend to, and how that advances while decoding.

Two values, with two lifetimes:

* `MediaSession`: the images one `Flamingo` entry point conditions on, from its start to its end
  (`forward`: its one LM call; `generate`: the prompt and every decoding step; `cache_media`:
  until `uncache_media`). Its latents (B, T, n, Dv) are never modified.
* `MediaContext`: what the blocks attend to during one LM call, computed once at the start of
  that call by `MediaSession.context_for` and immutable: the latents for the call's text rows,
  `text_time`, and (while decoding) each block's media keys and values.

`MediaSession.context_for` is also the one step update of decoding: upstream's rule for where an
input's tokens sit relative to the images (`follows_last_image`, below), which needs a per-row
image count carried from call to call.

Shapes: B text rows of the LM call, B_m rows of media, T images per row, n latents, Dv width,
L tokens, h heads, d head dim.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MediaContext:
    """What the gated cross-attention blocks attend to during one LM call.

    latents: (B, T, n, Dv) perceiver latents, row b those of text row b; None in a text-only
        call (`TEXT_ONLY`): the blocks are then skipped and the LM runs as it is.
    text_time: (B, L) long, the 1-based index of the image each token follows (0: none yet);
        None in a text-only call.
    keys_values: per decoder-layer index, that block's keys and values of `latents`
        ((B, h, T*n, d) each; None where there is no block), computed once per session and
        text batch while decoding; None: each block projects `latents` itself.
    """

    latents: torch.Tensor | None
    text_time: torch.Tensor | None
    keys_values: tuple | None = None


class ImageCountBuffer:
    """Where decoding keeps each row's image count: one tensor per model, reused by every
    `generate` call at the same address (marked static, as transformers marks a static KV
    cache), so that a CUDA graph of a decoding step that updates it is recorded once."""

    def __init__(self):
        self.tensor: torch.Tensor | None = None

    def zeroed(self, rows: int, device: torch.device) -> torch.Tensor:
        """The buffer as (rows,) zeros; reallocated when the batch or device changes, or when
        it was made under `torch.inference_mode` and this call is not (it is read-only then)."""
        buffer = self.tensor
        if (
            buffer is None
            or buffer.shape != (rows,)
            or buffer.device != device
            or _read_only(buffer)
        ):
            buffer = self.tensor = torch.zeros(rows, dtype=torch.long, device=device)
            torch._dynamo.mark_static_address(buffer)
        return buffer.zero_()


def _read_only(tensor: torch.Tensor) -> bool:
    """An inference tensor cannot be written outside `torch.inference_mode`."""
    return tensor.is_inference() and not torch.is_inference_mode_enabled()


class MediaSession:
    """The images a Flamingo entry point conditions on, and the image count decoding carries.

    latents: (B_m, T, n, Dv). A text batch of k * B_m rows pairs media row m with text rows
        m*k .. m*k + k - 1 (beams, returned sequences, class names scored per query).
    follows_last_image: upstream's generation / `cache_media` rule. An LM input in which no row
        holds an `<image>` token (a decoding step, text scored against cached media) follows
        the last image counted so far in each row; an input with `<image>` tokens counts its
        own. Without it (`forward`), every input counts only its own `<image>` tokens.
    image_count: (B,) long, with `follows_last_image`: the `<image>` tokens of each row of the
        last input that held any (`cache_media`'s prompt), or None (none yet).
    count_buffer: where decoding keeps that count (`generate`); None: a tensor of its own.
    """

    def __init__(
        self,
        latents: torch.Tensor,
        media_token_id: int,
        *,
        follows_last_image: bool = False,
        image_count: torch.Tensor | None = None,
        count_buffer: ImageCountBuffer | None = None,
    ):
        self.latents = latents
        self.media_token_id = media_token_id
        self.follows_last_image = follows_last_image
        self.image_count = image_count
        self._count_buffer = count_buffer
        self._per_text_batch: tuple | None = None  # (key, latents, keys_values) of the last batch

    @property
    def num_media(self) -> int:
        """T: images per media row."""
        return self.latents.shape[1]

    def context_for(self, input_ids: torch.Tensor, blocks: nn.ModuleList) -> MediaContext:
        """The context of one LM call on `input_ids` (B, L); `blocks` are the gated
        cross-attention blocks by decoder index (None where there is none)."""
        latents, keys_values = self._media_for(input_ids.shape[0], blocks)
        text_time = (input_ids == self.media_token_id).cumsum(dim=-1)  # (B, L)
        if self.follows_last_image:
            text_time = self._advance(text_time)
        return MediaContext(latents, text_time, keys_values)

    # ------------------------------------------------------------------ the step update
    def _advance(self, text_time: torch.Tensor) -> torch.Tensor:
        """Upstream's rule for one LM input whose own image counts are `text_time` (B, L):
        returns the input's text_time and carries the per-row count to the next call.

        When the count has the input's batch (every decoding step), this is written without a
        Python branch on the data and updates the count in place: a compiled decoding step is
        then one graph with no device-to-host sync.
        """
        rows = text_time.shape[0]
        any_image = text_time[:, -1].any()  # () over the whole batch, as upstream
        if self.image_count is None:
            self.image_count = self._zeroed_count(rows, text_time.device)
        elif self.image_count.shape[0] != rows:
            return self._advance_other_batch(text_time, any_image)
        elif not torch.compiler.is_compiling() and _read_only(self.image_count):
            self.image_count = self.image_count.clone()  # cache_media ran under inference_mode
        count = self.image_count
        step_time = torch.where(any_image, text_time, count[:, None])
        count.copy_(torch.where(any_image, text_time[:, -1], count))
        return step_time

    def _advance_other_batch(self, text_time: torch.Tensor, any_image: torch.Tensor):
        """`_advance` for an input of another batch than the count's: text scored against
        cached media, k text rows per counted row. Eager only, never a decoding step."""
        if any_image:  # the input counts its own images; its rows now hold the count
            self.image_count = text_time[:, -1].clone()
            return text_time
        rows, have = text_time.shape[0], self.image_count.shape[0]
        if rows % have:
            raise ValueError(
                f"The language model got {rows} rows of text without <image> tokens after an "
                f"input of {have} rows with some: give k * {have} rows (k per row)."
            )
        count = self.image_count.repeat_interleave(rows // have)  # (B,)
        return count[:, None].expand_as(text_time)

    def _zeroed_count(self, rows: int, device: torch.device) -> torch.Tensor:
        if self._count_buffer is None:
            return torch.zeros(rows, dtype=torch.long, device=device)
        return self._count_buffer.zeroed(rows, device)

    # ------------------------------------------------------------------ media per text batch
    def _keeps_keys_values(self) -> bool:
        """The blocks' keys and values are computed once per text batch while decoding and
        scoring (without autograd); in training each block computes its own."""
        return self.follows_last_image and not torch.is_grad_enabled()

    def _media_for(self, rows: int, blocks: nn.ModuleList):
        """Latents (rows, T, n, Dv) for a text batch of `rows` rows, and the blocks' keys and
        values of them when they are kept (decoding and scoring, without autograd).

        Kept for the last text batch, so that decoding steps reuse what the prompt computed.
        A batch of k rows per media row gets new, repeated latents: the session's own are
        never modified.
        """
        keep_keys_values = self._keeps_keys_values()
        key = (rows, keep_keys_values)
        if self._per_text_batch is not None and self._per_text_batch[0] == key:
            return self._per_text_batch[1:]
        have = self.latents.shape[0]
        if rows % have or (rows != have and not self.follows_last_image):
            raise ValueError(
                f"The language model got {rows} rows of text for {have} rows of media: "
                "give one row of images per text row (after cache_media, k rows of text per "
                "row of media also work)."
            )
        latents = (
            self.latents.repeat_interleave(rows // have, dim=0) if rows != have else self.latents
        )
        keys_values = None
        if keep_keys_values:
            keys_values = tuple(
                None
                if block is None
                else block.attn.media_keys_values(latents.to(block.attn_gate.device))
                for block in blocks
            )
        self._per_text_batch = (key, latents, keys_values)
        return latents, keys_values


class TextOnlySession:
    """`Flamingo.forward(vision_x=None, ...)` on text without `<image>` tokens and without cached
    media (a mixture's text-only batch): no block runs, neither its cross-attention nor its
    gated feed-forward, so the text gets exactly the plain LM's outputs whatever the gates."""

    follows_last_image = False
    num_media = 0

    def context_for(self, input_ids: torch.Tensor, blocks: nn.ModuleList) -> MediaContext:
        return MediaContext(latents=None, text_time=None)


TEXT_ONLY = TextOnlySession()
