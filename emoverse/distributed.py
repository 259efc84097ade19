"""Multi-device pieces: FSDP2 sharding of a backbone with LoRA, and the unpadded evaluation split by rank.

`fully_shard_backbone` is what `EmoVerseModule.configure_model` calls under Lightning's
`ModelParallelStrategy` (FSDP2, `torch.distributed.fsdp.fully_shard`). Its units:

  * per LLM decoder layer, the layer's LoRA adapters as one unit (trainable) and the rest of the
    layer as another (frozen), so frozen and trainable parameters never share a unit: the frozen
    units reduce-scatter no gradients and the optimizer state covers only the adapters' shards;
  * the input embeddings (with the LM head when the two are tied) and the rest of the LLM (final
    norm, LM head): frozen;
  * the projector (trained) and the vision encoder (frozen unless a stage trains it), one unit each.

Any parameter left outside these units is an error naming it, since under FSDP2 a parameter outside
every unit gets no gradient reduction at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from torch.utils.data import DistributedSampler

from emoverse.backbones.base import PartGroup


class RankShardSampler(DistributedSampler):
    """Rank r of R takes items r, r + R, ... of a fixed list, unpadded (evaluation: no item is scored twice).

    emoverse splits data by rank in its samplers (this one for evaluation, `TaskWeightedSampler`
    for training); both are `DistributedSampler`s, so Lightning leaves them unwrapped whatever
    `Trainer(use_distributed_sampler=...)` says, and torchmetrics reduces the ranks' metric states.

    Args:
        length: number of items of the whole list.
        num_replicas: number of ranks.
        rank: this rank.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, length, num_replicas))
        self.total_size = length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


@dataclass(frozen=True)
class ShardUnit:
    """One FSDP2 unit: its name, parameter count, and whether its parameters train."""

    name: str
    params: int
    trainable: bool


def decoder_layers(core: nn.Module, language_model: nn.Module) -> list[nn.Module]:
    """The decoder layers inside `language_model`: modules of a class that the transformers models in
    `core` name in their `_no_split_modules`."""
    kinds = {k for m in core.modules() for k in (getattr(m, "_no_split_modules", None) or [])}
    layers = [m for m in language_model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise ValueError(f"{type(language_model).__name__}: no module of a `_no_split_modules` class {sorted(kinds)}; "
                         "cannot tell its decoder layers for FSDP2 units")
    return layers


def _head_owner(core: nn.Module, language_model: nn.Module) -> nn.Module:
    """The innermost module that holds the output head and contains the language model (the causal LM)."""
    owners = [m for m in core.modules() if callable(getattr(m, "get_output_embeddings", None))
              and m.get_output_embeddings() is not None and any(c is language_model for c in m.modules())]
    return owners[-1] if owners else language_model


def lora_modules(module: nn.Module) -> list[nn.Module]:
    """The LoRA adapter matrices (peft `lora_A` / `lora_B` entries) inside `module`."""
    from peft.tuners.lora import LoraLayer

    found = []
    for layer in module.modules():
        if isinstance(layer, LoraLayer):
            for name in ("lora_A", "lora_B"):
                found.extend(getattr(layer, name).values())
    return found


def fully_shard_backbone(root: nn.Module, mesh: object, backbone: nn.Module | None = None) -> list[ShardUnit]:
    """Apply FSDP2 to `root` (an `EmoVerseModule`) over the data-parallel `mesh`; returns the units.

    `backbone` defaults to `root.backbone`, an `emoverse.backbones.Backbone` (its `part(...)` names the
    vision encoder, projector and language model). Idempotent: a second call returns [] at once.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    backbone = root.backbone if backbone is None else backbone
    if any(isinstance(m, FSDPModule) for m in root.modules()):
        return []
    parts = {name: backbone.part(name) for name in ("vision", "audio", "projector", "language_model")
             if name in backbone.part_paths()}
    core = backbone.core
    units: list[ShardUnit] = []
    assigned: set[int] = set()

    def shard(name: str, modules: nn.Module | list[nn.Module]) -> None:
        group = modules if isinstance(modules, list) else [modules]
        params = list({id(p): p for m in group for p in m.parameters() if id(p) not in assigned}.values())
        if not params:
            return
        trainable = {p.requires_grad for p in params}
        if len(trainable) > 1:
            raise ValueError(f"fully_shard_backbone: unit {name} mixes frozen and trainable parameters")
        ids = {id(p) for p in params}
        fully_shard(modules, mesh=mesh)  # replaces the unit's parameters with sharded (DTensor) ones
        assigned.update(id(p) for m in group for p in m.parameters() if id(p) not in ids)
        units.append(ShardUnit(name, sum(p.numel() for p in params), trainable.pop()))

    for i, layer in enumerate(decoder_layers(core, parts["language_model"])):
        adapters = lora_modules(layer)
        if adapters:
            shard(f"llm.layers.{i}.lora", adapters)
        shard(f"llm.layers.{i}", layer)
    owner = _head_owner(core, parts["language_model"])
    embed = parts["language_model"].get_input_embeddings()
    head = owner.get_output_embeddings() if owner is not parts["language_model"] else None
    tied = head is not None and head.weight is embed.weight
    shard("llm.embeddings" + ("+head" if tied else ""), [embed, head] if tied else embed)
    shard("projector", list(parts["projector"]) if isinstance(parts["projector"], PartGroup) else parts["projector"])
    for encoder in ("vision", "audio"):  # a backbone has one or both
        if encoder in parts:
            shard(encoder, parts[encoder])
    # last: where the head sits on the whole model (transformers' multimodal LMs), the model is its owner and this
    # unit takes what the others left (final norm, head), not the frozen encoders beside the trained projector
    shard("llm.rest", owner)
    if hasattr(parts.get("vision"), "forward_features"):  # timm encoders are called through forward_features
        register_fsdp_forward_method(parts["vision"], "forward_features")
    left = [n for n, p in root.named_parameters() if id(p) not in assigned]
    if left:
        raise ValueError(f"fully_shard_backbone: parameters outside every FSDP2 unit would get no gradient "
                         f"reduction: {left[:5]}{' ...' if len(left) > 5 else ''}")
    # FSDP2 needs one root over the units; it holds no parameters of its own and initialises at the
    # first training forward, after which the units also run alone (generation calls them directly)
    fully_shard(root, mesh=mesh)
    return units
