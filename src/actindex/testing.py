"""Synthetic rows, an offline tokenizer and indexes of given vectors, for tests and benchmarks.

Nothing here is downloaded: :func:`make_tokenizer` builds a word-level tokenizer over :data:`WORDS`
(plus chat specials, digits and punctuation) with a small chat template, so a tiny randomly
initialised model can be wrapped with it; :func:`chat_rows` writes conversations of random words from
the same vocabulary, so every token of a row is known to that tokenizer.

    from actindex.testing import chat_rows, make_tokenizer, write_jsonl
    tok = make_tokenizer()
    write_jsonl(Path("train.jsonl"), chat_rows(100, seed=0))

:func:`write_vector_index` writes an index of given vectors with no model at all (a synthetic model's manifest),
through the index writer and the FAISS path a build takes: search at scale is measured and tested on it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerFast

    from actindex.index.manifest import Manifest

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "WORDS", "chat_rows", "make_tokenizer", "write_jsonl", "write_parquet",
           "write_vector_index"]

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


def write_vector_index(root: Path, rows: int, families: dict[str, int],
                       vectors: Callable[[int, int], dict[str, np.ndarray]], store_dtype: str = "float32",
                       faiss_factory: str = "compact", train_rows: int | None = None, hidden: int | None = None,
                       part_rows: int = 65536) -> Manifest:
    """An index of given vectors, written as a build writes one, with no model: ``vectors(start, n)`` returns rows
    ``start .. start + n - 1`` of every family (``{"residual_change/18": (n, dim) array in store_dtype}``),
    committed ``part_rows`` at a time by :class:`~actindex.index.writer.IndexWriter` (memory bounded by a part; a
    killed call resumes), then finalised: ``vectors.h5`` and each family's FAISS file (``faiss_factory`` resolved
    for the rows, trained on a seeded sample of ``train_rows``). The manifest is a synthetic model's (30 layers,
    ``hidden`` wide, default the widest family; a storage projection of ``hidden`` x width is stored when wider),
    every row valid, ids ``r<row>``. Returns the manifest written."""
    import hashlib

    import numpy as np

    from actindex.core.reduction import StorageProjection
    from actindex.index.config import BuildConfig
    from actindex.index.manifest import DataFile, Manifest, ModelInfo, ProjectionInfo, ReductionInfo
    from actindex.index.writer import IndexWriter

    width = max(families.values())
    hidden = hidden or width
    projection = StorageProjection.seeded(hidden, width) if hidden > width else None
    reduction = None if projection is None else ReductionInfo(
        hidden=hidden, width=width, sha256=hashlib.sha256(projection.matrix.tobytes()).hexdigest())
    build = BuildConfig(data="synthetic", out=str(root), full_width=False, width=width,
                        faiss_train_rows=train_rows or BuildConfig.faiss_train_rows,
                        store_dtype=store_dtype if store_dtype in ("float32", "float16") else "auto")
    manifest = Manifest(model=ModelInfo("synthetic", f"synthetic-{hidden}", "none", 30, hidden, "synthetic"),
                        layers=sorted({int(name.split("/")[1]) for name in families if "/" in name}),
                        projection=ProjectionInfo(), data=[DataFile(path="synthetic", sha256="0" * 64, rows=rows)],
                        build=build, reduction=reduction, actindex_version="synthetic")
    state = {"synthetic": {"rows": rows, "families": families, "dtype": store_dtype, "hidden": hidden}}
    writer = IndexWriter(root, state)
    for start in range(writer.rows_done(), rows, part_rows):
        n = min(part_rows, rows - start)
        numbers = np.arange(start, start + n)
        meta = {"ids": np.array([f"r{r}" for r in numbers], dtype=object), "loss": np.full(n, 2.0, np.float32),
                "n_tokens": np.full(n, 64, np.int32), "n_response": np.full(n, 32, np.int32),
                "truncated": np.zeros(n, np.bool_), "valid": np.ones(n, np.bool_),
                "hash": np.array([f"{r:064x}" for r in numbers], dtype=object),
                "record": np.array([f'{{"id": "r{r}"}}' for r in numbers], dtype=object),
                "source_row": numbers.astype(np.int64), "line": numbers.astype(np.int64) + 1}
        writer.write_part(start, meta, vectors(start, n))
    return writer.finalize(manifest, families, store_dtype, faiss_factory, train_rows,
                           matrix=None if projection is None else projection.matrix)
