"""Stage 3 — capture: forward hooks that keep the tensors the vectors are made of.

A :class:`Capture` is a context manager: entering registers hooks, leaving removes them.
Subclasses say which modules to hook (:meth:`Capture.targets`) and what to keep from each call
(:meth:`Capture.on_forward`). Hooks keep references, not copies, and the backward pass is run
once for all captured tensors with ``torch.autograd.grad``, so no parameter gradient is formed.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from actindex.core.models import decoder_layers


def _main_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_output(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


class Capture(AbstractContextManager):
    """Template for a set of forward hooks; keeps what :meth:`on_forward` stores in ``self.saved``."""

    def __init__(self) -> None:
        self.saved: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def targets(self) -> Iterable[tuple[str, nn.Module]]:
        """``(key, module)`` pairs to hook."""
        raise NotImplementedError

    def on_forward(self, key: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        """Called after ``module`` ran; may return a replacement output."""
        raise NotImplementedError

    def __enter__(self) -> Capture:
        for key, module in self.targets():

            def hook(module: nn.Module, inputs: tuple, output: Any, key: str = key) -> Any:
                return self.on_forward(key, module, inputs, output)

            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class BlockCapture(Capture):
    """Keeps each requested decoder block's input ``z_in`` and output ``z_out`` (docs/design.md#notation).

    The output of the shallowest requested block is detached and made a leaf that requires
    grad, so the backward pass for ``g = dL/dz_out`` stops there: nothing below that block is
    differentiated, and with frozen parameters no parameter gradient is formed anywhere.
    Set ``cut_graph=False`` when something deeper down (projected gradients) needs the graph.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int], cut_graph: bool = True):
        super().__init__()
        self.blocks = decoder_layers(model)
        self.layers = sorted(set(layers))
        self.cut_graph = cut_graph

    def targets(self) -> Iterable[tuple[str, nn.Module]]:
        return [(str(layer), self.blocks[layer]) for layer in self.layers]

    def on_forward(self, key: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        z_in, z_out = inputs[0], _main_output(output)
        if self.cut_graph and int(key) == self.layers[0] and not z_out.requires_grad:
            z_out = z_out.detach().requires_grad_(True)
            output = _replace_output(output, z_out)
        self.saved[f"in.{key}"] = z_in
        self.saved[f"out.{key}"] = z_out
        return output

    def z_in(self, layer: int) -> torch.Tensor:
        return self.saved[f"in.{layer}"]

    def z_out(self, layer: int) -> torch.Tensor:
        return self.saved[f"out.{layer}"]


class LinearCapture(Capture):
    """Keeps each tracked linear module's input ``a`` (B, T, I) and output ``s`` (B, T, O).

    The gradient of the loss with respect to ``s`` is ``delta``; the module's per-example weight
    gradient is ``G = sum_t delta_t a_t^T``, never formed here.
    """

    def __init__(self, model: nn.Module, module_names: Iterable[str]):
        super().__init__()
        modules = dict(model.named_modules())
        self.names = list(module_names)
        self.modules = {name: modules[name] for name in self.names}

    def targets(self) -> Iterable[tuple[str, nn.Module]]:
        return list(self.modules.items())

    def on_forward(self, key: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        self.saved[f"a.{key}"] = inputs[0]
        self.saved[f"s.{key}"] = _main_output(output)
        return output


class InputGradLeaf(Capture):
    """Makes the token-embedding output a leaf that requires grad, so every later activation is
    part of the autograd graph while the parameters stay frozen."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embedding = model.get_input_embeddings()

    def targets(self) -> Iterable[tuple[str, nn.Module]]:
        return [("embed", self.embedding)]

    def on_forward(self, key: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        leaf = _main_output(output).detach().requires_grad_(True)
        self.saved[key] = leaf
        return _replace_output(output, leaf)
