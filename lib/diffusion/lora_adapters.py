"""LoRA adapters on diffusers models through peft: attach, detach, save, load, combine.

A LoRA adapter (Hu et al., 2021) adds a low-rank update ``W + (alpha / r) B A`` to chosen
linear and convolution layers of a frozen model; only ``A`` (``r x d_in``) and ``B``
(``d_out x r``, zero at the start) are trained. diffusers models carry peft's adapter machinery
(``add_adapter``, ``set_adapters``, ``disable_adapters``), so several adapters can sit on one
UNet and be mixed with weights, as LCM-LoRA mixes its "acceleration vector" with a style LoRA
(Luo et al., 2023, eq. 9: ``theta' = theta_pre + lambda_1 tau_style + lambda_2 tau_LCM``).

:class:`LoraAdapter` is an adapter detached from its model: the peft config plus the LoRA
tensors. It saves like a diffusers part (``save_pretrained`` writes ``adapter_config.json``
and ``adapter_model.safetensors``), so the testbed's manifest hashes it like any other folder;
loading reads only JSON and safetensors.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

ATTENTION_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Self- and cross-attention projections of diffusers' ``Attention`` blocks."""
CONV_TARGETS: tuple[str, ...] = ("conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj",
                                 "ff.net.2")  # fmt: skip
"""ResNet convolutions, the transformer blocks' in/out projections and feed-forward layers."""


def lora_config(rank: int = 4, targets: Sequence[str] = ATTENTION_TARGETS,
                alpha: float | None = None) -> LoraConfig:  # fmt: skip
    """A peft ``LoraConfig`` of rank ``rank`` on the layers named ``targets`` (alpha defaults
    to the rank, so the update's scale ``alpha / r`` is 1); Gaussian init of ``A``, zero ``B``."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if not targets:
        raise ValueError("targets is empty: name at least one layer for the LoRA")
    return LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha),
                      init_lora_weights="gaussian", target_modules=list(targets))  # fmt: skip


def add_lora(model: nn.Module, name: str, config: LoraConfig) -> list[nn.Parameter]:
    """Attach a fresh adapter ``name`` to ``model`` (a diffusers model), freeze everything
    else, make ``name`` the active adapter, and return its trainable parameters."""
    if name in getattr(model, "peft_config", {}):
        raise ValueError(f"the model already has an adapter named {name!r}")
    model.requires_grad_(False)
    with warnings.catch_warnings():  # a second adapter on one model is what mixing needs
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.add_adapter(config, adapter_name=name)
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


class LoraAdapter(nn.Module):
    """A LoRA adapter detached from its model: peft config and tensors.

    ``tensors`` are keyed as ``get_peft_model_state_dict`` returns them (module path +
    ``lora_A.weight`` / ``lora_B.weight``, without the adapter name). The tensors are
    registered as parameters of this module (so ``parameter_count`` sees them).
    """

    def __init__(self, config: LoraConfig, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not tensors:
            raise ValueError("an adapter needs at least one LoRA tensor")
        self.config = config
        self.keys = sorted(tensors)
        self.values = nn.ParameterList([nn.Parameter(tensors[k].detach().clone().float(),
                                                     requires_grad=False)
                                        for k in self.keys])  # fmt: skip

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in zip(self.keys, self.values)}

    @classmethod
    def from_model(cls, model: nn.Module, name: str) -> LoraAdapter:
        """The adapter ``name`` of ``model`` (a copy of its current tensors)."""
        if name not in getattr(model, "peft_config", {}):
            raise ValueError(f"the model has no adapter named {name!r}")
        tensors = get_peft_model_state_dict(model, adapter_name=name)
        return cls(model.peft_config[name], tensors)

    def attach(self, model: nn.Module, name: str) -> nn.Module:
        """Add this adapter to ``model`` under ``name`` (frozen) and return ``model``."""
        if name in getattr(model, "peft_config", {}):
            raise ValueError(f"the model already has an adapter named {name!r}")
        with warnings.catch_warnings():  # a second adapter on one model is what mixing needs
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            model.add_adapter(LoraConfig(**self.config.to_dict()), adapter_name=name)
        result = set_peft_model_state_dict(model, self.state(), adapter_name=name)
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if missing:
            raise ValueError(f"adapter tensors did not match the model: {missing[:3]}")
        model.requires_grad_(False)
        return model

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True,
                        dtype: torch.dtype = torch.float16) -> None:  # fmt: skip
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (``dtype``)."""
        if not safe_serialization:
            raise ValueError("adapters are only saved as safetensors")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        config.pop("peft_type", None)
        config.pop("task_type", None)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True,
                                                     default=str) + "\n")  # fmt: skip
        save_file({k: v.to(dtype).contiguous() for k, v in self.state().items()},
                  str(folder / WEIGHTS_FILE))  # fmt: skip

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_: object) -> LoraAdapter:
        """Read an adapter written by :meth:`save_pretrained` (JSON and safetensors only)."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise ValueError(f"{folder / name} is missing")
        raw = json.loads((folder / CONFIG_FILE).read_text())
        keep = {k: raw[k] for k in ("r", "lora_alpha", "target_modules", "lora_dropout",
                                    "init_lora_weights", "bias") if k in raw}  # fmt: skip
        return cls(LoraConfig(**keep), load_file(str(folder / WEIGHTS_FILE)))


def set_mix(model: nn.Module, names: Sequence[str], weights: Sequence[float]) -> None:
    """Activate adapters ``names`` with scales ``weights`` (LCM-LoRA's eq. 9 combination)."""
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} adapter names but {len(weights)} weights")
    if not names:
        raise ValueError("names is empty; use model.disable_adapters() for the base model")
    model.enable_adapters()
    model.set_adapters(list(names), weights=[float(w) for w in weights])
