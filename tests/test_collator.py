"""The collator: chat template, visual placeholders, response-only labels, padding, truncation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from emoverse.backbones import create_backbone
from emoverse.data.collator import IGNORE_INDEX, AMTCollator, ChatSegments


@pytest.fixture(scope="module")
def processor():
    return create_backbone("tiny").processor


def _example(processor, query: str, response: str, frames: int = 2, rid: str = "r1") -> dict:
    s = processor.image_size
    return {"id": rid, "task": "mer", "query": query, "response": response,
            "pixel_values": torch.zeros(frames, 3, s, s), "record": None}


def test_labels_cover_exactly_the_response(processor) -> None:
    tok = processor.tokenizer
    batch = AMTCollator(processor, "train")([_example(processor, "How do they feel?", "Joy."),
                                              _example(processor, "A much longer question about feelings?", "Sadness.", 4)])
    for b, response in enumerate(["Joy.", "Sadness."]):
        labels = batch["labels"][b]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == response + "<|end|>\n"
        # the kept labels are one contiguous run that ends at the last real token
        pos = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        assert pos.tolist() == list(range(pos[0].item(), pos[-1].item() + 1))
        assert pos[-1].item() == batch["attention_mask"][b].sum().item() - 1
        assert torch.equal(batch["input_ids"][b, pos], labels[pos])


def test_visual_placeholders_follow_the_template_prefix(processor) -> None:
    batch = AMTCollator(processor, "train")([_example(processor, "q", "Joy.", frames=3)])
    seg = ChatSegments.from_tokenizer(processor.tokenizer)
    ids = batch["input_ids"][0].tolist()
    n = 3 * processor.tokens_per_image
    assert ids[: len(seg.prefix)] == seg.prefix
    assert ids[len(seg.prefix): len(seg.prefix) + n] == [processor.image_token_id] * n
    assert ids.count(processor.image_token_id) == n
    assert batch["pixel_values"].shape[0] == 3


def test_generate_mode_pads_left_and_stops_at_the_assistant_header(processor) -> None:
    tok = processor.tokenizer
    batch = AMTCollator(processor, "generate")([_example(processor, "short", "Joy."),
                                                 _example(processor, "a rather longer query here", "Joy.")])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and mask[:, -1].all()
    assert (batch["labels"] == IGNORE_INDEX).all()
    tail = tok.decode(batch["input_ids"][0, -3:].tolist())
    assert tail.endswith("<|assistant|>\n")


def test_long_prompt_is_truncated_from_the_left_and_counted(processor) -> None:
    short = replace(processor, max_length=2 * processor.tokens_per_image + 30)
    words = " ".join(f"turn{i}" for i in range(200))
    batch = AMTCollator(short, "train")([_example(short, words + " final question", "Joy."),
                                          _example(short, "fine", "Joy.")])
    assert batch["num_truncated"] == 1
    assert batch["input_ids"].shape[1] <= short.max_length
    text = short.tokenizer.decode(batch["input_ids"][0].tolist())
    assert "final question" in text and "turn0 " not in text


def test_no_room_for_the_query_names_the_record(processor) -> None:
    tiny_ctx = replace(processor, max_length=processor.tokens_per_image)
    with pytest.raises(ValueError, match="record r9 .* exceed the context of"):
        AMTCollator(tiny_ctx)([_example(tiny_ctx, "q", "Joy.", frames=2, rid="r9")])


def test_bad_mode_is_rejected(processor) -> None:
    with pytest.raises(ValueError, match="mode='eval'; expected 'train' or 'generate'"):
        AMTCollator(processor, "eval")
