"""Batching through the backbone's processor: labels, placeholders, padding, and prompts that must be shortened."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from emoverse.backbones import create_backbone
from emoverse.data.batches import Example, GenerationBatch
from emoverse.data.collator import IGNORE_INDEX, AMTCollator
from emoverse.data.dataset import make_example
from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.tasks import get_task


@pytest.fixture(scope="module")
def processor():
    return create_backbone("tiny").processor


def _example(query: str, response: str, frames: int = 2, rid: str = "r1") -> Example:
    return Example(id=rid, task="mer", query=query, response=response, images=[Image.new("RGB", (64, 64))] * frames)


def test_labels_cover_exactly_the_response(processor) -> None:
    tok = processor.tokenizer
    batch = AMTCollator(processor, "train")([_example("How do they feel?", "Joy."),
                                              _example("A much longer question about feelings?", "Sadness.", 4)])
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    for b, response in enumerate(["Joy.", "Sadness."]):
        labels = batch.labels[b]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == response + "<|end|>"  # up to the stop token generation ends on
        # the kept labels are one contiguous run that ends at the last real token
        pos = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        assert pos.tolist() == list(range(pos[0].item(), pos[-1].item() + 1))
        assert pos[-1].item() == mask[b].sum().item() - 1
        assert torch.equal(ids[b, pos], labels[pos])
    assert mask[0, 0] == 1 and mask[0, -1] == 0  # training rows are right-padded


def test_visual_placeholders_come_first_in_the_user_turn(processor) -> None:
    batch = AMTCollator(processor, "train")([_example("q", "Joy.", frames=3)])
    ids = batch.inputs["input_ids"][0].tolist()
    n = 3 * processor.tokens_per_image
    prefix = processor.tokenize("<|user|>\n")
    assert ids[: len(prefix)] == prefix
    assert ids[len(prefix): len(prefix) + n] == [processor.image_token_id] * n
    assert ids.count(processor.image_token_id) == n
    assert batch.inputs["pixel_values"].shape == (3, 3, processor.image_size, processor.image_size)


def test_generate_mode_pads_left_and_stops_at_the_assistant_header(processor) -> None:
    tok = processor.tokenizer
    batch = AMTCollator(processor, "generate")([_example("short", "Joy."), _example("a rather longer query here", "Joy.")])
    mask = batch.inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and mask[:, -1].all()
    assert isinstance(batch, GenerationBatch) and not hasattr(batch, "labels")  # prompts only
    assert tok.decode(batch.inputs["input_ids"][0, -3:].tolist()).endswith("<|assistant|>\n")


def _dialogue(turns: int) -> AMTRecord:
    context = [Utterance(turn=k, speaker="Ross", text=f"utterance number {k} " * 3, emotion="neutral")
               for k in range(1, turns)]
    return AMTRecord(id="dia1_utt40", source="ecf", split="train", text="I cannot believe it!", speaker="Rachel", dialogue_id="1",
                     turn=turns, context=context,
                     labels=AMTLabels(emotion="surprise", cause_pairs=[(turns, 1, "surprise"), (turns, turns, "surprise")]),
                     frames=[Image.new("RGB", (64, 64))] * 4)


def test_long_dialogue_loses_its_oldest_turns_not_the_instruction() -> None:
    """Cutting from the left of the query removed the ECPE instruction before any dialogue turn."""
    processor = create_backbone("tiny", max_length=420).processor
    task = get_task("ecpe")
    ex = make_example(_dialogue(40), task, processor, num_frames=4, seed=0)
    assert ex.truncated
    assert ex.query.startswith(task.template.split("{")[0])            # the instruction stays
    assert "The emotion-cause indices of the target utterance are:" in ex.query  # and the answer format
    assert "40_surprise. Rachel: I cannot believe it!" in ex.query      # and the target
    assert "1_neutral." not in ex.query and "39_neutral." in ex.query  # the oldest turns went first
    assert ex.response == "40_surprise,40"  # the cause in the dropped turn 1 is no longer answerable
    batch = AMTCollator(processor, "train")([ex])
    assert batch.inputs["input_ids"].shape[1] <= 420 and batch.num_truncated == 1


def test_no_room_even_without_context_names_the_record() -> None:
    processor = create_backbone("tiny", max_length=40).processor
    with pytest.raises(ValueError, match="record dia1_utt40 \\(ecpe\\): the prompt does not fit the context of 40"):
        make_example(_dialogue(3), get_task("ecpe"), processor, num_frames=4, seed=0)


def test_bad_mode_is_rejected(processor) -> None:
    with pytest.raises(ValueError, match="mode='eval'; expected 'train' or 'generate'"):
        AMTCollator(processor, "eval")
