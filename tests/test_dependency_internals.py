"""Guards on the private names of other packages that emoverse uses where no public API exists; each
dependency has an upper version bound in setup.cfg, and these fail loudly, naming what to check, when a
new version renames or drops one."""

from __future__ import annotations

import inspect

import pytest
from torch import nn


def test_transformers_generation_update_rule_is_still_there():
    """`BackboneProcessor.extend_for_response` extends per-token inputs with the model class's own
    `_update_model_kwargs_for_generation` (transformers has no public way to ask how generation extends
    `token_type_ids`, Mllama's `cross_attention_mask`, ...), called on an instance made without weights."""
    from transformers import GenerationMixin

    rule = getattr(GenerationMixin, "_update_model_kwargs_for_generation", None)
    assert callable(rule), "transformers renamed GenerationMixin._update_model_kwargs_for_generation: update " \
                           "emoverse/backbones/processor_responses.py extend_for_response and the bound in setup.cfg"
    params = inspect.signature(rule).parameters
    assert {"outputs", "model_kwargs", "is_encoder_decoder", "num_new_tokens"} <= set(params), sorted(params)


def test_bitsandbytes_cpu_layout_flag_is_still_there():
    """`_keep_cpu_4bit_layout` (backbones/base.py) turns off bitsandbytes' CPU repacking of 4-bit weights through
    the `support_avx512bf16_for_cpu` attribute of each `Linear4bit`, which has no public switch."""
    bnb = pytest.importorskip("bitsandbytes.nn")
    layer = bnb.Linear4bit(8, 8)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), "bitsandbytes dropped Linear4bit.support_avx512bf16_for_cpu: " \
                                                         "update emoverse/backbones/base.py and the bound in setup.cfg"


def test_dropout_base_is_the_one_torch_subclasses():
    """`emoverse.objectives.sampling.DROPOUTS` lists the public classes; tests/test_objectives.py compares them to
    the subclasses of torch's private `_DropoutNd`, which must still exist for that check."""
    assert issubclass(nn.Dropout, nn.modules.dropout._DropoutNd)
