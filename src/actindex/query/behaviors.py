"""Stage 7a — behaviours: what a query asks about (docs/design.md#behaviours).

A behaviour is a set of contrastive pairs ``{prompt, treatment, control}`` (the treatment shows
the trait, the control does not) or a persona spec ``{instruction: [{pos, neg}], questions}``: a
built-in name (``hallucination``), a pairs JSONL file or a persona JSON file (:func:`load_behavior`).
:func:`complete_behavior` fills in what the behaviour leaves out with the model (missing controls,
persona responses) once, at the API boundary, returning a completed copy; the query methods
(:mod:`actindex.query.methods`) then turn it into query vectors.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actindex.errors import ActindexError, DataError

if TYPE_CHECKING:
    from actindex.core.models import LoadedModel

MAX_NEW_TOKENS = 64


# --------------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """One contrastive pair (``control`` ``None`` until the model generates it), or one row of a query by
    example (:attr:`Behavior.example`: no control; ``treatment`` is the output attributed, ``None`` until
    the model answers ``prompt``). ``history`` holds the turns before ``prompt`` (system prompts, earlier
    turns) of an example taken from a chat row."""

    prompt: str
    treatment: str | None
    control: str | None
    line: int = 0
    control_generated: bool = False
    history: list[dict[str, str]] = field(default_factory=list)
    treatment_generated: bool = False

    def conversation(self, response: str | None) -> list[dict[str, str]]:
        """The chat row of ``response`` to this pair's prompt, after its history."""
        turns = [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": response or ""}]
        return [*self.history, *turns]


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
    complete: bool = False  # controls and persona responses filled in (:func:`complete_behavior`)
    #: a query by example (:mod:`actindex.query.examples`): pairs without controls, each treatment attributed
    #: by its own vectors (``psi = norm(mean_j v(treatment_j))``) instead of treatment minus control
    example: bool = False

    def answers(self) -> list[dict[str, str]]:
        """The model's answers this behaviour attributes (a query of its own outputs, ``generate``): ``{prompt,
        answer}`` for each pair whose treatment the model wrote; ``[]`` for any other behaviour."""
        return [{"prompt": p.prompt, "answer": p.treatment} for p in self.pairs
                if p.treatment_generated and p.treatment is not None]


@functools.cache
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
        builtin = _builtin(spec)
        return replace(builtin, pairs=[_pair_copy(p) for p in builtin.pairs], notes=list(builtin.notes),
                       persona=copy.deepcopy(builtin.persona))
    path = Path(spec)
    if not path.exists():
        names = ", ".join(sorted(catalog))
        raise ActindexError(f"unknown behaviour {spec!r}: not a file and not a built-in ({names})")
    return _load_file(path, path.stem)


def _pair_copy(pair: Pair) -> Pair:
    """A copy of a pair with a history of its own (``copy.copy``: a query of a built-in copies every pair, and
    ``dataclasses.replace`` costs several times as much)."""
    out = copy.copy(pair)
    out.history = list(pair.history)
    return out


@functools.cache
def _builtin(name: str) -> Behavior:
    """A built-in behaviour, read once per process (:func:`load_behavior` hands out copies: its pairs, notes and
    persona are the copy's own)."""
    entry = _catalog()[name]
    resource = resources.files("actindex").joinpath(f"resources/behaviors/{entry['file']}")
    with resources.as_file(resource) as path:
        behavior = _load_file(Path(path), name)
    behavior.description = entry["description"]
    behavior.source = f"built-in:{name}"
    return behavior


def _load_file(path: Path, name: str) -> Behavior:
    """A behaviour file: a persona spec (``.json``) or contrastive pairs (JSONL, parquet...). A pipe
    (``--behavior <(cat pairs.jsonl)``) is read once, into a temporary copy
    (:func:`~actindex.core.sources.read_once`)."""
    from actindex.core.sources import read_once

    if not path.is_file() and not path.is_dir():
        with read_once(path) as copy:
            return replace(_load_file(copy, name), source=str(path))
    if path.suffix == ".json":
        return Behavior(name=name, persona=load_persona(path), source=str(path))
    return Behavior(name=name, pairs=load_pairs(path), source=str(path))


def load_pairs(path: Path) -> list[Pair]:
    """Contrastive pairs from JSONL; every error names the file, line and field."""
    from actindex.core.sources import iter_records

    return pairs_from_records(path, iter_records(path))


def pairs_from_records(path: Path | str, records: Iterable[tuple[int, Any]]) -> list[Pair]:
    """Contrastive pairs from ``(line, record)`` items (a file's, or a request's, ``path`` naming them in
    errors): ``prompt`` and ``treatment`` non-empty strings, ``control`` one too or absent."""
    from actindex.core.rows import json_type

    pairs = []
    for line, record in records:
        if not isinstance(record, dict):
            raise DataError(path, line, None, f"expected a {{prompt, treatment, control}} object, got "
                            f"{json_type(record)}")
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
        raise DataError(path, None, None, "the behaviour has no usable pairs")
    return pairs


#: the fields of each ``responses`` entry of a persona spec (``pos_system``/``neg_system`` are optional)
PERSONA_RESPONSE_FIELDS = ("question", "pos", "neg")


def _read_persona_json(path: Path) -> Any:
    """The JSON value of a persona file, or a one-line :class:`DataError` (not UTF-8, malformed, too deep)."""
    from actindex.core.sources import check_file_kind

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
    return persona_from_spec(_read_persona_json(path), path)


def persona_from_spec(spec: Any, path: Path | str) -> PersonaSpec:
    """A persona spec from its parsed JSON (a file's, or a request's, ``path`` naming it in errors); see
    :func:`load_persona`."""
    from actindex.core.rows import json_type

    if not isinstance(spec, dict):
        raise DataError(path, None, None, f"a persona spec must be a JSON object, got {json_type(spec)}")
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
                        f"got {json_type(responses)}")
    for i, entry in enumerate(responses):
        if not isinstance(entry, dict):
            raise DataError(path, None, f"responses[{i}]",
                            f"expected an object with 'question', 'pos' and 'neg', got {json_type(entry)}")
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
                problem = f"expected a string, got {json_type(entry[name])}"
                raise DataError(path, None, f"responses[{i}].{name}", problem)
    return PersonaSpec(instructions=pairs, questions=questions, responses=responses)


def _describe(value: Any) -> str:
    """How a wrong value looks, for error messages: ``a blank string``, ``an empty array`` or its JSON type."""
    from actindex.core.rows import json_type

    if isinstance(value, str) and not value.strip():
        return "a blank string"
    return "an empty array" if value == [] else json_type(value)


def complete_behavior(behavior: Behavior, lm: LoadedModel) -> Behavior:
    """A completed copy of ``behavior``: missing controls generated with the model (greedy), and a
    persona spec's responses generated under each system prompt and turned into pairs (question,
    response under the positive prompt, response under the neutral prompt), so every pair method works
    on it. The argument is not changed; a completed behaviour comes back as it is.
    """
    if behavior.complete:
        return behavior
    behavior = copy.deepcopy(behavior)
    if behavior.example:
        answered = answer_missing(lm, behavior.pairs, "treatment")
        if answered:
            behavior.notes.append(f"the model answered {answered} prompt(s) (greedy); its answers are attributed")
    else:
        generated = answer_missing(lm, behavior.pairs, "control")
        if generated:
            behavior.notes.append(f"generated {generated} control response(s) with the model (greedy)")
    if behavior.persona is not None and not behavior.pairs:
        persona = behavior.persona
        if not persona.responses:
            convs = []
            for pos, neg in persona.instructions:
                for q in persona.questions:
                    for system in (pos, neg):
                        convs.append([{"role": "system", "content": system}, {"role": "user", "content": q}])
            from actindex.core.models import generate

            answers = iter(generate(lm, convs, MAX_NEW_TOKENS))
            for pos, neg in persona.instructions:
                for q in persona.questions:
                    pos_answer, neg_answer = next(answers), next(answers)
                    persona.responses.append(
                        {"question": q, "pos_system": pos, "neg_system": neg, "pos": pos_answer, "neg": neg_answer}
                    )
            behavior.notes.append(f"generated {2 * len(persona.responses)} persona response(s) with the model")
        behavior.pairs = [Pair(r["question"], r["pos"], r["neg"]) for r in persona.responses]
    behavior.complete = True
    return behavior


def answer_missing(lm: LoadedModel, pairs: list[Pair], side: str) -> int:
    """Fill each pair's missing ``side`` (``control``, or an example's ``treatment``) with the model's greedy
    answer to its prompt (after its history), marking it generated; returns how many were filled. An example's
    empty answer is refused: it has no response tokens to form a vector from."""
    missing = [p for p in pairs if getattr(p, side) is None]
    if not missing:
        return 0
    from actindex.core.models import generate

    answers = generate(lm, [p.conversation(None)[:-1] for p in missing], MAX_NEW_TOKENS)
    for pair, answer in zip(missing, answers):
        if side == "treatment" and not answer.strip():
            raise ActindexError(f"the model's answer to {pair.prompt[:80]!r} is empty: there is nothing to attribute")
        setattr(pair, side, answer)
        setattr(pair, f"{side}_generated", True)
    return len(missing)
