"""The backbone contract on every registered tiny preset (timm style), plus the loading paths.

Each tiny preset is a real architecture with random weights built offline; the HF families are
also saved with `save_pretrained` and loaded back through `HFVisionLanguageBackbone(path)`, the
path a user's downloaded checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from emoverse.backbones import Backbone, ComposedBackbone, HFVisionLanguageBackbone, create_backbone, list_backbones
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import rgb_frames


def _kind(name: str) -> tuple[type, frozenset[str]]:
    bb = create_backbone(name)
    return type(bb), bb.processor.modalities


_BUILT = {n: _kind(n) for n in list_backbones("tiny*")}
TINY = [n for n, (_, takes) in _BUILT.items() if "image" in takes]
"""The tiny presets checked on frames and text (all that see); those that also take audio are checked again with
audio in their examples (tests/test_audio_backbones.py), and the audio-only ones there alone."""
HF = [n for n in TINY if issubclass(_BUILT[n][0], HFVisionLanguageBackbone)]


def examples(n_frames: tuple[int, ...] = (1, 2), size: tuple[int, int] = (96, 64)) -> list[Example]:
    return [Example(id=f"r{i}", task="msa", query="How does the speaker feel?" + " really" * (2 * i),
                    response="Positive", images=[Image.new("RGB", size, (40 * i, 90, 10))] * k)
            for i, k in enumerate(n_frames)]


def with_lora(name: str, **kwargs) -> Backbone:
    torch.manual_seed(0)
    bb = create_backbone(name, **kwargs)
    bb.add_lora(r=4, alpha=16, dropout=0.0)
    bb.set_trainable(["projector", "lora"])
    return bb


def test_registry_lists_presets() -> None:
    names = list_backbones()
    assert {"tiny", "tiny_qwen2_mlp", "tiny_llava", "tiny_llava_onevision", "tiny_qwen2_vl", "tiny_internvl", "tiny_idefics3",
            "emoverse_4b", "emoverse_8b"} <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_lists_known() -> None:
    with pytest.raises(KeyError, match="unknown backbone 'nope'.*tiny"):
        create_backbone("nope")


def test_overrides_reach_the_preset() -> None:
    small = create_backbone("tiny", image_size=32, hidden=64)
    assert small.processor.image_size == 32 and small.processor.tokens_per_image == 4
    assert small.core.llm.config.hidden_size == 64


def test_tokenizer_is_deterministic_and_has_a_chat_template() -> None:
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert a.decode(a("The person says: 'joy'")["input_ids"]) == "The person says: 'joy'"


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_trains_projector_and_lora_only(name: str) -> None:
    bb = with_lora(name)
    batch = AMTCollator(bb.processor, "train")(examples())
    labels = batch.labels
    # the labels are exactly the response and the end-of-turn marker
    want = bb.processor.tokenize("Positive") + bb.processor.end_ids
    assert [t for t in labels[0].tolist() if t != -100] == want
    out = bb.loss(batch)
    assert out["sample_tokens"].tolist() == [len(want)] * 2
    out["loss"].backward()
    grads = {n for n, p in bb.named_parameters() if p.grad is not None}
    paths = bb.part_paths()
    projector = paths["projector"] if isinstance(paths["projector"], tuple) else (paths["projector"],)
    assert any("lora_" in n for n in grads)
    # every projector module gets a gradient that is not zero (a closed gate between the frames and the
    # language model gives zeros: the projector would never train), and nothing but the projector and LoRA does
    core = {n.split("base_model.model.", 1)[-1] for n in grads}
    moving = {n.split("base_model.model.", 1)[-1] for n, p in bb.named_parameters() if p.grad is not None and p.grad.any()}
    seeing = projector[:1] if "audio" in bb.processor.modalities else projector  # vision's first; no audio here
    assert all(any(n.startswith(f"{p}.") for n in moving) for p in seeing), sorted(core - moving)
    assert all("lora_" in n or any(n.startswith(f"{p}.") for p in projector) for n in core)
    # LoRA adapters sit in the language model only (suffix-matched targets also hit the vision tower)
    lora_modules = [n for n, _ in bb.core.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all(n.startswith(paths["language_model"] + ".") for n in lora_modules)


BATCH_DEPENDENT = {
    "tiny_mllama": "transformers#39379: MllamaCrossAttentionDecoderLayer masks fully masked-out text rows (the "
                   "tokens before <|image|>) after the MLP but not after cross-attention, so they attend to every frame "
                   "slot of the batch, padding included: a row's answer depends on the other rows' frame counts",
}
"""Families whose transformers code makes a row's result depend on the rest of its batch (upstream defects)."""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=BATCH_DEPENDENT[n], strict=True))
                                  if n in BATCH_DEPENDENT else n for n in TINY])
def test_batched_generation_equals_one_at_a_time(name: str) -> None:
    bb = with_lora(name).eval()
    exs = examples((1, 2, 1))
    batch = AMTCollator(bb.processor, "generate")(exs)
    assert len(set(batch.inputs["attention_mask"].sum(1).tolist())) == 3  # real left padding
    together = bb.generate(batch, [6, 6, 6])
    alone = [bb.generate(AMTCollator(bb.processor, "generate")([ex]), [6])[0] for ex in exs]
    assert together == alone


@pytest.mark.parametrize("name", TINY)
def test_prompt_length_is_exact(name: str) -> None:
    bb = create_backbone(name)
    exs = examples((1, 2))
    got = AMTCollator(bb.processor, "generate")(exs).inputs["attention_mask"].sum(1).tolist()
    assert [bb.processor.prompt_length(e.query, e.images) for e in exs] == got


def nudge_trained(model: nn.Module, scale: float) -> None:
    """Move every trainable weight by Gaussian noise of std `scale` (as if trained), in place."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("name", TINY)
def test_trained_weights_round_trip(name: str) -> None:
    a, b = with_lora(name), with_lora(name)
    nudge_trained(a, 0.1)
    trained = {k: v for k, v in a.state_dict().items() if k in {n for n, p in a.named_parameters() if p.requires_grad}}
    b.load_state_dict(trained, strict=False)
    batch = AMTCollator(a.processor, "train")(examples())
    assert torch.equal(a.loss(batch)["loss"], b.loss(batch)["loss"])


@pytest.mark.parametrize("name", HF)
def test_hf_family_loads_back_from_a_saved_folder(name: str, tmp_path: Path) -> None:
    """`save_pretrained` then the user's path: AutoModelForImageTextToText + AutoProcessor."""
    saved = create_backbone(name)
    saved.core.save_pretrained(tmp_path)
    saved.processor.processor.save_pretrained(tmp_path)
    loaded = HFVisionLanguageBackbone(str(tmp_path), images_kwargs=saved.processor.images_kwargs)
    assert type(loaded.core) is type(saved.core)
    assert loaded.core.training, "from_pretrained returns eval mode; training needs train mode (dropout)"
    assert loaded.part_paths() == saved.part_paths()
    batch = AMTCollator(saved.processor, "train")(examples())
    assert torch.equal(AMTCollator(loaded.processor, "train")(examples()).inputs["input_ids"], batch.inputs["input_ids"])
    saved.eval(), loaded.eval()
    assert torch.allclose(saved.loss(batch)["loss"], loaded.loss(batch)["loss"])


def test_qwen2_vl_token_count_follows_the_image_size_and_survives_batch_changes() -> None:
    bb = with_lora("tiny_qwen2_vl")
    p = bb.processor
    assert p.prompt_length("q", [Image.new("RGB", (32, 32))]) + 12 == p.prompt_length("q", [Image.new("RGB", (64, 64))])
    bb.eval()
    bb.generate(AMTCollator(p, "generate")(examples((1, 1, 1))), [3, 3, 3])
    bb.train()
    assert torch.isfinite(bb.loss(AMTCollator(p, "train")(examples((1,))))["loss"])  # no stale rope_deltas from batch 3


def test_lora_targets_that_match_nothing_are_named() -> None:
    bb = create_backbone("tiny_llava")
    with pytest.raises(ValueError, match=r"LoRA targets \['qkv'\] match no linear layer of the language model"):
        bb.add_lora(4, 16, 0.0, targets=["qkv"])
    bb.add_lora(4, 16, 0.0, targets=["q_proj", "v_proj"])
    adapted = {n.rsplit(".", 2)[-2] for n, _ in bb.core.named_modules() if n.endswith("lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_image_count_must_match_the_prompt_slots() -> None:
    p = create_backbone("tiny").processor
    text = p.render(p.messages("q", 2), add_generation_prompt=True)
    with pytest.raises(ValueError, match="2 image slots but 1 frames"):
        p.encode([text], [[Image.new("RGB", (8, 8))]])


def test_a_text_only_model_is_not_a_vlm(tmp_path: Path) -> None:
    create_backbone("tiny").core.llm.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a vision-language model"):
        HFVisionLanguageBackbone(str(tmp_path))
    with pytest.raises(OSError, match="cannot load a vision-language model from .*missing"):
        HFVisionLanguageBackbone(str(tmp_path / "missing"))


def test_image_mode_that_cannot_become_rgb_is_rejected() -> None:
    with pytest.raises(ValueError, match="record r1 frame 0: image mode 'I;16'"):
        rgb_frames([Image.new("I;16", (8, 8))], where="record r1")
    assert rgb_frames([Image.new("CMYK", (8, 8))])[0].mode == "RGB"


def test_set_trainable_returns_newly_trainable() -> None:
    bb = with_lora("tiny")
    newly = bb.set_trainable(["projector", "lora", "vision"])
    assert len(newly) == len(list(bb.part("vision").parameters()))
    with pytest.raises(ValueError, match="unknown trainable parts"):
        bb.set_trainable(["decoder"])


def test_composed_backbone_loads_an_llm_from_a_local_path(tmp_path: Path) -> None:
    """The real loading code (`from_pretrained` on a path) on a tiny LLM saved offline."""
    saved = create_backbone("tiny")
    saved.core.llm.save_pretrained(tmp_path / "llm")
    saved.processor.tokenizer.save_pretrained(tmp_path / "llm")
    loaded = ComposedBackbone(vision="vit_tiny_patch16_224", llm=str(tmp_path / "llm"),
                              vision_kwargs={"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2})
    a, b = saved.core.llm.state_dict(), loaded.core.llm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.processor.tokenizer.chat_template == saved.processor.tokenizer.chat_template
    assert loaded.processor.image_token_id == saved.processor.image_token_id
    with pytest.raises(OSError):
        ComposedBackbone(vision="vit_tiny_patch16_224", llm=str(tmp_path / "missing"))


def test_projector_starts_at_the_text_embedding_scale() -> None:
    """Visual tokens far larger than text embeddings drown the text (seen: 6x at PyTorch's default init)."""
    bb = create_backbone("tiny")
    visual = bb.core.encode_images(torch.randn(8, 3, 64, 64)).norm(dim=-1).mean()
    text = bb.core.llm.get_input_embeddings().weight.norm(dim=-1).median()
    assert 0.5 < float(visual / text) < 2.0


@pytest.mark.parametrize("name", ["tiny", "tiny_llava"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name: str) -> None:
    plain, ckpt = create_backbone(name), create_backbone(name)
    for bb, checkpointing in ((plain, False), (ckpt, True)):
        torch.manual_seed(0)  # the same LoRA initialisation
        bb.add_lora(4, 16, 0.0, gradient_checkpointing=checkpointing)
    assert ckpt.part("language_model").gradient_checkpointing
    assert not plain.part("language_model").gradient_checkpointing
    results = []
    for bb in (plain, ckpt):
        bb.set_trainable(["projector", "lora"])
        bb.train()
        out = bb.loss(AMTCollator(bb.processor, "train")(examples()))
        out["loss"].backward()
        results.append((out["loss"].detach(), {n: p.grad for n, p in bb.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = results
    assert torch.allclose(la, lb) and ga.keys() == gb.keys() and ga
    assert all(torch.allclose(ga[n], gb[n], atol=1e-6) for n in ga)


def test_load_settings_given_with_a_built_model_are_refused() -> None:
    built = create_backbone("tiny_llava")
    with pytest.raises(ValueError, match=r"\['quantization'\] apply only when loading from a path"):
        HFVisionLanguageBackbone(built.core, built.processor.processor, quantization="4bit")
