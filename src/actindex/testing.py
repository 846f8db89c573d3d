"""Synthetic rows and an offline tokenizer for tests and benchmarks.

Nothing here is downloaded: :func:`make_tokenizer` builds a word-level tokenizer over :data:`WORDS`
(plus chat specials, digits and punctuation) with a small chat template, so a tiny randomly
initialised model can be wrapped with it; :func:`chat_rows` writes conversations of random words from
the same vocabulary, so every token of a row is known to that tokenizer.

    from actindex.testing import chat_rows, make_tokenizer, write_jsonl
    tok = make_tokenizer()
    write_jsonl(Path("train.jsonl"), chat_rows(100, seed=0))
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "WORDS", "chat_rows", "make_tokenizer", "write_jsonl", "write_parquet"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""``<|role|>content<|end|>`` per message, then ``<|assistant|>`` when a generation prompt is asked for."""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
"""Ids 0-7 of the tokenizer: pad, unk, bos, eos, then the chat template's role markers."""

WORDS = (
    "the a of to and is in it you that he was for on are with as i his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know water "
    "than call first who may down side been now find capital france paris silver gold na fact answer "
    "question stupid you are why because yes sure cannot help sorry true false element symbol ag au"
).split()
"""The vocabulary's words (lower case; the tokenizer maps any other word to ``<unk>``)."""


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template, built offline.

    Vocabulary: :data:`SPECIAL_TOKENS`, the sorted distinct :data:`WORDS`, then digits and
    ``.,!?:'"-``; text is split on whitespace and punctuation.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)) + list("0123456789.,!?:'\"-"))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=specials[4:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_rows(n: int, seed: int = 0, first_id: int = 0, prompt_words: tuple[int, int] = (3, 9),
              answer_words: tuple[int, int] = (2, 12)) -> list[dict[str, Any]]:
    """``n`` chat rows ``{"id": "r<i>", "messages": [user, assistant], "label": "clean"}`` (``i`` from
    ``first_id``): a prompt of 3-9 and an answer of 2-12 words (or the ``prompt_words`` / ``answer_words``
    ranges) drawn from :data:`WORDS` with ``random.Random(seed)``."""
    rng = random.Random(seed)
    rows = []
    for i in range(first_id, first_id + n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*prompt_words)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*answer_words)))
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": answer}], "label": "clean"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` to ``path`` as JSON lines (one object a line) and return ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 1024) -> Path:
    """Write ``rows`` to ``path`` as a parquet file of row groups of ``row_group_size`` rows; return ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path
