"""The default layers of an index and of a single-layer query, as fractions of the model's depth (no tensor
library needed: the query pipeline reads them on cached queries)."""

from __future__ import annotations

from collections.abc import Sequence

#: depths of the default layers, as fractions of the model's depth (layers 12, 18, 24 and 27 of
#: SmolLM2's 30): the set whose rank fusion has the best worst case in bench/RESULTS.md
DEFAULT_DEPTHS = (0.4, 0.6, 0.8, 0.9)
#: the depth of the default single layer (layer 18 of 30) for methods that read one layer
DEFAULT_SINGLE_DEPTH = 0.6


def default_layers(num_layers: int) -> list[int]:
    """The default layers ``round(f * L)`` for ``f`` in :data:`DEFAULT_DEPTHS`, kept inside the model
    (``<= L - 1``) and deduplicated: ``[12, 18, 24, 27]`` for SmolLM2's 30 blocks, ``[2, 3]`` for 4."""
    return sorted({min(num_layers - 1, int(round(f * num_layers))) for f in DEFAULT_DEPTHS})


def default_single_layer(layers: Sequence[int], num_layers: int) -> int:
    """Of ``layers``, the one nearest ``DEFAULT_SINGLE_DEPTH * num_layers`` (the shallower on a tie)."""
    target = DEFAULT_SINGLE_DEPTH * num_layers
    return min(layers, key=lambda layer: (abs(layer - target), layer))
