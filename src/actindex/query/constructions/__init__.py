"""Constructions of a query vector from a behaviour's vectors (see :mod:`.base`), one registered class per file."""

from actindex.query.constructions.base import Construction, unit, unit_rows

# the registry lists the constructions in this order
# isort: off
from actindex.query.constructions.contrast import Contrast
from actindex.query.constructions.centered import Centered
from actindex.query.constructions.hybrid import Hybrid
# isort: on

__all__ = ["Centered", "Construction", "Contrast", "Hybrid", "unit", "unit_rows"]
