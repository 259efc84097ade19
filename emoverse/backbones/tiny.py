"""Tiny backbones with random weights and a tokenizer trained offline, for the quickstart and tests.

They are registered exactly like real presets, so every code path (registry, LoRA, collator,
generation, checkpoints) runs on a laptop CPU in seconds.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from emoverse.backbones.causal_lm import CausalLMBackbone
from emoverse.backbones.composed import IMAGE_TOKEN, ComposedBackbone
from emoverse.backbones.registry import register_backbone
from emoverse.data.record import EMOTIONS

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", IMAGE_TOKEN]
_CORPUS_WORDS = (
    "The person says Please determine which emotion label in the video represents sentiment positive "
    "negative Positive Negative Describe the facial expression action units AU cheek raiser lip corner "
    "puller brow lowerer inner outer brow raiser upper lid raiser jaw drop nose wrinkler lip stretcher "
    "chin raiser lid tightener Why does the speaker feel because conversation utterance candidate target "
    "cause emotion pairs speaker none None I you we they it this that what how great terrible awful "
    "wonderful really very so not never always today tomorrow news happened lost won found broke " + " ".join(EMOTIONS)
)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    from emoverse.data.demo import corpus
    from emoverse.tasks import get_task, list_tasks

    templates = [get_task(name).template for name in list_tasks()]
    text = [_CORPUS_WORDS, *templates, *corpus()]
    tok.train_from_iterator(text * 4, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 2048, extra_tokens: tuple[str, ...] = (),
                   named_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on the default task prompts and the demo vocabulary.

    Byte-level, so any text encodes; deterministic; built in well under a second.

    Args:
        extra_tokens: more special tokens (a VLM family's image markers).
        named_tokens: special tokens the tokenizer exposes as attributes, e.g.
            `{"context_image_token": "<IMG_CONTEXT>"}` (InternVL's processor reads them).
    """
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        pad_token="<|pad|>", eos_token="<|end|>", extra_special_tokens=dict(named_tokens or {}),
    )
    new = [t for t in extra_tokens if t not in tok.get_vocab()]
    if new:
        tok.add_tokens(new, special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _tiny_vision_kwargs(image_size: int) -> dict[str, Any]:
    return {"img_size": image_size, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}


# A frozen random LLM can only fit its targets if its (tied, frozen) output embeddings can produce
# confident logits: after the final RMSNorm |h| ~ sqrt(hidden), so the largest logit is about
# hidden * std. The usual 0.02 caps it near 2.6 at hidden=128, too flat to learn; 0.1 allows ~13.
INIT_STD = 0.1


def tiny_text_config(vocab: int, hidden: int, layers: int) -> dict[str, Any]:
    """Config fields of a tiny decoder (Llama / Qwen2 style), shared by every tiny preset."""
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True,
                initializer_range=INIT_STD)


def _tiny_llm(family: Literal["llama", "qwen2"], vocab: int, hidden: int, layers: int):
    common = tiny_text_config(vocab, hidden, layers)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def _build(family: Literal["llama", "qwen2"], image_size: int, hidden: int, layers: int, seed: int,
           **kwargs: Any) -> ComposedBackbone:
    # The frozen weights are a function of `seed` alone, so a checkpoint of the trainable weights
    # rebuilds the same model whatever the global RNG state was.
    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ComposedBackbone(
            vision="vit_tiny_patch16_224", vision_kwargs=_tiny_vision_kwargs(image_size),
            llm=_tiny_llm(family, len(tok), hidden, layers), tokenizer=tok, **kwargs,
        )


@register_backbone
def tiny(image_size: int = 64, hidden: int = 128, layers: int = 2, seed: int = 0, **kwargs: Any) -> ComposedBackbone:
    """Tiny ViT (2 blocks, 16 tokens per 64×64 frame) → linear projector → tiny Llama (random weights)."""
    return _build("llama", image_size, hidden, layers, seed, **kwargs)


@register_backbone
def tiny_qwen2_mlp(image_size: int = 64, hidden: int = 96, layers: int = 2, seed: int = 0,
                   **kwargs: Any) -> ComposedBackbone:
    """Tiny ViT → MLP projector with 2×2 token pooling → tiny Qwen2 (random weights)."""
    kwargs.setdefault("pool", 2)
    kwargs.setdefault("projector", "mlp")
    return _build("qwen2", image_size, hidden, layers, seed, **kwargs)


@register_backbone
def tiny_text(hidden: int = 128, layers: int = 2, seed: int = 0, **kwargs: Any) -> CausalLMBackbone:
    """Tiny Llama alone (random weights): the text-only backbone (`CausalLMBackbone`), built offline."""
    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CausalLMBackbone(_tiny_llm("llama", len(tok), hidden, layers), tok, **kwargs)
