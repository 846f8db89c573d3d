"""``persona``: a persona vector, activations under the positive minus the neutral system prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actindex.core.families import MEAN_ACTIVATION
from actindex.errors import ActindexError
from actindex.query.constructions import unit
from actindex.query.context import chat
from actindex.query.methods.base import QueryMethod

if TYPE_CHECKING:
    import numpy as np

    from actindex.query.behaviors import Behavior
    from actindex.query.context import QueryContext


class PersonaMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(resp_j | positive prompt) - a_l(resp_j | neutral prompt)))``.

    Activations are read with the system prompt in context, as persona vectors are.
    """

    name, kind = "persona", MEAN_ACTIVATION
    help = "persona vector: activations under the positive minus the neutral system prompt"

    def vector(self, ctx: QueryContext, behavior: Behavior, layer: int) -> np.ndarray:
        if behavior.persona is None:
            raise ActindexError(f"method persona needs a persona spec (JSON), but {behavior.name!r} is a pairs file")
        responses = behavior.persona.responses
        convs = [chat(r["question"], r["pos"], r["pos_system"]) for r in responses]
        convs += [chat(r["question"], r["neg"], r["neg_system"]) for r in responses]
        vectors = ctx.family_vectors(self.family(layer), convs)
        n = len(responses)
        return unit((vectors[:n] - vectors[n:]).mean(axis=0))
