"""The backbone contract's mechanisms on every tiny preset, and the families that exercise each.

Each mechanism is general (docs/backbones.md): the projector from the module names transformers uses,
only the inputs `forward` names, per-token inputs extended to the answer by the model's own generation
rule, message content in the form the template reads, stops from the template and `generation_config`,
LoRA on the plain linear layers of the decoder blocks' attention and MLP.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from torch import nn

from emoverse.backbones import HFVisionLanguageBackbone, create_backbone, list_backbones
from emoverse.backbones.base import lora_candidates
from emoverse.data.collator import AMTCollator
from tests.test_backbones import TINY, examples, nudge_trained, with_lora

PROJECTOR = {
    "tiny": ("projector",),
    "tiny_qwen2_mlp": ("projector",),
    "tiny_llava": ("model.multi_modal_projector",),
    "tiny_llava_onevision": ("model.multi_modal_projector",),
    "tiny_llava_next_video": ("model.multi_modal_projector",),
    "tiny_internvl": ("model.multi_modal_projector",),
    "tiny_idefics3": ("model.connector",),
    "tiny_qwen2_vl": ("model.visual.merger",),
    "tiny_qwen2_5_vl": ("model.visual.merger",),
    "tiny_qwen3_vl": ("model.visual.merger", "model.visual.deepstack_merger_list"),
    "tiny_qwen3_vl_moe": ("model.visual.merger", "model.visual.deepstack_merger_list"),
    "tiny_gemma3": ("model.multi_modal_projector",),
    "tiny_paligemma": ("model.multi_modal_projector",),
    "tiny_mllama": ("model.multi_modal_projector",),
    "tiny_glm4v": ("model.visual.merger",),
    "tiny_gemma3n": ("model.embed_vision", "model.embed_audio"),
    "tiny_audio": ("projector", "audio_projector"),
    "tiny_qwen2_5_omni": ("model.visual.merger", "model.audio_tower.proj"),
}
"""The module(s) each architecture maps vision (then audio) features into the language model with, by path."""


def test_every_tiny_preset_has_its_projector_listed() -> None:
    assert sorted(PROJECTOR) == sorted(TINY)


@pytest.mark.parametrize("name", TINY)
def test_the_trained_projector_maps_vision_into_the_language_model(name: str) -> None:
    bb = with_lora(name)
    paths = bb.part_paths()["projector"]
    assert ((paths,) if isinstance(paths, str) else paths) == PROJECTOR[name]
    trained = {n.split("base_model.model.", 1)[-1] for n, p in bb.named_parameters() if p.requires_grad}
    # a fit trains nothing but the projector and LoRA (and a part the user names)
    assert not [n for n in trained if "lora_" not in n and not n.startswith(tuple(f"{p}." for p in PROJECTOR[name]))]


@pytest.mark.parametrize("name", TINY)
def test_the_trained_stop_is_an_end_of_turn_token(name: str) -> None:
    proc = create_backbone(name).processor
    stop = proc.end_ids[-1]
    special = {i for i, t in proc.tokenizer.added_tokens_decoder.items() if t.special}
    assert stop in proc.stop_ids and stop in special, proc.tokenizer.convert_ids_to_tokens(proc.end_ids)
    labels = AMTCollator(proc, "train")(examples((1,))).labels[0]
    assert labels[labels != -100][-1] == stop


@pytest.mark.parametrize("name", TINY)
def test_the_frames_reach_the_answer(name: str) -> None:
    """Other pixels give another loss: the frames reach the answer through the projector. transformers initialises
    some paths closed (Mllama's cross-attention gates, Gemma 3's projection: zeros), which would give bitwise the
    same loss and hide every frame-related defect from the checks here."""
    bb = with_lora(name).eval()
    collate = AMTCollator(bb.processor, "train")
    exs = examples()
    other = [dataclasses.replace(ex, images=[Image.linear_gradient("L").resize((96, 64)).convert("RGB")] * len(ex.images))
             for ex in exs]
    with torch.no_grad():
        losses = [bb.loss(collate(e))["loss"] for e in (exs, other)]
    assert not torch.equal(*losses), losses


@pytest.mark.parametrize("name", TINY)
def test_training_is_causal(name: str) -> None:
    """A later answer token does not move the logits of any earlier position (prompt included)."""
    bb = with_lora(name).eval()
    ex = [dataclasses.replace(examples((1,))[0], response="Positive because the person says great news")]
    batch = AMTCollator(bb.processor, "train")(ex)
    inputs = dict(batch.inputs)
    last = int((batch.labels[0] != -100).nonzero().max())
    width = inputs["input_ids"].shape[1]
    keep = torch.arange(width)
    with torch.no_grad():
        before = bb.logits(inputs, keep)
        ids = inputs["input_ids"].clone()
        ids[0, last - 1] = (ids[0, last - 1] + 7) % 100 + 3  # another plain text token
        after = bb.logits({**inputs, "input_ids": ids}, keep)
    torch.testing.assert_close(after[0, :last - 1], before[0, :last - 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[0, last - 1], before[0, last - 1])


@pytest.mark.parametrize("name", TINY)
def test_loss_equals_a_full_logit_reference(name: str) -> None:
    bb = with_lora(name).eval()
    batch = AMTCollator(bb.processor, "train")(examples())
    with torch.no_grad():
        got = bb.loss(batch)["loss"]
        full = bb.core(**bb.cast_inputs(batch.inputs), use_cache=False).logits
    want = nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


HF = [n for n in TINY if isinstance(create_backbone(n), HFVisionLanguageBackbone)]


@pytest.mark.parametrize("name", HF)
def test_only_inputs_forward_takes_reach_it(name: str) -> None:
    bb = create_backbone(name)
    batch = AMTCollator(bb.processor, "train")(examples())
    assert set(batch.inputs) <= bb.processor.input_names and "labels" not in batch.inputs


def test_paligemma_processor_labels_are_dropped_and_the_answer_is_causal_suffix() -> None:
    bb = create_backbone("tiny_paligemma")
    proc = bb.processor
    text = proc.render(proc.messages("q", 1), add_generation_prompt=True)
    raw = proc.processor(text=[text], images=[[Image.new("RGB", (32, 32))]], return_tensors="pt")
    assert "labels" in raw  # what the processor returns, and forward would compute its own loss on
    batch = AMTCollator(proc, "train")(examples())
    assert "labels" not in batch.inputs
    answer = batch.labels != -100
    types = batch.inputs["token_type_ids"]
    assert (types[answer] == 1).all() and (types[batch.inputs["attention_mask"].bool() & ~answer] == 0).all()


def test_paligemma_training_marks_the_answer_as_generation_does() -> None:
    bb = with_lora("tiny_paligemma").eval()
    ex = examples((1,))
    prompt = AMTCollator(bb.processor, "generate")(ex).inputs
    new = bb.generate_ids(prompt, 3)  # generation gives each new token token_type_ids 1
    trained = AMTCollator(bb.processor, "train")([dataclasses.replace(ex[0], response=bb.processor.tokenizer.decode(new[0]))]).inputs
    n = prompt["input_ids"].shape[1]
    assert trained["token_type_ids"][0, n:n + 3].tolist() == [1, 1, 1]


def test_mllama_cross_attention_mask_covers_the_answer() -> None:
    proc = create_backbone("tiny_mllama").processor
    batch = AMTCollator(proc, "train")(examples((1, 2)))
    mask, inputs = batch.inputs["cross_attention_mask"], batch.inputs
    assert mask.shape[:2] == inputs["input_ids"].shape and mask.dim() == 4
    for b in range(2):
        answer = (batch.labels[b] != -100).nonzero().squeeze(1)
        prompt_end = int(answer.min()) - 1
        # each answer token sees the frames the last prompt token sees (Mllama's generation rule)
        assert all(torch.equal(mask[b, t], mask[b, prompt_end]) for t in answer.tolist())
        assert mask[b, prompt_end].any()


def test_glm4v_string_content_and_a_stop_from_generation_config() -> None:
    proc = create_backbone("tiny_glm4v").processor
    assert proc.content_form("assistant") == "string" and proc.content_form("system") == "string"
    text = proc.render(proc.messages("q", 1, system_prompt="You are an expert."), add_generation_prompt=True)
    assert "<|system|>\nYou are an expert." in text and "'type'" not in text
    assert proc.tokenizer.convert_ids_to_tokens(proc.end_ids) == ["<|user|>"]  # the template writes nothing after


def test_vicuna_template_trains_eos_after_its_space() -> None:
    proc = create_backbone("tiny_llava_next_video").processor
    assert proc.tokenizer.convert_ids_to_tokens(proc.end_ids)[-1] == "</s>"


def test_a_template_that_renders_no_assistant_text_is_named() -> None:
    proc = create_backbone("tiny_llava").processor
    proc.processor.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="renders the text of a assistant message neither as a list of text parts "
                                         "nor as a string"):
        proc.messages("q", 0, response="a")


def test_a_model_without_a_declared_projector_asks_for_parts() -> None:
    bb = create_backbone("tiny_llava")
    model, processor = bb.core, bb.processor.processor
    model.model.adapter = model.model.multi_modal_projector
    del model.model.multi_modal_projector
    with pytest.raises(ValueError, match=r"LlavaForConditionalGeneration: no vision-to-language projector .*"
                                         r"candidates: model\.adapter \(6,272 parameters\).*parts=\{'projector'"):
        HFVisionLanguageBackbone(model, processor)
    assert HFVisionLanguageBackbone(model, processor, parts={"projector": "model.adapter"}).part_paths()["projector"] \
        == "model.adapter"


def test_moe_lora_targets_skip_router_and_experts() -> None:
    bb = with_lora("tiny_qwen3_vl_moe")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in bb.core.named_modules() if n.endswith("lora_A")}
    assert adapted and all(".self_attn." in n for n in adapted)


def test_lora_candidates_skip_a_router_that_subclasses_linear() -> None:
    """Llama 4's MoE router is an `nn.Linear` subclass returning a tuple: an adapter on it crashes."""
    import transformers as tf

    config = tf.Llama4TextConfig(vocab_size=64, hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                 num_local_experts=2, interleave_moe_layer_step=1, moe_layers=[0, 1])
    model = tf.Llama4TextModel(config)
    assert isinstance(model.get_submodule("layers.0.feed_forward.router"), nn.Linear)
    default, every = lora_candidates(model)
    assert not [p for p in every if p.endswith(".router")]
    assert {"layers.0.self_attn.q_proj", "layers.0.feed_forward.shared_expert.gate_proj"} <= set(default)


def test_lora_candidates_follow_the_declared_plan_not_every_linear() -> None:
    """Gemma 3n's blocks hold more linear layers than attention and MLP (AltUp, LAuReL, per-layer gates);
    its tensor-parallel plan names the attention and MLP ones."""
    import transformers as tf

    config = tf.Gemma3nTextConfig(vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32,
                                  intermediate_size=[64, 64], num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=16, hidden_size_per_layer_input=8,
                                  laurel_rank=4, num_kv_shared_layers=0, layer_types=["sliding_attention",
                                                                                      "full_attention"],
                                  activation_sparsity_pattern=[0.0, 0.0], altup_num_inputs=2)
    default, every = lora_candidates(tf.Gemma3nTextModel(config))
    assert any(".altup." in p or ".laurel." in p for p in every)
    assert default and all(".self_attn." in p or ".mlp." in p for p in default)


def test_per_token_input_that_generation_does_not_extend_is_named() -> None:
    proc = create_backbone("tiny").processor
    inputs = proc.encode(["<|user|>\nq<|end|>\n"], [[]])
    inputs["novel_mask"] = torch.ones_like(inputs["input_ids"])
    with pytest.raises(ValueError, match=r"processor outputs \['novel_mask'\] have one entry per prompt token"):
        proc.append_responses(inputs, [[5, 6]])


def test_registry_lists_the_new_families() -> None:
    assert {"tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_qwen3_vl_moe", "tiny_gemma3", "tiny_paligemma", "tiny_mllama",
            "tiny_glm4v", "tiny_llava_next_video", "tiny_gemma3n"} <= set(list_backbones("tiny*"))


def test_gemma3n_token_ids_fall_in_the_ranges_its_embedders_read() -> None:
    """Gemma3nModel embeds every id at or past `vision_config.vocab_offset` with `embed_vision` (then `embed_audio`
    from the audio offset), not the text table: the tiny tokenizer keeps the released layout, and the frames reach
    the answer through the MobileNetV5 tower and `embed_vision` alone."""
    bb = create_backbone("tiny_gemma3n")
    config, ids = bb.core.config, bb.processor.tokenizer.convert_tokens_to_ids
    vision, audio, text = config.vision_config, config.audio_config, config.text_config
    assert text.vocab_size_per_layer_input == vision.vocab_offset < audio.vocab_offset < text.vocab_size
    assert all(vision.vocab_offset <= ids(t) < audio.vocab_offset for t in ("<end_of_image>", "<image_soft_token>"))
    assert all(audio.vocab_offset <= ids(t) < text.vocab_size for t in ("<end_of_audio>", "<audio_soft_token>"))
    assert max(ids(t) for t in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>")) \
        < vision.vocab_offset
    assert type(bb.part("vision").timm_model).__name__ == "MobileNetV5Encoder"
    assert bb.processor.tokenizer.convert_ids_to_tokens(bb.core.generation_config.eos_token_id) == ["<eos>",
                                                                                                   "<end_of_turn>"]


@pytest.mark.parametrize("name", HF)
def test_merged_export_reloads_and_generates_the_same(name: str, tmp_path) -> None:
    """`emoverse export`'s merged folder, loaded back the way a user loads a checkpoint (by path)."""
    from emoverse import EmoVerseModule
    from emoverse.export import export_merged

    torch.manual_seed(0)
    module = EmoVerseModule(name)
    nudge_trained(module, 0.05)
    module.eval()
    batch = AMTCollator(module.processor, "generate")(examples((1, 2)))
    before = module.backbone.generate_ids(batch.inputs, 5)
    images_kwargs = module.backbone.processor.images_kwargs
    export_merged(module, tmp_path)
    reloaded = HFVisionLanguageBackbone(str(tmp_path), images_kwargs=images_kwargs).eval()
    assert reloaded.processor.stop_ids == module.backbone.processor.stop_ids
    assert torch.equal(reloaded.generate_ids(AMTCollator(reloaded.processor, "generate")(examples((1, 2))).inputs, 5), before)


@pytest.mark.slow
@pytest.mark.parametrize("name", HF)
def test_family_fits_exports_and_reloads_through_the_cli(name: str, demo_amt, tmp_path) -> None:
    """The quickstart with only the backbone entry changed, at the length `tests/test_cli.py` fits it (3 batches an
    epoch, every epoch, in-loop validation that generates), then `emoverse export` and a reload that generates.
    The default suite's `tests/test_family_cli.py` runs the same path on two optimizer steps."""
    import yaml

    from emoverse.export import main as export_main
    from tests.test_cli import QUICKSTART, _fit, _losses

    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["backbone"] = name
    mine = tmp_path / "my_quickstart.yaml"
    mine.write_text(yaml.safe_dump(config))
    run = _fit(mine, demo_amt, tmp_path / "runs", "--trainer.log_every_n_steps", "1")
    assert all(torch.isfinite(torch.tensor(_losses(run))))
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    assert export_main([str(ckpt), str(tmp_path / "out")]) == 0
    reloaded = HFVisionLanguageBackbone(str(tmp_path / "out"),
                                        images_kwargs=create_backbone(name).processor.images_kwargs).eval()
    assert len(reloaded.generate(AMTCollator(reloaded.processor, "generate")(examples((1,))), [4])) == 1


def test_decoder_blocks_are_found_under_a_causal_lm_wrapper() -> None:
    """Llama 4's language model is a `Llama4ForCausalLM` whose blocks sit under `.model` (issue 24)."""
    import transformers as tf

    from emoverse.backbones.base import decoder_blocks

    config = tf.Llama4TextConfig(vocab_size=64, hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                 num_local_experts=2, interleave_moe_layer_step=1, moe_layers=[0, 1])
    lm = tf.Llama4ForCausalLM(config)
    path, blocks = decoder_blocks(lm)
    assert path == "model.layers" and blocks is lm.model.layers
    default, every = lora_candidates(lm)
    assert "model.layers.0.self_attn.q_proj" in default and "model.layers.1.self_attn.o_proj" in default
    assert not [p for p in every if p.endswith(".router")]
    assert not [p for p in default if ".experts." in p]
    assert decoder_blocks(lm.model)[0] == "layers"  # the base model, as before


def test_a_tiny_llama4_vlm_takes_default_lora_targets() -> None:
    """`Llama4ForConditionalGeneration` used to stop: "Llama4ForCausalLM has no ModuleList of decoder blocks"."""
    import transformers as tf

    from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
    from emoverse.backbones.tiny import tiny_tokenizer
    from emoverse.backbones.tiny_hf import chat_template

    markers = ("<|image_start|>", "<|image|>", "<|patch|>", "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>")
    tok = tiny_tokenizer(extra_tokens=markers, named_tokens={"boi_token": "<|image_start|>", "eoi_token": "<|image_end|>",
                                                             "image_token": "<|image|>"})
    text = tf.Llama4TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               num_local_experts=2, interleave_moe_layer_step=1, moe_layers=[0, 1])
    vision = tf.Llama4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=32, patch_size=16, vision_output_dim=32, projector_input_dim=32,
                                   projector_output_dim=32, pixel_shuffle_ratio=0.5)
    config = tf.Llama4Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=tok.convert_tokens_to_ids("<|patch|>"))
    processor = tf.Llama4Processor(image_processor=tf.Llama4ImageProcessor(size={"height": 32, "width": 32}, max_patches=1),
                                   tokenizer=tok, patch_size=16, pixel_shuffle_ratio=0.5,
                                   chat_template=chat_template("<|image|>"))
    bb = HFVisionLanguageBackbone(tf.Llama4ForConditionalGeneration(config), processor)
    bb.add_lora(8, 32, 0.0)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in bb.core.named_modules() if n.endswith("lora_A")}
    assert "language_model.model.layers.0.self_attn.q_proj" in adapted
    assert all(n.startswith("language_model.model.layers.") for n in adapted)
    assert not [n for n in adapted if n.endswith(".router") or ".experts." in n]
