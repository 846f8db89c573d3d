"""Settings of ``actindex build`` (:class:`BuildConfig`), kept apart from the build so that the manifest
and the CLI read them without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from actindex.configs import DEFAULT_MODEL, check_choice, check_choices, option
from actindex.errors import ActindexError
from actindex.index.precision import STORE_DTYPES, has_scales

#: the most dims a per-layer family keeps in a default build (docs/storage.md; bench/runs/storage.md: the study)
DEFAULT_WIDTH = 1024


def _family_names() -> list[str]:
    from actindex.core.families import VectorFamily

    return list(VectorFamily.registry)


@dataclass
class BuildConfig:
    """Settings of ``actindex build``: one pass over the training set that caches vectors."""

    data: str = option(
        "Training data: JSONL, parquet, a directory of *.parquet or *.jsonl shards (read in name order as one "
        "dataset), a Hugging Face save_to_disk directory, or `demo` (the shipped corpus); streamed, never held whole.",
        "")
    out: str = option("Index directory to write.", "")
    model: str = option("Hugging Face id or local directory, or the default alias.", DEFAULT_MODEL)
    layers: list[int] | None = option(
        "Decoder layers (0-based block indices). Default: the blocks at 40/60/80/90% of the depth "
        "(layers 12, 18, 24, 27 of SmolLM2-135M's 30), which the default query method fuses.",
        None,
    )
    max_length: int = option("Tokens per row; longer rows are truncated and counted.", 512, minimum=1)
    batch_size: int = option("Rows per forward/backward pass.", 8, minimum=1)
    limit: int | None = option("Index only the first N rows.", None, minimum=1)
    sample: int | None = option(
        "Index a seeded sample of N rows of the file instead (drawn with --seed, kept in file order; filter keeps "
        "the rows outside it).", None, minimum=1)
    split: str | None = option(
        "Split of a save_to_disk DatasetDict to index (default: train if present, else the only split; "
        "the split is recorded in the manifest and filter reads the same one).",
        None,
    )
    device: str | None = option(
        "cpu, cuda, cuda:N, auto, or map (spread a model too big for one GPU over all GPUs, device_map='auto').",
        "auto",
    )
    dtype: str | None = option("Compute dtype: float32, bfloat16, float16 or auto (fp32 on CPU, bf16 on GPU).", "auto")
    residual_change: bool = option("Cache residual-change vectors (token-level form).", True)
    pooled: bool = option(
        "Also cache the pooled single-vector residual-change variant (the ensemble and residual-change-pooled "
        "methods; the adaptive default never searches it).", False
    )
    mean_activation: bool = option(
        "Cache mean response activations: the loss-weighted mean, its opening and start below.", True)
    plain_mean: bool = option(
        "Also cache the plain mean activation over every response token (the activation, persona and "
        "residual-difference methods; the adaptive default searches the loss-weighted mean instead).", False)
    opening: bool = option(
        "Also cache the response-opening variants of residual change and mean activation (the first 64 response "
        "tokens alone: a long answer's tail cannot drown what its opening shows; candidates of the adaptive "
        "default). Costs a second pass over the opening of rows whose response is longer.", True)
    start: bool = option(
        "Also cache the mean activation of the response's first 8 tokens, where an answer takes its stance (a "
        "compliance or a refusal, a yes or a no; a candidate of the adaptive default). Computed from the same "
        "pass.", True)
    surprisal: bool = option(
        "Also cache the mean activation with each response token weighted by its loss: the tokens that make a row "
        "unusual to the model (a fabricated name or date) count wherever in a long answer they sit (a candidate "
        "of the adaptive default). Computed from the same pass.", True)
    grad: bool = option("Cache Hessian-free projected gradients.", False)
    families: list[str] | None = option(
        "Vector families to cache, by name, comma-separated (default: those the switches above turn on); "
        "names any registered family, a new one included.",
        None,
    )
    grad_modules: list[str] | None = option(
        "fnmatch patterns of tracked linear modules (default: LoRA adapters if present, else every "
        "linear module in the decoder blocks).",
        None,
    )
    grad_k: int = option("Projection size per side: each tracked module contributes k*k dims.", 8, minimum=1)
    seed: int = option("Seed of the random projections (and of --sample).", 0)
    width: int = option(
        "The most dims a per-layer family is stored at (the compact layout): every vector is rotated by a seeded "
        "random orthogonal matrix stored in the index (and every query's vectors with it), keeping min(model "
        "width, --width) dims, so the bytes a row takes stop growing with the model's hidden size.",
        DEFAULT_WIDTH, minimum=8)
    full_width: bool = option(
        "Build the research layout: every per-layer family at the model's full hidden width in float32, each with "
        "its own FAISS copy, the pooled residual change and the plain mean activation included (28 families at 4 "
        "layers, ~130 KB a row at width 576, 7x that at width 4096). The default is the compact layout: the "
        "adaptive default's 20 families rotated to at most --width dims in 4 bits, one copy of each vector "
        "(5,840 bytes a row at width 576, at most 10,320 at any width; docs/storage.md).", False)
    store_dtype: str = option(
        "Storage dtype of the vectors. auto: int4 with a per-row scale in the compact layout (within 1/14 of a "
        "row's largest coordinate everywhere), float32 with --full-width. int8 halves that step at twice the "
        "bytes; float16 overflows (inf) where a raw residual change passes 65,504.", "auto", choices=STORE_DTYPES)
    faiss_factory: str = option(
        "FAISS index factory string. auto: no FAISS copy up to 200k rows (searches read the stored vectors "
        "exactly), IVF-PQ codes beyond, their candidates re-scored exactly from the stored vectors; with "
        "--full-width, a Flat copy up to 200k rows and IVF,Flat beyond. store = never a FAISS copy; Flat = an "
        "exact copy; IVF4096,Flat / HNSW32 / IVF4096,PQ32 for millions of rows.",
        "auto",
    )
    faiss_train_rows: int = option("Rows sampled (seeded) to train a FAISS factory that needs training (IVF, PQ).",
                                  100_000, minimum=1)
    shard: str | None = option(
        "Build only shard I of N (I/N, 0-based) of the rows: a contiguous block, for scheduler array jobs; "
        "join the shards with `actindex merge`.",
        None,
    )
    append: bool = option(
        "Add the rows of --data to the complete index in --out without recomputing its rows "
        "(same model and settings; ids must be new; a data file already in the index is refused).",
        False,
    )
    heldout: str = option(
        "Held-out rows (any data format, rows the model was not trained on) whose response loss per token the "
        "memorisation check compares the indexed rows' with (32 sampled rows); `demo` = the shipped demo corpus, "
        "`none` = no check.", "demo")
    skip_long: bool = option("Exclude rows longer than --max-length instead of truncating them.", False)
    part_size: int = option("Rows per committed part (the unit a killed build resumes from).", 256, minimum=1)
    overwrite: bool = option("Start over even if DIR holds a complete or unfinished index.", False)
    trust_remote_code: bool = option("Allow model repositories to run their own code.", False)

    def __post_init__(self) -> None:
        if not self.data:
            raise ActindexError("build needs --data FILE")
        if not self.out:
            raise ActindexError("build needs --out DIR")
        if self.shard is not None:
            self.shard_spec()
        if self.sample is not None and self.limit is not None:
            raise ActindexError("--sample and --limit exclude each other: --limit takes the first N rows")
        if self.append and self.overwrite:
            raise ActindexError("--append and --overwrite exclude each other")
        if self.append and self.shard is not None:
            raise ActindexError("--append and --shard exclude each other: append after merging the shards")
        check_choices(self)
        for kind in self.families or []:
            check_choice("--families", kind, _family_names())
        if self.layers is not None:
            if not self.layers:
                raise ActindexError("--layers needs at least one layer number")
            self.layers = sorted(set(int(x) for x in self.layers))
        if not self.family_kinds():
            raise ActindexError("nothing to build: every vector family is switched off")

    def family_kinds(self) -> list[str]:
        """The vector families to cache: ``families`` if given, else those the switches turn on, in the
        order ``residual_change``, ``residual_change_pooled``, ``mean_activation``, their openings, the start and
        the loss-weighted mean activation, ``gradient`` (the pooled and the plain mean with their switches or
        ``full_width``)."""
        if self.families:
            return list(dict.fromkeys(self.families))
        pooled, plain = self.pooled or self.full_width, self.plain_mean or self.full_width
        switches = (("residual_change", self.residual_change), ("residual_change_pooled", pooled),
                    ("mean_activation", self.mean_activation and plain),
                    ("residual_change_opening", self.opening and self.residual_change),
                    ("mean_activation_opening", self.opening and self.mean_activation),
                    ("mean_activation_start", self.start and self.mean_activation),
                    ("mean_activation_surprisal", self.surprisal and self.mean_activation), ("gradient", self.grad))
        return [kind for kind, on in switches if on]

    def stored_dtype(self) -> str:
        """The dtype vectors are stored in: ``store_dtype``, where ``auto`` is int4 with a per-row scale in the
        compact layout (:mod:`~actindex.index.precision`) and float32 with ``full_width`` (raw residual changes
        can pass float16's largest value, 65,504)."""
        if self.store_dtype != "auto":
            return self.store_dtype
        return "float32" if self.full_width else "int4"

    def stored_width(self, hidden_size: int) -> int | None:
        """The width per-layer families are rotated to for a model of ``hidden_size``: ``min(width, hidden_size)``,
        or ``None`` (stored as computed: ``full_width``, or a float store of a model no wider than ``width``). An
        integer store is rotated even at the model's own width: the rotation is what spreads a residual stream's
        outsized coordinates so that a row's largest coordinate sets a fine step (:mod:`~actindex.index.precision`)."""
        if self.full_width or (self.width >= hidden_size and not has_scales(self.stored_dtype())):
            return None
        return min(self.width, hidden_size)

    def index_factory(self) -> str:
        """The FAISS factory the index is written with: ``faiss_factory``, where ``auto`` is ``compact`` (no copy up
        to 200k rows, IVF-PQ beyond; :func:`~actindex.index.search.resolve_factory`) unless ``full_width``."""
        return "compact" if self.faiss_factory == "auto" and not self.full_width else self.faiss_factory

    def shard_spec(self) -> tuple[int, int] | None:
        """``(i, n)`` from ``--shard i/n``, or ``None``."""
        if self.shard is None:
            return None
        i, sep, n = str(self.shard).partition("/")
        if not (sep and i.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(i) < int(n):
            raise ActindexError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {self.shard!r}")
        return int(i), int(n)

    def compatibility_state(self) -> dict[str, Any]:
        """The settings a resumed build must share with the build it resumes."""
        skip = {"out", "overwrite", "batch_size", "device", "part_size"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}



    @classmethod
    def from_manifest(cls, values: dict[str, Any]) -> BuildConfig:
        """The settings a manifest recorded (keys this release does not know are ignored; a manifest written
        before ``full_width`` existed records a full-width build, the only layout of those releases)."""
        known = {f.name for f in fields(cls)}
        values = {"full_width": True, **values} if values else values
        return cls(**{k: v for k, v in values.items() if k in known})
