"""Stage 7 — queries: behaviours and the query vectors made from them (DESIGN section 4).

A behaviour is a set of contrastive pairs ``{prompt, treatment, control}`` (the treatment shows
the trait, the control does not) or a persona spec ``{instruction: [{pos, neg}], questions}``.
Each query method turns it into one vector ``psi`` in the space of one stored family; rows are
then ranked by cosine with ``psi``. Sign convention: a positive score means training on the row
pushes the model towards the behaviour.

Methods are registered by subclassing :class:`QueryMethod`; each says which stored family it
searches and how it forms ``psi``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .data import Encoded, Row, encode_row
from .errors import ActindexError, DataError
from .models import LoadedModel, generate
from .registry import Registered
from .vectors import (
    GRADIENT,
    MEAN_ACTIVATION,
    RESIDUAL_CHANGE,
    RESIDUAL_CHANGE_POOLED,
    GradientSums,
    RademacherProjector,
    VectorSpec,
    compute_many,
    family_name,
)

MAX_NEW_TOKENS = 64


# --------------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """One contrastive pair; ``system`` is the system prompt used for the persona method."""

    prompt: str
    treatment: str
    control: str | None
    line: int = 0
    control_generated: bool = False


@dataclass
class PersonaSpec:
    """Positive/neutral system-prompt pairs and the questions asked under each."""

    instructions: list[tuple[str, str]]
    questions: list[str]
    responses: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Behavior:
    name: str
    description: str = ""
    pairs: list[Pair] = field(default_factory=list)
    persona: PersonaSpec | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


def _catalog() -> dict[str, dict[str, str]]:
    text = resources.files("actindex").joinpath("resources/behaviors/catalog.json").read_text()
    return json.loads(text)


def builtin_behaviors() -> dict[str, str]:
    """Built-in behaviour names and their one-line descriptions."""
    return {name: entry["description"] for name, entry in sorted(_catalog().items())}


def load_behavior(spec: str) -> Behavior:
    """A built-in name (``hallucination``) or a path to a pairs JSONL / persona JSON file."""
    catalog = _catalog()
    if spec in catalog:
        entry = catalog[spec]
        resource = resources.files("actindex").joinpath(f"resources/behaviors/{entry['file']}")
        with resources.as_file(resource) as path:
            behavior = _load_file(Path(path), spec)
        behavior.description = entry["description"]
        behavior.source = f"built-in:{spec}"
        return behavior
    path = Path(spec)
    if not path.exists():
        names = ", ".join(sorted(catalog))
        raise ActindexError(f"unknown behaviour {spec!r}: not a file and not a built-in ({names})")
    return _load_file(path, path.stem)


def _load_file(path: Path, name: str) -> Behavior:
    """A behaviour file: a persona spec (``.json``) or contrastive pairs (JSONL, parquet...)."""
    if path.suffix == ".json":
        return Behavior(name=name, persona=load_persona(path), source=str(path))
    return Behavior(name=name, pairs=load_pairs(path), source=str(path))


def load_pairs(path: Path) -> list[Pair]:
    """Contrastive pairs from JSONL; every error names the file, line and field."""
    from .data import iter_records

    pairs = []
    for line, record in iter_records(path):
        values = {}
        for key in ("prompt", "treatment"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                problem = "is missing" if value is None else "must be a non-empty string"
                raise DataError(path, line, key, problem)
            values[key] = value
        control = record.get("control")
        if control is not None and (not isinstance(control, str) or not control.strip()):
            raise DataError(path, line, "control", "must be a non-empty string (or absent, to generate one)")
        pairs.append(Pair(values["prompt"], values["treatment"], control, line))
    if not pairs:
        raise DataError(path, None, None, "behaviour file has no usable pairs")
    return pairs


#: the fields of each ``responses`` entry of a persona spec (``pos_system``/``neg_system`` are optional)
PERSONA_RESPONSE_FIELDS = ("question", "pos", "neg")


def _read_persona_json(path: Path) -> Any:
    """The JSON value of a persona file, or a one-line :class:`DataError` (not UTF-8, malformed, too deep)."""
    from .data import check_file_kind

    try:
        check_file_kind(path)
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read the file ({err.strerror or type(err).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x}); save it as UTF-8"
        raise DataError(path, line, None, problem) from None
    if text.startswith("\ufeff"):
        raise DataError(path, 1, None, "the file starts with a byte order mark (BOM); save it as UTF-8 without BOM")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, None, f"malformed JSON ({err.msg})") from None
    except RecursionError:
        raise DataError(path, None, None, "malformed JSON (nested too deeply)") from None
    except ValueError:  # an integer longer than Python converts
        raise DataError(path, None, None, "malformed JSON (a number has too many digits)") from None


def load_persona(path: Path) -> PersonaSpec:
    """A persona spec: ``instruction`` = [{pos, neg}], ``questions`` (or ``extract_questions``, the
    persona_vectors name), optional ``responses`` = [{question, pos, neg, pos_system, neg_system}]
    (generated when absent; the system prompts default to the instruction pair when there is one).

    Every problem is a one-line :class:`DataError` naming the file and the field (``responses[2].pos``).
    """
    from .data import _json_type

    spec = _read_persona_json(path)
    if not isinstance(spec, dict):
        raise DataError(path, None, None, f"a persona spec must be a JSON object, got {_json_type(spec)}")
    instructions = spec.get("instruction")
    if not isinstance(instructions, list) or not instructions:
        raise DataError(path, None, "instruction", "expected a non-empty list of {pos, neg} objects")
    pairs = []
    for i, item in enumerate(instructions):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("pos", "neg")):
            raise DataError(path, None, f"instruction[{i}]", "expected an object with string 'pos' and 'neg'")
        pairs.append((item["pos"], item["neg"]))
    key = "extract_questions" if "questions" not in spec and "extract_questions" in spec else "questions"
    questions = spec.get(key)
    if not isinstance(questions, list) or not questions:
        got = "is missing" if key not in spec else f"got {_describe(questions)}"
        alias = " ('extract_questions', the persona_vectors name, is accepted too)" if key == "questions" else ""
        raise DataError(path, None, key, f"expected a non-empty list of question strings{alias}; {got}")
    for i, question in enumerate(questions):
        if not isinstance(question, str) or not question.strip():
            raise DataError(path, None, f"{key}[{i}]", f"expected a non-empty string, got {_describe(question)}")
    responses = spec.get("responses")
    responses = [] if responses is None else responses
    if not isinstance(responses, list):
        raise DataError(path, None, "responses",
                        f"expected a list of {{question, pos, neg}} objects (or no field, to generate them), "
                        f"got {_json_type(responses)}")
    for i, entry in enumerate(responses):
        if not isinstance(entry, dict):
            raise DataError(path, None, f"responses[{i}]",
                            f"expected an object with 'question', 'pos' and 'neg', got {_json_type(entry)}")
        for name in PERSONA_RESPONSE_FIELDS:
            value = entry.get(name)
            if name not in entry:
                raise DataError(path, None, f"responses[{i}].{name}", "is missing")
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, None, f"responses[{i}].{name}", f"expected a non-empty string, got "
                                f"{_describe(value)}")
        for name, default in zip(("pos_system", "neg_system"), pairs[0]):
            if name not in entry and len(pairs) == 1:
                entry = responses[i] = {**entry, name: default}  # the only instruction pair
            if name not in entry:
                raise DataError(path, None, f"responses[{i}].{name}",
                                "is missing (it names the system prompt; needed when 'instruction' has several pairs)")
            if not isinstance(entry[name], str):
                problem = f"expected a string, got {_json_type(entry[name])}"
                raise DataError(path, None, f"responses[{i}].{name}", problem)
    return PersonaSpec(instructions=pairs, questions=questions, responses=responses)


def _describe(value: Any) -> str:
    """How a wrong value looks, for error messages: ``a blank string``, ``an empty array`` or its JSON type."""
    from .data import _json_type

    if isinstance(value, str) and not value.strip():
        return "a blank string"
    return "an empty array" if value == [] else _json_type(value)


def complete_behavior(behavior: Behavior, lm: LoadedModel) -> Behavior:
    """Generate what the behaviour leaves out: missing controls, and persona responses.

    A persona spec becomes pairs too (question, response under the positive prompt, response
    under the neutral prompt), so every pair method works on it.
    """
    missing = [p for p in behavior.pairs if p.control is None]
    if missing:
        answers = generate(lm, [[{"role": "user", "content": p.prompt}] for p in missing], MAX_NEW_TOKENS)
        for pair, answer in zip(missing, answers):
            pair.control, pair.control_generated = answer, True
        behavior.notes.append(f"generated {len(missing)} control response(s) with the model (greedy)")
    if behavior.persona is not None and not behavior.pairs:
        persona = behavior.persona
        if not persona.responses:
            convs = []
            for pos, neg in persona.instructions:
                for q in persona.questions:
                    for system in (pos, neg):
                        convs.append([{"role": "system", "content": system}, {"role": "user", "content": q}])
            answers = iter(generate(lm, convs, MAX_NEW_TOKENS))
            for pos, neg in persona.instructions:
                for q in persona.questions:
                    pos_answer, neg_answer = next(answers), next(answers)
                    persona.responses.append(
                        {"question": q, "pos_system": pos, "neg_system": neg, "pos": pos_answer, "neg": neg_answer}
                    )
            behavior.notes.append(f"generated {2 * len(persona.responses)} persona response(s) with the model")
        behavior.pairs = [Pair(r["question"], r["pos"], r["neg"]) for r in persona.responses]
    return behavior


# --------------------------------------------------------------------------------------------
# Query methods
# --------------------------------------------------------------------------------------------


def unit(v: np.ndarray) -> np.ndarray:
    """``norm(v) = v / ||v||``."""
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise ActindexError("the query vector is zero or not finite: treatment and control look identical")
    return (v / n).astype(np.float32)


@dataclass
class QueryContext:
    """What a method needs to form a vector: the model and the index's vector settings.

    ``cache`` maps ``(family, conversation)`` to a computed vector. Vectors are computed for every
    layer in ``layers`` at once (one backward reaches them all), so asking for the same pairs at
    another layer, or with another method of the same family, costs no model pass. The
    :class:`~actindex.index.Index` keeps one cache for its lifetime. A residual-change pass also fills
    the pooled and mean-activation families, which its forward and backward give for free.
    """

    lm: LoadedModel
    layer: int | None
    grad_modules: list[str]
    grad_k: int
    seed: int
    max_length: int = 512
    batch_size: int = 8
    layers: list[int] = field(default_factory=list)
    cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    curvature: Any = None  # kind -> fitted factors of the index (curvature.Curvature), for --method ekfac
    families: tuple[str, ...] = ()  # the families the index holds (a behaviour's gradient pass fills them)
    gradients: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # the last behaviour gradient

    def family_vectors(self, kind: str, conversations: list[list[dict[str, str]]]) -> np.ndarray:
        """Vectors of one family kind for chat rows, computed exactly as the build does."""
        family = family_name(kind, self.layer if kind != GRADIENT else None)
        keys = [json.dumps(c, sort_keys=True) for c in conversations]
        missing = list(dict.fromkeys(k for k in keys if (family, k) not in self.cache))
        if missing:
            spec = self.vector_spec(kind)
            encoded = encode_conversations(self.lm, [json.loads(k) for k in missing], self.max_length)
            projector = RademacherProjector(self.seed, self.grad_k)
            out = compute_many(self.lm.model, encoded, spec, self.lm.tokenizer.pad_token_id, projector, self.batch_size)
            if not out.valid.all():
                raise ActindexError("a behaviour row produced a non-finite vector or has no response tokens")
            for name, vectors in out.vectors.items():
                for key, vector in zip(missing, vectors):
                    self.cache[(name, key)] = vector
        return np.stack([self.cache[(family, k)] for k in keys])

    def vector_spec(self, kind: str) -> VectorSpec:
        """What a pass for ``kind``'s vectors computes: one backward reaching every indexed layer gives the
        residual changes in both variants, and the forward under it the mean activations, so a
        residual pass fills all three families."""
        backward = kind in (RESIDUAL_CHANGE, RESIDUAL_CHANGE_POOLED)
        layers = sorted(set(self.layers) | {self.layer}) if self.layer is not None else []
        return VectorSpec(
            layers=layers if kind != GRADIENT else [],
            residual_change=backward,
            pooled=backward,
            mean_activation=backward or kind == MEAN_ACTIVATION,
            grad_modules=self.grad_modules if kind == GRADIENT else [],
            grad_k=self.grad_k,
            seed=self.seed,
        )

    def behavior_gradients(
        self, behavior: Behavior, names: list[str], groups: list[list[int]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Query gradients ``q_c = -grad phi_c = mean_{j in c} (grad L(treatment_j) - grad L(control_j))``
        per module (full, unprojected, float64), one per group ``c`` of pair numbers (default: one
        group of every pair), with ``phi_c = mean_{j in c} [log p(treatment_j) - log p(control_j)]``.

        One forward and backward pass over the pair conversations gives every group, and, since it
        reaches the shallowest module, also the pairs' vectors of every family the index holds:
        they go to the cache, so searching the same behaviour costs no further model pass. The
        last result is kept (a rerank after the search that prefetched it reuses it).
        """
        pairs = behavior.pairs
        groups = [list(range(len(pairs)))] if groups is None else [list(g) for g in groups]
        if not pairs or not all(groups):
            raise ActindexError(f"behaviour {behavior.name!r} has no contrastive pairs to form a query gradient from")
        convs = pair_conversations(pairs)
        cache_key = json.dumps([names, groups, [json.dumps(c, sort_keys=True) for c in convs]])
        if cache_key in self.gradients:
            return self.gradients[cache_key]
        n = len(pairs)
        weights = np.zeros((len(groups), 2 * n))
        for c, members in enumerate(groups):
            weights[c, members] += 1.0 / len(members)
            weights[c, [n + j for j in members]] -= 1.0 / len(members)
        sums = self.weighted_gradients(convs, weights, names)
        self.gradients.clear()
        self.gradients[cache_key] = sums
        return sums

    def mean_gradients(
        self, groups: list[list[list[dict[str, str]]]], names: list[str], measurement: str = "loss",
        content_only: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """``q_c = mean_{x in c} grad f(x)`` per module (float64) for each group ``c`` of chat rows, from
        one pass over all of them: the treatment-only query gradient (detection's test queries). ``f`` is
        the ``measurement``: the loss, or minus the summed log-odds of the response tokens (``margin``,
        :func:`~actindex.vectors.token_terms`), over the response tokens that close each turn too unless
        ``content_only``."""
        if not all(groups):
            raise ActindexError("a group of query rows is empty")
        convs = [conv for group in groups for conv in group]
        weights = np.zeros((len(groups), len(convs)))
        start = 0
        for c, group in enumerate(groups):
            weights[c, start : start + len(group)] = 1.0 / len(group)
            start += len(group)
        return self.weighted_gradients(convs, weights, names, measurement, content_only)

    def weighted_gradients(
        self, convs: list[list[dict[str, str]]], weights: np.ndarray, names: list[str], measurement: str = "loss",
        content_only: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """``S_c = sum_b weights[c, b] grad f(convs_b)`` per module (full, float64), one pass over ``convs``;
        ``f`` is the loss or another ``measurement`` (:func:`~actindex.vectors.sequence_losses`), over the
        responses' content alone with ``content_only`` (:func:`~actindex.data.encode_row`).

        The pass reaches the shallowest module, so it also gives the rows' vectors of every family
        the index holds: when they are the build's (the loss over every response token) they go to the
        cache, so searching the same rows costs no further model pass.
        """
        keys = [json.dumps(c, sort_keys=True) for c in convs]
        encoded = encode_conversations(self.lm, convs, self.max_length, content_only)
        if any(e.n_response == 0 for e in encoded):
            raise ActindexError("a query row has no response tokens (truncated by max_length?)")
        sums = GradientSums(names, weights)
        kinds = {family.split("/")[0] for family in self.families}
        spec = self.vector_spec(RESIDUAL_CHANGE)
        spec.layers = spec.layers if kinds - {GRADIENT} else []
        spec.grad_modules = self.grad_modules if GRADIENT in kinds else []
        projector = RademacherProjector(self.seed, self.grad_k)
        out = compute_many(self.lm.model, encoded, spec, self.lm.tokenizer.pad_token_id, projector, self.batch_size,
                           sums=sums, measurement=measurement)
        if out.valid.all() and measurement == "loss" and not content_only:
            for name, vectors in out.vectors.items():
                for key, vector in zip(keys, vectors):
                    self.cache[(name, key)] = vector
        return sums.sums


def pair_conversations(pairs: list[Pair]) -> list[list[dict[str, str]]]:
    """The chat rows of a behaviour's pairs: every ``(prompt, treatment)``, then every ``(prompt, control)``."""
    return [_chat(p.prompt, p.treatment) for p in pairs] + [_chat(p.prompt, p.control or "") for p in pairs]


def encode_conversations(
    lm: LoadedModel, conversations: list[list[dict[str, str]]], max_length: int | None, content_only: bool = False
) -> list[Encoded]:
    """Tokenise chat rows exactly as the build tokenises training rows (loss on the responses; on their
    content alone with ``content_only``, :func:`~actindex.data.encode_row`)."""
    rows = [Row(id=str(i), index=i, messages=c, text=None, record={}, line=0) for i, c in enumerate(conversations)]
    return [encode_row(lm.tokenizer, row, max_length, content_only) for row in rows]


def _chat(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


class QueryMethod(Registered, noun="method"):
    """A way to turn a behaviour into a query vector in one stored family."""

    name: ClassVar[str]
    kind: ClassVar[str]
    help: ClassVar[str]

    def family(self, layer: int | None) -> str:
        return family_name(self.kind, None if self.kind == GRADIENT else layer)

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        """``psi`` for the behaviour (already completed with :func:`complete_behavior`)."""
        raise NotImplementedError

    def pair_difference(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        """``mean_j (v(treatment_j) - v(control_j))`` in this method's family."""
        pairs = behavior.pairs
        vectors = ctx.family_vectors(self.kind, pair_conversations(pairs))
        n = len(pairs)
        return (vectors[:n] - vectors[n:]).mean(axis=0)

    projection_scores: ClassVar[bool] = False


class ResidualChangeMethod(QueryMethod):
    """``psi = norm(mean_j (t_l(treatment_j) - t_l(control_j)))`` against residual-change vectors."""

    name, kind = "residual-change", RESIDUAL_CHANGE
    help = "residual-change vectors of treatment minus control (DESIGN 3.1/4)"

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior))


class PooledResidualChangeMethod(ResidualChangeMethod):
    """The same query in the pooled single-vector variant's family."""

    name, kind = "residual-change-pooled", RESIDUAL_CHANGE_POOLED
    help = "residual-change, pooled single-vector variant (index built with --pooled)"


class ResidualDifferenceMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(treatment_j) - a_l(control_j)))`` against mean activations."""

    name, kind = "residual-difference", MEAN_ACTIVATION
    help = "mean-activation difference of treatment minus control"

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior))


class PersonaMethod(QueryMethod):
    """``psi = norm(mean_j (a_l(resp_j | positive prompt) - a_l(resp_j | neutral prompt)))``.

    Activations are read with the system prompt in context, as persona vectors are.
    """

    name, kind = "persona", MEAN_ACTIVATION
    help = "persona vector: activations under the positive minus the neutral system prompt"

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        if behavior.persona is None:
            raise ActindexError(f"method persona needs a persona spec (JSON), but {behavior.name!r} is a pairs file")
        responses = behavior.persona.responses
        convs = [_chat(r["question"], r["pos"], r["pos_system"]) for r in responses]
        convs += [_chat(r["question"], r["neg"], r["neg_system"]) for r in responses]
        vectors = ctx.family_vectors(self.kind, convs)
        n = len(responses)
        return unit((vectors[:n] - vectors[n:]).mean(axis=0))


class ActivationMethod(QueryMethod):
    """Baseline: project each row's mean activation on the unit persona (or difference) vector.

    Score = ``<a_l(x), psi>`` (a projection, not a cosine), as in persona-vector data screening.
    """

    name, kind = "activation", MEAN_ACTIVATION
    help = "baseline: projection of mean activations on the behaviour direction"
    projection_scores = True

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        if behavior.persona is not None:
            return PersonaMethod().vector(ctx, behavior)
        return unit(self.pair_difference(ctx, behavior))


class GradientMethod(QueryMethod):
    """``psi = -grad phi`` projected, ``phi = mean_j [log p(treatment_j) - log p(control_j)]``.

    For pairs ``-grad phi = mean_j (grad L(treatment_j) - grad L(control_j))``; the projection is
    linear, so the projected query is the mean difference of projected gradients.
    """

    name, kind = "gradient", GRADIENT
    help = "Hessian-free projected gradient of the behaviour's log-odds (index built with --grad)"

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        return unit(self.pair_difference(ctx, behavior))


class EnsembleMethod(QueryMethod):
    """Reciprocal rank fusion of several (method, layer) rankings (DESIGN 4, "an ensemble method").

    Members: ``residual-change`` and ``residual-change-pooled`` at every layer the index holds (the
    ones it has vectors for). A row's score is ``sum_m 1 / (RRF_K + rank_m(row))`` over the members'
    top rankings (ranks from 0; a row outside a member's list adds nothing); bottom rows fuse the
    members' bottom rankings the same way. Methods rank differently on different behaviours, and
    the fusion has the best worst case over the benchmark sets (bench/RESULTS.md), so it is the
    default; a rerank re-scores its fused top and bottom candidates.
    """

    name, kind = "ensemble", RESIDUAL_CHANGE
    help = "(default) rank fusion of residual-change and its pooled variant over every indexed layer"
    members: ClassVar[tuple[str, ...]] = ("residual-change", "residual-change-pooled")

    def vector(self, ctx: QueryContext, behavior: Behavior) -> np.ndarray:
        raise ActindexError("the ensemble fuses several rankings and has no single query vector; "
                            "pick one of its member methods to save or search a vector")


#: the constant of reciprocal rank fusion (Cormack et al. 2009)
RRF_K = 60


def reciprocal_rank_fusion(rankings: list[np.ndarray], rows: int) -> np.ndarray:
    """``score[row] = sum_m 1 / (RRF_K + rank_m(row))`` over ranked lists of row numbers (best first)."""
    score = np.zeros(rows)
    for ranking in rankings:
        score[ranking] += 1.0 / (RRF_K + np.arange(len(ranking)))
    return score


#: the default ranking of ``query`` and ``filter``: chosen by its worst case over the benchmark sets
#: (DESIGN 4; bench/RESULTS.md "Retrieval: layer sweep and rank fusion")
DEFAULT_METHOD = EnsembleMethod.name
#: the default where one query vector is needed (a saved vector, correction, detection, the report)
DEFAULT_VECTOR_METHOD = ResidualChangeMethod.name


def default_method(needs_vector: bool) -> str:
    """``ensemble`` for a plain ranking; ``residual-change`` when the caller needs one query vector."""
    return DEFAULT_VECTOR_METHOD if needs_vector else DEFAULT_METHOD
