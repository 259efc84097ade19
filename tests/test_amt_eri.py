"""ERI: describer → reasoner with tiny transformers models built offline, batched, cached per record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from emoverse.amt.eri import ERIConfig, ERIPipeline
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.data.record import AMTLabels, AMTRecord


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Llama with the project's offline tokenizer and chat template, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny_llm")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _records(n: int) -> list[AMTRecord]:
    frame = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(frame, format="JPEG")
    emotions = ["joy", "neutral", "anger", "sadness", "surprise"]
    return [AMTRecord(id=f"meld_train_d0_u{i}", source="meld", split="train", text=f"I lost my wallet {i}", speaker="Ross",
                      labels=AMTLabels(emotion=emotions[i % len(emotions)], au_caption="Brow lowerer."),
                      frames=[frame.getvalue()] * 3) for i in range(n)]


def test_text_describer_and_reasoner_batch_and_cache(tiny_llm: Path, tmp_path: Path, monkeypatch) -> None:
    config = ERIConfig(describer=str(tiny_llm), reasoner=str(tiny_llm), describer_kind="text", batch_size=3,
                       max_new_tokens=6)
    records = _records(5)
    pipeline = ERIPipeline(config, tmp_path / "cache")
    calls = []
    original = ERIPipeline._generate_text
    monkeypatch.setattr(ERIPipeline, "_generate_text", lambda self, name, prompts: calls.append(prompts) or
                        original(self, name, prompts))
    reasons = pipeline.reasons(records)
    assert sorted(reasons) == [r.id for r in records if r.labels.emotion != "neutral"]  # neutral gets no reason
    assert all(isinstance(v, str) for v in reasons.values())
    assert [len(p) for p in calls] == [3, 3, 1, 1]  # describer, reasoner per batch of 3, then the last record
    assert "Brow lowerer." in calls[0][0] and "Ross feels joy" in calls[1][0]
    assert sorted(p.stem for p in (tmp_path / "cache").glob("*.json")) == sorted(reasons)
    # a resumed build reads the cache and generates nothing
    monkeypatch.setattr(ERIPipeline, "_generate_text", lambda *a: pytest.fail("regenerated a cached reason"))
    assert ERIPipeline(config, tmp_path / "cache").reasons(records) == reasons


def test_vlm_describer_sees_the_frames(tiny_llm: Path, tmp_path: Path, monkeypatch) -> None:
    from emoverse.backbones import create_backbone

    backbone = create_backbone("tiny_internvl")
    vlm = tmp_path / "tiny_internvl"
    backbone.model.save_pretrained(vlm)
    backbone.processor.processor.save_pretrained(vlm)
    config = ERIConfig(describer=str(vlm), reasoner=str(tiny_llm), describer_kind="vlm", num_frames=2, batch_size=2,
                       max_new_tokens=4)
    records = _records(3)
    for i, r in enumerate(records):  # each record its own frames: 3 colours, one per frame
        r.frames = [_jpeg((40 * i + 60 * k, 30, 200 - 50 * k)) for k in range(3)]
    seen: list[dict] = []  # what reaches the describer's generate
    original = ERIPipeline._run

    def spy(self, model, tokenizer, enc):
        if hasattr(enc, "pixel_values") or "pixel_values" in enc:
            real = model.generate
            monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or real(**kw))
        return original(self, model, tokenizer, enc)

    monkeypatch.setattr(ERIPipeline, "_run", spy)
    reasons = ERIPipeline(config, tmp_path / "cache").reasons(records)
    assert len(reasons) == 2  # the neutral record gets none
    assert len(seen) == 1, "the describer's generate got no pixel_values"
    pixels, ids = seen[0]["pixel_values"], seen[0]["input_ids"]
    processor = backbone.processor.processor
    # 2 wanted records x 2 frames (first and middle of 3), in order: exactly the records' frames
    frames = [Image.open(io.BytesIO(records[i].frames[k])).convert("RGB") for i in (0, 2) for k in (0, 1)]
    expected = processor.image_processor(images=frames, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels.float(), expected.float())
    assert not torch.equal(pixels[0], pixels[2])  # different records, different images
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    per_row = (ids == image_id).sum(dim=1)
    assert per_row.tolist() == [pixels.shape[0] // 2 * processor.image_seq_length] * 2  # every frame has its slots
    description = json.loads((tmp_path / "cache" / "meld_train_d0_u0.json").read_text())["description"]
    assert isinstance(description, str)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    frame = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(frame, format="JPEG")
    return frame.getvalue()


def test_bad_prompt_field_is_named() -> None:
    with pytest.raises(ValueError, match=r"ERIConfig.reasoner_prompt: unknown field 'mood'"):
        ERIConfig(describer="x", reasoner="y", reasoner_prompt="{mood}")


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "meld").exists(), reason=f"real MELD CSVs not found at {DATA}")
def test_build_writes_reasons_into_the_shards(tiny_llm: Path, tmp_path: Path) -> None:
    from emoverse.amt import AMTBuildConfig, MELDSource, build_amt
    from emoverse.data.shards import ShardIndex

    eri = ERIConfig(describer=str(tiny_llm), reasoner=str(tiny_llm), describer_kind="text", max_new_tokens=4)
    config = AMTBuildConfig(output=str(tmp_path / "amt"), meld=MELDSource(str(DATA / "meld")), require_media=False,
                            limit=3, eri=eri)
    manifest = build_amt(config, progress=False)
    index = ShardIndex(tmp_path / "amt", "val")  # dev rows 1-3: sadness, surprise, neutral
    reasons = [index.record(i, with_frames=False).labels.reason for i in range(len(index))]
    assert [r is not None for r in reasons] == [True, True, False]
    assert manifest["table1"]["Emotion Reason Inference"] == len(list((tmp_path / "amt" / "cache" / "eri").glob("*.json")))
