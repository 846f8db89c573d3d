"""Stage 1c — encode: token ids and the loss mask of a row, exactly as the model was trained on it.

Loss mask convention: ``loss_mask[t]`` is True when token ``t`` is a response token, i.e. when the
model's prediction of token ``t`` (made at position ``t - 1``) enters the loss
``L(x) = -sum_{t: mask} log p(x_t | x_<t)``. The same positions form ``R`` in docs/design.md#notation:
``mean_R`` averages hidden states at the positions that hold response tokens.

Very long rows cost bounded work: :func:`encode_row` tokenises at most ``CHARS_PER_TOKEN`` characters
per token of ``max_length`` of each text (8 times longer prefixes, up to the whole text, when that
prefix gives too few tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actindex.core.rows import CHARS_PER_TOKEN, CUT_MARGIN, Row
from actindex.errors import DataError


@dataclass
class Encoded:
    """A tokenised row: ids, the loss mask over them, and whether it was truncated."""

    input_ids: list[int]
    loss_mask: list[bool]
    truncated: bool = False
    n_response: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_response = int(sum(self.loss_mask))


def response_opening(row: Encoded, window: int) -> Encoded:
    """The row cut after its first ``window`` response tokens (itself when its response is no longer).

    For a causal model every activation, per-token loss and gradient over the cut row equals the one of the
    same position in the row whose loss counts only those tokens: the vectors of the response's opening.
    """
    positions = [i for i, counted in enumerate(row.loss_mask) if counted]
    if len(positions) <= window:
        return row
    cut = positions[window - 1] + 1
    return Encoded(input_ids=row.input_ids[:cut], loss_mask=row.loss_mask[:cut], truncated=row.truncated)


def _chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


Render = Callable[[Sequence[dict[str, str]], bool], list[int]]


def _closing_length(render: Render, history: Sequence[dict[str, str]], start: list[int], end: list[int]) -> int:
    """How many tokens at the end of an assistant turn (``end[len(start):]``) close it: the tokens the
    template renders after an empty response, when the turn ends with them and has content before them."""
    empty = render([*history, {"role": "assistant", "content": ""}], False)
    closing = empty[_common_prefix(start, empty):]
    fits = 0 < len(closing) < len(end) - len(start) and end[len(end) - len(closing):] == closing
    return len(closing) if fits else 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer has a chat template (else single-turn rows are rendered as plain text)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _guarded(row: Row, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; anything the tokenizer or its chat template raises becomes a
    :class:`DataError` naming the row's file, line and field."""
    try:
        return call(*args, **kwargs)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - tokenizers and jinja templates raise anything; one line for users
        reason = (str(err).splitlines() or [""])[0].strip() or "no message"
        field = "messages" if row.messages is not None else "text"
        raise DataError(row.path, row.line, field,
                        f"the tokenizer failed on this row ({type(err).__name__}: {reason})") from None


def _capped(tokenize: Callable[[str], list[int]], text: str, max_length: int | None) -> str:
    """``text``, or the shortest of its prefixes of ``CHARS_PER_TOKEN * max_length * 8**k`` characters
    that tokenises to more than ``max_length + CUT_MARGIN`` tokens (the whole text when none does).

    The tokens a cut can change lie past the first ``max_length``, which truncation drops anyway,
    so a cut row encodes to the same ids and mask as the whole row, with bounded work.
    """
    if max_length is None:
        return text
    budget = CHARS_PER_TOKEN * max_length
    while len(text) > budget:
        prefix = text[:budget]
        if len(tokenize(prefix)) > max_length + CUT_MARGIN:
            return prefix
        budget *= 8
    return text


def encode_row(tokenizer: Any, row: Row, max_length: int | None = None, content_only: bool = False) -> Encoded:
    """Token ids and loss mask for a row.

    Chat rows go through the tokenizer's chat template; each assistant turn's tokens (the
    template's end-of-turn token included) are found by tokenising the conversation up to the
    turn with the generation prompt and up to the end of the turn, so the mask is exact for any
    template whose renders are prefixes of one another. Without a chat template, a
    single-turn row is rendered as ``prompt + "\\n" + response``. Rows longer than ``max_length``
    are cut on the right and flagged ``truncated``.

    Work is bounded by ``max_length``, not by the row: each text (or message content) longer than
    ``CHARS_PER_TOKEN * max_length`` characters is tokenised from a prefix that holds enough tokens
    (:func:`_capped`), and turns after the first ``max_length`` tokens are not rendered. The result
    is the same as for the whole row.

    ``content_only`` leaves the tokens that close each response out of the mask: the tokens the
    template writes after an empty response (``<|im_end|>`` and a newline, say), or the end-of-sequence
    token without a template. They are the same for every row.

    Anything the tokenizer or the chat template raises becomes a :class:`DataError` naming the
    row's file (``row.path``), line and field.
    """

    def tokenize(text: str, special: bool = False) -> list[int]:
        return list(_guarded(row, tokenizer, text, add_special_tokens=special)["input_ids"])

    def render(messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
        return _guarded(row, _chat_ids, tokenizer, messages, generation_prompt)

    def cap(text: str) -> str:
        return _capped(tokenize, text, max_length)

    if row.messages is None:
        ids = tokenize(cap(row.text or ""), special=True)
        mask = [False] + [True] * (len(ids) - 1)
    elif has_chat_template(tokenizer):
        messages = [dict(m, content=cap(m["content"])) for m in row.messages]
        ids, mask = [], []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = render(messages[:turn], True)
            end = render(messages[: turn + 1], False)
            if end[: len(ids)] != ids:
                raise DataError(
                    row.path, row.line, "messages",
                    "the tokenizer's chat template does not render turns as prefixes; cannot locate "
                    "assistant tokens",
                )
            # Usually ``start`` is a prefix of ``end``. When a response begins with whitespace the
            # tokenizer may merge it with the generation prompt's last token: the response then
            # starts at the first token where the two renders differ.
            start = start[: _common_prefix(start, end)]
            closing = _closing_length(render, messages[:turn], start, end) if content_only else 0
            mask += [False] * (len(start) - len(ids)) + [True] * (len(end) - len(start) - closing) + [False] * closing
            ids = end
            if max_length is not None and len(ids) > max_length:
                break  # later turns only add tokens that truncation drops
    else:
        users = [m for m in row.messages if m["role"] != "assistant"]
        if len(row.messages) != 2 or len(users) != 1:
            raise DataError(
                row.path, row.line, "messages",
                "the model has no chat template, so only single-turn rows can be rendered",
            )
        prompt_ids = tokenize(cap(users[0]["content"]) + "\n", special=True)
        resp_ids = tokenize(cap(row.messages[-1]["content"]))
        if tokenizer.eos_token_id is not None:
            resp_ids = resp_ids + [tokenizer.eos_token_id]
        ids = list(prompt_ids) + list(resp_ids)
        closing = int(content_only and tokenizer.eos_token_id is not None)
        mask = [False] * len(prompt_ids) + [True] * (len(resp_ids) - closing) + [False] * closing
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(input_ids=list(ids), loss_mask=mask, truncated=truncated)


