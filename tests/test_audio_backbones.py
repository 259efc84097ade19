"""The backbone contract with audio in the examples, on every tiny preset that hears, and clips as videos.

The presets that take audio (`AUDIO`) run the checks `tests/test_backbones.py` and `tests/test_backbone_contract.py`
run on frames alone, with a waveform in most rows (rows without one in the same batch, clips of different
durations) and, where the backbone takes video, a row whose frames go in as one video: LoRA forward/backward
trains the projectors and LoRA only, batched generation equals one at a time, `prompt_length` is exact, the
trained weights round-trip, the HF ones load back from a saved folder, and every export reloads and generates the
same tokens. Bad media get one line naming the row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from torch import nn

from emoverse.backbones import Backbone, ComposedBackbone, HFVisionLanguageBackbone, create_backbone, list_backbones
from emoverse.backbones.media import SAMPLE_RATE
from emoverse.data.batches import Example, GenerationBatch, TrainBatch
from emoverse.data.collator import AMTCollator
from tests.test_backbones import nudge_trained, with_lora
from tests.test_scaling import one_rank_mesh  # noqa: F401, F811  (a fixture)


def _takes(name: str) -> frozenset[str]:
    return create_backbone(name).processor.modalities


_TAKES = {n: _takes(n) for n in list_backbones("tiny*")}
AUDIO = [n for n, takes in _TAKES.items() if "audio" in takes]
VIDEO = [n for n, takes in _TAKES.items() if "video" in takes]

PROJECTOR = {
    "tiny_audio": ("projector", "audio_projector"),
    "tiny_qwen2_audio": ("model.multi_modal_projector",),
    "tiny_qwen2_5_omni": ("model.visual.merger", "model.audio_tower.proj"),
    "tiny_gemma3n": ("model.embed_vision", "model.embed_audio"),
}
"""The modules each architecture maps encoder features into the language model with (vision, then audio)."""
AUDIO_ENCODER = {"tiny_audio": "audio", "tiny_qwen2_audio": "model.audio_tower", "tiny_qwen2_5_omni": "model.audio_tower",
                 "tiny_gemma3n": "model.audio_tower"}


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced-looking clip: a 180 Hz tone with noise, 16 kHz mono float32."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * noise).astype(np.float32)


def audio_examples(name: str, seconds: tuple[float | None, ...] = (0.5, 1.0), video: bool = False) -> list[Example]:
    """One example per entry of `seconds` (None: that row has no audio); frames where the backbone takes them, and
    with `video` the first row's frames as one video."""
    takes = _TAKES[name]
    out = []
    for i, s in enumerate(seconds):
        frames = [Image.new("RGB", (32, 32), (40 * i, 90, 10 * k)) for k in range(1 + i % 2)] if "image" in takes else []
        out.append(Example(id=f"r{i}", task="mer", query="Which emotion does the speaker show?" + " really" * i,
                           response="joy", images=frames, audio=None if s is None else clip(s, i),
                           as_video=video and i == 0 and "video" in takes))
    return out


def collate(processor, examples: list[Example], mode: str = "train") -> TrainBatch | GenerationBatch:
    """What the collator hands the module (`AMTCollator`: the processor's batch with audio and `as_video` per row)."""
    return AMTCollator(processor, mode)(examples)


def _paths(path: str | tuple[str, ...]) -> tuple[str, ...]:
    return (path,) if isinstance(path, str) else tuple(path)


def test_the_audio_presets_are_the_ones_listed() -> None:
    assert sorted(PROJECTOR) == sorted(AUDIO) == sorted(AUDIO_ENCODER)
    assert _TAKES["tiny_qwen2_audio"] == {"audio"} and _TAKES["tiny_qwen2_5_omni"] == {"image", "video", "audio"}
    assert _TAKES["tiny_audio"] == {"image", "audio"} and _TAKES["tiny"] == {"image"}
    assert {"tiny_qwen2_vl", "tiny_llava_onevision", "tiny_qwen2_5_omni"} <= set(VIDEO)


@pytest.mark.parametrize("name", AUDIO)
def test_forward_backward_trains_the_projectors_and_lora_only(name: str) -> None:
    bb = with_lora(name)
    batch = collate(bb.processor, audio_examples(name, (0.5, 1.0), video=True))
    want = bb.processor.tokenize("joy") + bb.processor.end_ids
    assert [t for t in batch.labels[0].tolist() if t != -100] == want
    out = bb.loss(batch)
    assert out["sample_tokens"].tolist() == [len(want)] * 2
    out["loss"].backward()
    paths = bb.part_paths()
    assert _paths(paths["projector"]) == PROJECTOR[name] and paths["audio"] == AUDIO_ENCODER[name]
    grads = {n.split("base_model.model.", 1)[-1] for n, p in bb.named_parameters() if p.grad is not None}
    # every projector (the audio one too) learns, and nothing but the projectors and LoRA does
    assert all(any(g.startswith(f"{p}.") for g in grads) for p in PROJECTOR[name])
    assert all("lora_" in g or g.startswith(tuple(f"{p}." for p in PROJECTOR[name])) for g in grads)
    trained = {n.split("base_model.model.", 1)[-1] for n, p in bb.named_parameters() if p.requires_grad}
    frozen_audio = [n for n in trained if n.startswith(f"{AUDIO_ENCODER[name]}.")
                    and not n.startswith(tuple(f"{p}." for p in PROJECTOR[name]))]
    assert not frozen_audio, frozen_audio  # the audio encoder stays frozen, like the vision encoder
    lora = [n for n, _ in bb.core.named_modules() if n.endswith("lora_A")]
    assert lora and all(n.startswith(paths["language_model"] + ".") for n in lora)


@pytest.mark.parametrize("name", AUDIO)
def test_batched_generation_equals_one_at_a_time(name: str) -> None:
    bb = with_lora(name).eval()
    exs = audio_examples(name, (0.5, None, 1.0), video=True)  # a row without audio between two of other lengths
    batch = collate(bb.processor, exs, "generate")
    assert len(set(batch.inputs["attention_mask"].sum(1).tolist())) == 3  # real left padding
    alone = [bb.generate(collate(bb.processor, [ex], "generate"), [5])[0] for ex in exs]
    assert bb.generate(batch, [5, 5, 5]) == alone


@pytest.mark.parametrize("name", AUDIO)
def test_prompt_length_is_exact_with_audio(name: str) -> None:
    proc = create_backbone(name).processor
    exs = audio_examples(name, (0.5, 1.0, None, 2.6), video=True)  # 2.6 s: past the tiny extractors' 2 s window
    got = collate(proc, exs, "generate").inputs["attention_mask"].sum(1).tolist()
    assert [proc.prompt_length(e.query, e.images, audio=e.audio, as_video=e.as_video) for e in exs] == got


@pytest.mark.parametrize(("name", "per_second"), [("tiny_qwen2_audio", 25), ("tiny_qwen2_5_omni", 25), ("tiny_audio", 8)])
def test_audio_tokens_follow_the_duration(name: str, per_second: int) -> None:
    proc = create_backbone(name).processor
    length = {s: proc.prompt_length("q", [], audio=clip(s)) for s in (0.5, 1.0, 2.0, 3.0)}
    assert length[2.0] - length[1.0] == per_second and length[1.0] - length[0.5] in (per_second // 2, per_second // 2 + 1)
    assert length[3.0] == length[2.0]  # the tiny feature extractors keep 2 s, as the released ones keep 30 s


@pytest.mark.parametrize("name", AUDIO)
def test_trained_weights_round_trip(name: str) -> None:
    a, b = with_lora(name), with_lora(name)
    nudge_trained(a, 0.1)
    trained = {n for n, p in a.named_parameters() if p.requires_grad}
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k in trained}, strict=False)
    batch = collate(a.processor, audio_examples(name))
    assert torch.equal(a.loss(batch)["loss"], b.loss(batch)["loss"])


@pytest.mark.parametrize("name", AUDIO)
def test_the_contract_holds_with_audio(name: str) -> None:
    """The trained stop is an end-of-turn token, training is causal, and the loss equals a full-logit reference."""
    bb = with_lora(name).eval()
    proc = bb.processor
    special = {i for i, t in proc.tokenizer.added_tokens_decoder.items() if t.special}
    assert proc.end_ids[-1] in proc.stop_ids and proc.end_ids[-1] in special
    batch = collate(proc, audio_examples(name))
    with torch.no_grad():
        full = bb.core(**bb.cast_inputs(batch.inputs), use_cache=False).logits
        got = bb.loss(batch)["loss"]
    want = nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    ex = [dataclasses.replace(audio_examples(name, (0.5,))[0], response="joy because the person says great news")]
    batch = collate(proc, ex)
    inputs, last = dict(batch.inputs), int((batch.labels[0] != -100).nonzero().max())
    keep = torch.arange(inputs["input_ids"].shape[1])
    with torch.no_grad():
        before = bb.logits(inputs, keep)
        ids = inputs["input_ids"].clone()
        ids[0, last - 1] = (ids[0, last - 1] + 7) % 100 + 3
        after = bb.logits({**inputs, "input_ids": ids}, keep)
    torch.testing.assert_close(after[0, :last - 1], before[0, :last - 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[0, last - 1], before[0, last - 1])


@pytest.mark.parametrize("name", [n for n in AUDIO if n != "tiny_audio"])
def test_hf_audio_family_loads_back_from_a_saved_folder(name: str, tmp_path: Path) -> None:
    saved = create_backbone(name)
    saved.core.save_pretrained(tmp_path)
    saved.processor.processor.save_pretrained(tmp_path)
    loaded = HFVisionLanguageBackbone(str(tmp_path))
    assert type(loaded.core) is type(saved.core) and loaded.part_paths() == saved.part_paths()
    assert loaded.processor.modalities == saved.processor.modalities
    exs = audio_examples(name, video=True)
    batch = collate(saved.processor, exs)
    assert torch.equal(collate(loaded.processor, exs).inputs["input_ids"], batch.inputs["input_ids"])
    saved.eval(), loaded.eval()
    assert torch.allclose(saved.loss(batch)["loss"], loaded.loss(batch)["loss"])


@pytest.mark.parametrize("name", AUDIO)
def test_merged_export_reloads_and_generates_the_same(name: str, tmp_path: Path) -> None:
    from emoverse import EmoVerseModule
    from emoverse.export import export_merged, load_composed

    torch.manual_seed(0)
    module = EmoVerseModule(name)
    nudge_trained(module, 0.05)
    module.eval()
    exs = audio_examples(name, (0.5, 1.0), video=True)
    before = module.backbone.generate_ids(collate(module.processor, exs, "generate").inputs, 5)
    export_merged(module, tmp_path)
    reloaded: Backbone = (load_composed(tmp_path) if isinstance(module.backbone, ComposedBackbone)
                          else HFVisionLanguageBackbone(str(tmp_path)))
    reloaded.eval()
    assert reloaded.processor.stop_ids == module.backbone.processor.stop_ids
    assert torch.equal(reloaded.generate_ids(collate(reloaded.processor, exs, "generate").inputs, 5), before)


def test_hubert_beside_the_vision_encoder() -> None:
    """`ComposedBackbone` with a HuBERT encoder (raw waveform in, 50 frames per second): trains and generates."""
    bb = with_lora("tiny_audio", audio_encoder="hubert")
    assert type(bb.part("audio")).__name__ == "HubertModel"
    exs = audio_examples("tiny_audio", (0.5, None, 1.0))
    out = bb.loss(collate(bb.processor, exs))
    out["loss"].backward()
    assert bb.core.audio_projector.weight.grad is not None and bb.core.audio.feature_projection.projection.weight.grad is None
    bb.eval()
    alone = [bb.generate(collate(bb.processor, [ex], "generate"), [4])[0] for ex in exs]
    assert bb.generate(collate(bb.processor, exs, "generate"), [4, 4, 4]) == alone


def test_feature_tensors_are_never_taken_for_per_token_inputs() -> None:
    """Qwen2-Audio's `feature_attention_mask` is `[clips, frames]`: with as many clips as rows and a prompt as wide as
    the frames, its shape is the prompt's; before media inputs were measured, training extended it like a mask and
    stopped ('processor outputs ['feature_attention_mask'] have one entry per prompt token ...')."""
    proc = create_backbone("tiny_qwen2_audio").processor
    frames = proc.processor.feature_extractor.nb_max_frames
    exs = audio_examples("tiny_qwen2_audio", (1.0, 1.0))
    short = proc.prompt_length("Which emotion?", [], audio=exs[0].audio)
    exs[0].query = "Which emotion?" + " so" * (frames - short)  # " so" is one token: the prompt is `frames` wide
    assert collate(proc, exs, "generate").inputs["input_ids"].shape[1] == frames
    batch = collate(proc, exs)
    assert batch.inputs["feature_attention_mask"].shape == (2, frames)  # left as the processor gave it
    assert {"input_features", "feature_attention_mask"} <= proc.media_inputs


def test_media_a_backbone_does_not_take_are_one_line() -> None:
    image = [Image.new("RGB", (32, 32))]
    with pytest.raises(ValueError, match=r"^row 1: this backbone takes no audio \(it takes \['image'\]\); drop audio"):
        create_backbone("tiny").processor(["q", "q"], [image, image], audios=[None, clip(0.5)])
    with pytest.raises(ValueError, match=r"^the example: this backbone takes no image \(it takes \['audio'\]\)"):
        create_backbone("tiny_qwen2_audio").processor.prompt_length("q", image, audio=clip(0.5))
    with pytest.raises(ValueError, match=r"^row 0: this backbone takes no video"):
        create_backbone("tiny_audio").processor(["q"], [image], as_video=[True])
    with pytest.raises(ValueError, match=r"^row 0: frames of sizes \[\(32, 32\), \(64, 32\)\] cannot form one video"):
        create_backbone("tiny_qwen2_vl").processor(["q"], [[*image, Image.new("RGB", (64, 32))]], as_video=[True])
    with pytest.raises(ValueError, match="no audio encoder to train"):
        create_backbone("tiny").set_trainable(["audio"])
    with pytest.raises(ValueError, match="no vision encoder to train"):
        create_backbone("tiny_qwen2_audio").set_trainable(["vision"])


@pytest.mark.parametrize(("audio", "message"), [
    (np.zeros((8000, 2), np.float32), r"^row 0: audio must be a 1-D float waveform at 16000 Hz mono, got ndarray of shape \(8000, 2\)"),
    (np.zeros(8000, np.int16), r"^row 0: audio must be a 1-D float waveform"),
    (np.zeros(800, np.float32), r"^row 0: audio has 800 samples, fewer than 1600 \(0.1 s at 16000 Hz\)"),
    (np.full(8000, np.nan, np.float32), r"^row 0: audio holds NaN"),
])
def test_a_malformed_clip_is_one_line(audio: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_backbone("tiny_qwen2_audio").processor(["q"], [[]], audios=[audio])


def test_a_feature_extractor_at_another_rate_is_refused() -> None:
    bb = create_backbone("tiny_qwen2_audio")
    processor = bb.processor.processor
    processor.feature_extractor.sampling_rate = 24_000
    with pytest.raises(ValueError, match="WhisperFeatureExtractor expects 24000 Hz audio; emoverse gives 16000 Hz"):
        HFVisionLanguageBackbone(bb.core, processor)


@pytest.mark.parametrize("name", AUDIO)
def test_packing_with_audio(name: str) -> None:
    """Every preset that hears packs audio rows (a row without audio between clips of different durations; with
    video, the first row's frames as one video): the packed losses and gradients equal the padded ones."""
    from tests.test_packing import _assert_packed_equals_padded

    bb = with_lora(name).eval()
    proc = bb.processor
    assert proc.packing_unsupported() is None
    examples = audio_examples(name, (0.5, None, 1.0), video=name in VIDEO)
    _assert_packed_equals_padded(bb, collate(proc, examples), AMTCollator(proc, "train", pack=True)(examples))


# clips as videos -------------------------------------------------------------------------------------------------

def video_template(bb: Backbone) -> Backbone:
    """LLaVA-NeXT-Video's tiny preset with a video placeholder in its Vicuna-style template (as released, the HF
    template renders `{"type": "video"}` as `<video>`)."""
    proc = bb.processor.processor
    images = "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    assert images in proc.chat_template
    proc.chat_template = proc.chat_template.replace(
        images, images + "{% for c in m['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}")
    return HFVisionLanguageBackbone(bb.core, proc)


def _video_backbone(name: str) -> Backbone:
    bb = with_lora(name) if name != "tiny_llava_next_video" else video_template(create_backbone(name))
    if name == "tiny_llava_next_video":
        bb.add_lora(r=4, alpha=16, dropout=0.0)
        bb.set_trainable(["projector", "lora"])
    return bb


@pytest.mark.parametrize("name", [*VIDEO, "tiny_llava_next_video"])
def test_a_clip_as_one_video(name: str) -> None:
    bb = _video_backbone(name)
    proc = bb.processor
    assert "video" in proc.modalities
    frames = [Image.new("RGB", (32, 32), (60 * k, 30, 90)) for k in range(4)]
    exs = [Example(id="a", task="mer", query="q", images=frames[:2] if name == "tiny_qwen2_5_omni" else frames,
                   as_video=True, response="joy"),  # (Qwen2.5-Omni upscales 32 px video frames: 200 tokens each)
           Example(id="b", task="mer", query="q really", images=frames[:2], as_video=False, response="joy")]
    args = ([e.query for e in exs], [e.images for e in exs])
    flags = [e.as_video for e in exs]
    encoded = proc(*args, [e.response for e in exs], as_video=flags)
    batch = TrainBatch(encoded["inputs"], encoded["labels"], tasks=["mer", "mer"], ids=["a", "b"])
    assert any("video" in k for k in batch.inputs)
    out = bb.loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    prompts = proc(*args, as_video=flags)["inputs"]["attention_mask"].sum(1).tolist()
    assert [proc.prompt_length(e.query, e.images, as_video=e.as_video) for e in exs] == prompts
    bb.eval()
    def asked(encoded: dict) -> GenerationBatch:
        rows = len(encoded["inputs"]["input_ids"])
        return GenerationBatch(encoded["inputs"], ["mer"] * rows, [str(i) for i in range(rows)], ["q"] * rows, [])

    alone = [bb.generate(asked(proc([e.query], [e.images], as_video=[e.as_video])), [4])[0] for e in exs]
    assert bb.generate(asked(proc(*args, as_video=flags)), [4, 4]) == alone


def _release_processors(tok) -> dict[str, object]:
    """The processors of the released checkpoints, as transformers' defaults build them (no weights needed)."""
    clip336 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
    return {
        "Qwen2-VL / Qwen2.5-VL": tf.Qwen2VLProcessor(image_processor=tf.Qwen2VLImageProcessor(),
                                                     video_processor=tf.Qwen2VLVideoProcessor(cap_pixels_per_frame=True),
                                                     tokenizer=tok, chat_template="x"),
        "LLaVA-OneVision": tf.LlavaOnevisionProcessor(image_processor=tf.LlavaOnevisionImageProcessor(),
                                                      video_processor=tf.LlavaOnevisionVideoProcessor(), tokenizer=tok,
                                                      num_image_tokens=729, vision_feature_select_strategy="full",
                                                      chat_template="x"),
        # at the 336 px input of its CLIP ViT-L/14-336 (the class defaults say 224)
        "LLaVA-NeXT-Video": tf.LlavaNextVideoProcessor(image_processor=tf.LlavaNextImageProcessor(**clip336),
                                                       video_processor=tf.LlavaNextVideoVideoProcessor(**clip336),
                                                       tokenizer=tok,
                                                       patch_size=14, vision_feature_select_strategy="default",
                                                       num_additional_image_tokens=1, chat_template="x"),
    }


VIDEO_TOKENS = {  # family: {frames: (tokens as an image list, as one video)}, 448 x 448 frames (docs/backbones.md)
    "Qwen2-VL / Qwen2.5-VL": {4: (1024, 512), 16: (4096, 2048)},
    "LLaVA-OneVision": {4: (2920, 785), 16: (11680, 3137)},
    "LLaVA-NeXT-Video": {4: (11712, 576), 16: (46848, 2304)},
}


def measure_video_tokens(size: int = 448, frames: dict[str, tuple[int, ...]] | None = None
                         ) -> dict[str, dict[int, tuple[int, int]]]:
    """Visual tokens of N frames given as N images and as one video, by each family's released processor
    (`frames`: family → the Ns; default: `VIDEO_TOKENS`'s)."""
    from emoverse.backbones.tiny import tiny_tokenizer

    marks = {"Qwen2-VL / Qwen2.5-VL": ("<|image_pad|>", "<|video_pad|>")}
    tok = tiny_tokenizer(extra_tokens=("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<video>"))
    out: dict[str, dict[int, tuple[int, int]]] = {}
    frames = frames or {family: tuple(counts) for family, counts in VIDEO_TOKENS.items()}
    for family, proc in _release_processors(tok).items():
        if family not in frames:
            continue
        image, video = marks.get(family, ("<image>", "<video>"))
        out[family] = {}
        for n in frames[family]:
            clip_frames = [Image.new("RGB", (size, size), (5 * k, 80, 120)) for k in range(n)]
            as_images = proc(text=[image * n], images=[clip_frames], return_tensors="pt")["input_ids"].shape[1]
            as_video = proc(text=[video], videos=[np.stack([np.asarray(f) for f in clip_frames])],
                            return_tensors="pt")["input_ids"].shape[1]
            out[family][n] = (as_images, as_video)
    return out


def test_video_token_counts_are_the_documented_ones() -> None:
    assert measure_video_tokens() == VIDEO_TOKENS
    # below 128 x 28 x 28 pixels a frame is upscaled as video, not as an image: 224 px frames cost more as video
    assert measure_video_tokens(224, {"Qwen2-VL / Qwen2.5-VL": (4,)}) == {"Qwen2-VL / Qwen2.5-VL": {4: (256, 288)}}


def test_the_docs_table_has_the_measured_counts() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    for counts in VIDEO_TOKENS.values():
        for images, video in counts.values():
            assert f"{images:,} / {video:,}" in doc


@pytest.mark.parametrize("name", ["tiny_audio", "tiny_qwen2_audio", "tiny_qwen2_5_omni", "tiny_llava"])
def test_fsdp2_units_cover_every_part(name: str, one_rank_mesh) -> None:  # noqa: F811
    """FSDP2 units over the audio encoder too, never mixing frozen and trained weights. Before, a model whose head
    sits on the whole model (every transformers multimodal LM, LLaVA included) had its frozen encoders swept into
    the `llm.rest` unit with the trained projector ('unit llm.rest mixes frozen and trainable parameters')."""
    from emoverse import EmoVerseModule
    from emoverse.distributed import fully_shard_backbone

    module = EmoVerseModule(name, lora_dropout=0.0)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    units = fully_shard_backbone(module, one_rank_mesh["data_parallel"])
    assert sum(u.params for u in units) == total and sum(u.params for u in units if u.trainable) == trainable
    kinds = {u.name: u.trainable for u in units if u.name in ("vision", "audio", "projector")}
    assert kinds == {"projector": True, **{p: False for p in ("vision", "audio") if p in module.backbone.part_paths()}}


@pytest.mark.parametrize("name", AUDIO)
def test_different_sounds_give_different_audio_tokens(name: str) -> None:
    """What the audio projector receives differs from clip to clip by a good share of its size: a tiny encoder drawn
    at transformers' 0.02 std gives almost only its positional embeddings (0.4 % apart on tiny_audio), which a
    frozen encoder never outgrows, and audio-alone training then learns nothing from sound."""
    bb = create_backbone(name).eval()
    seen: list[torch.Tensor] = []
    projector = bb.core.get_submodule(PROJECTOR[name][-1])
    def keep(module, args, kwargs, out):  # the projector's input, given positionally or by name
        seen.append(next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v)).detach().float().flatten())

    hook = projector.register_forward_hook(keep, with_kwargs=True)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    loud_low = (0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    soft_high = (0.05 * np.sin(2 * np.pi * (400 + 300 * t) * t)).astype(np.float32)
    with torch.no_grad():
        for wave in (loud_low, soft_high):
            ex = [dataclasses.replace(audio_examples(name, (1.0,))[0], audio=wave)]
            bb.loss(collate(bb.processor, ex))
    hook.remove()
    a, b = seen[-2], seen[-1]
    assert float((a - b).norm() / a.norm()) > 0.05
