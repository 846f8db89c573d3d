"""The storage projection: per-layer vectors stored at one fixed width, whatever the model's hidden size.

A per-layer family's vector lives in the residual stream, ``v in R^d`` (d = 576 for SmolLM2-135M, 4096 for an 8B
model). The index stores ``v Q`` instead, with ``Q`` (d x k) a seeded random matrix with orthonormal columns
(the ``Q`` factor of a Gaussian matrix, signs fixed by ``R``'s diagonal):

* inner products and cosines are kept in expectation, ``E[<u Q, v Q>] = (k / d) <u, v>``, with a spread that
  shrinks as ``1 / sqrt(k)`` whatever ``d`` is (Johnson-Lindenstrauss), and a rotation spreads the few
  outsized dimensions of a residual stream over all ``k``;
* every query vector is mapped the same way (the index stores ``Q``; :class:`~actindex.query.context.QueryContext`
  applies it), so a query formed from projected pairs is the projection of the full-width query: the
  constructions (means, differences, the typical row) are linear;
* a direction in the stored space lifts back to the residual stream as ``Q psi``
  (:meth:`StorageProjection.lift`): ``<v Q, psi> = <v, Q psi>``.

Bytes per row are then ``families x k x itemsize`` at any width; the fixed cost is ``Q`` itself (d x k float32,
stored once). A model no wider than ``k`` is stored as it is (no projection). bench/storage.py measures what
each width keeps of the default's rankings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: the HDF5 dataset of ``vectors.h5`` that holds ``Q``
MATRIX = "reduction/matrix"


class StorageProjection:
    """``v -> v Q``: a ``(d, k)`` matrix with orthonormal columns (see the module docstring)."""

    def __init__(self, matrix: np.ndarray, seed: int = 0):
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.seed = seed
        self._on: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    @property
    def hidden(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def width(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def seeded(cls, hidden: int, width: int, seed: int = 0, square: bool = False) -> StorageProjection | None:
        """``Q`` for vectors of ``hidden`` dims kept at ``width``: the orthonormal ``Q`` of ``G = QR`` for a Gaussian
        ``G`` (d x k) drawn with ``seed``, each column's sign chosen so ``diag(R) > 0`` (``Q`` is then a function of
        ``G`` alone). For ``width >= hidden``: ``None`` (the vectors are stored as they are), or with ``square`` a
        d x d rotation (no dimension dropped; what an integer store needs, see the module docstring)."""
        if width >= hidden and not square:
            return None
        width = min(width, hidden)
        gaussian = np.random.default_rng([seed, hidden, width]).standard_normal((hidden, width))
        q, r = np.linalg.qr(gaussian)
        return cls(q * np.sign(np.diag(r))[None, :], seed)

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors Q`` for a (B, d) tensor, on its device, in its dtype."""
        import torch

        key = (str(vectors.device), vectors.dtype)
        if key not in self._on:
            self._on[key] = torch.from_numpy(self.matrix).to(device=vectors.device, dtype=vectors.dtype)
        return vectors @ self._on[key]

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors Q`` for a (n, d) array, float32."""
        return np.asarray(vectors, dtype=np.float32) @ self.matrix

    def lift(self, direction: np.ndarray) -> np.ndarray:
        """``Q psi``: the residual-stream direction whose inner product with ``v`` is ``<v Q, psi>``."""
        return self.matrix @ np.asarray(direction, dtype=np.float32)
