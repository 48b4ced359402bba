"""MediaSession: one immutable context per LM call, one explicit step update while decoding,
and media that are never rebatched in place."""

import dataclasses

import pytest
import torch
from torch import nn

from open_flamingo.src.media import ImageCountBuffer, MediaSession

IMAGE = 9  # the <image> id of these tests
NO_BLOCKS = nn.ModuleList([None, None])  # two decoder layers without cross-attention


def latents(rows: int = 2, images: int = 3) -> torch.Tensor:
    """(B_m, T, n, Dv) random latents."""
    return torch.randn(rows, images, 4, 8, generator=torch.Generator().manual_seed(0))


def ids(*rows) -> torch.Tensor:
    return torch.tensor(rows)


def test_decoding_steps_follow_the_last_image_and_update_the_count_in_place():
    media = latents()
    before = media.clone()
    session = MediaSession(media, IMAGE, follows_last_image=True, count_buffer=ImageCountBuffer())
    # the prompt: 2 rows of text, each repeated for 2 beams
    prompt = ids([IMAGE, 1, IMAGE, 2], [IMAGE, 1, 1, 2]).repeat_interleave(2, dim=0)
    context = session.context_for(prompt, NO_BLOCKS)
    assert torch.equal(context.text_time, (prompt == IMAGE).cumsum(-1))
    assert torch.equal(context.latents, media.repeat_interleave(2, dim=0))
    count = session.image_count
    step = session.context_for(ids([5], [5], [5], [5]), NO_BLOCKS)
    assert step.text_time.tolist() == [[2], [2], [1], [1]]  # each row's last prompt image
    assert session.image_count is count  # updated in place, at a fixed address
    assert count.tolist() == [2, 2, 1, 1]
    # upstream's rule: a step in which any row holds <image> counts the step's own images
    step = session.context_for(ids([IMAGE], [5], [5], [5]), NO_BLOCKS)
    assert step.text_time.tolist() == [[1], [0], [0], [0]]
    step = session.context_for(ids([5], [5], [5], [5]), NO_BLOCKS)
    assert step.text_time.tolist() == [[1], [0], [0], [0]]
    # the session's media were repeated for the beams, never replaced or modified
    assert session.latents is media and torch.equal(media, before)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.text_time = None


def test_the_image_count_buffer_is_reused_across_generate_calls():
    buffer = ImageCountBuffer()
    prompt = ids([IMAGE, 1], [IMAGE, 2])
    addresses = []
    for _ in range(2):
        session = MediaSession(latents(), IMAGE, follows_last_image=True, count_buffer=buffer)
        session.context_for(prompt, NO_BLOCKS)
        addresses.append(session.image_count.data_ptr())
    assert addresses[0] == addresses[1] == buffer.tensor.data_ptr()


def test_forward_counts_only_the_inputs_own_images():
    session = MediaSession(latents(), IMAGE)
    context = session.context_for(ids([1, IMAGE, 2], [IMAGE, IMAGE, 3]), NO_BLOCKS)
    assert context.text_time.tolist() == [[0, 1, 1], [1, 2, 2]]
    assert session.context_for(ids([4], [5]), NO_BLOCKS).text_time.tolist() == [[0], [0]]
    with pytest.raises(ValueError, match="4 rows of text for 2 rows of media"):
        session.context_for(ids([1], [2], [3], [4]), NO_BLOCKS)


def test_cached_media_take_any_number_of_text_rows_per_media_row_in_any_order():
    media = latents()
    before = media.clone()
    session = MediaSession(media, IMAGE, follows_last_image=True, image_count=torch.tensor([3, 1]))
    for k in (5, 3, 1, 2):  # class-name chunks of any size, the last one shorter
        names = torch.full((2 * k, 2), 7)
        context = session.context_for(names, NO_BLOCKS)
        assert context.text_time.tolist() == [[3, 3]] * k + [[1, 1]] * k
        assert torch.equal(context.latents, media.repeat_interleave(k, dim=0))
    assert session.latents is media and torch.equal(media, before)
    assert session.image_count.tolist() == [3, 1]
    # an input with <image> tokens counts its own, whatever its batch; its rows keep the count
    session.context_for(ids([IMAGE, 1], [1, 1], [IMAGE, IMAGE], [1, IMAGE]), NO_BLOCKS)
    assert session.image_count.tolist() == [1, 0, 2, 1]
    assert session.context_for(torch.full((8, 1), 7), NO_BLOCKS).text_time.flatten().tolist() == [
        1,
        1,
        0,
        0,
        2,
        2,
        1,
        1,
    ]
    with pytest.raises(ValueError, match="6 rows of text without <image> tokens after an input"):
        session.context_for(torch.full((6, 1), 7), NO_BLOCKS)


def test_keys_and_values_are_computed_once_per_text_batch_while_decoding():
    from open_flamingo.src.helpers import GatedCrossAttentionBlock

    blocks = nn.ModuleList([None, GatedCrossAttentionBlock(dim=16, dim_visual=8)])
    calls = []
    blocks[1].attn.to_kv.register_forward_hook(lambda *_: calls.append(1))
    session = MediaSession(latents(), IMAGE, follows_last_image=True)
    with torch.no_grad():
        first = session.context_for(ids([IMAGE, 1], [IMAGE, 2]), blocks)
        step = session.context_for(ids([3], [4]), blocks)
    assert first.keys_values[0] is None and step.keys_values is first.keys_values
    keys, values = first.keys_values[1]
    assert keys.shape == values.shape == (2, 8, 3 * 4, 64)  # (B, h, T*n, d)
    assert len(calls) == 1
    # with autograd on (training), each block projects the latents itself
    assert session.context_for(ids([3], [4]), blocks).keys_values is None
