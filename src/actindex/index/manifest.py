"""The manifest: what an index holds, typed (docs/design.md#the-index-on-disk).

``manifest.json`` is written last and atomically; its presence means "complete". :class:`Manifest` is
its one reader and writer: every module reads an index's settings from it (``manifest.max_length``,
``manifest.families``, ``manifest.curvature[...]``), never from a raw dict.

Formats: 1 (the first release) and 2 (this one) share the JSON layout; format 2 adds the sha256 of
every file a query reads (``files``) and of the manifest's own canonical JSON (``manifest_sha256``), so
an edited manifest is refused (:func:`manifest_problem`). Keys this release does not know are kept
(``extra``) and written back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from actindex.errors import IndexFileError
from actindex.files import atomic_write_text
from actindex.index.checkpoints import is_checkpoint_set
from actindex.index.config import BuildConfig

FORMAT_VERSION = 2
#: formats this release reads: 1 (no file or manifest checksums) and 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
VECTORS = "vectors.h5"
BUILD_DIR = ".build"
MANIFEST_CHECKSUM = "manifest_sha256"
#: the FAISS factory of a family with no FAISS copy: searched exactly from its stored vectors
STORE = "store"
#: the packages whose versions can move an index's vectors, recorded in its manifest
RESULT_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "faiss-cpu", "h5py", "peft", "accelerate")


@dataclass
class ModelInfo:
    """The model an index was built with: how it was loaded and what identifies it."""

    name: str
    fingerprint: str
    tokenizer: str
    num_layers: int
    hidden_size: int
    architecture: str = ""


@dataclass
class ProjectionInfo:
    """The seeded Rademacher projection of the gradient family (docs/design.md#projected-gradient)."""

    seed: int = 0
    k: int = 8
    modules: list[str] = field(default_factory=list)


@dataclass
class ReductionInfo:
    """The storage projection of the per-layer families (:mod:`actindex.core.reduction`): vectors of the model's
    ``hidden`` dims stored as ``v Q`` at ``width`` dims, ``Q`` drawn with ``seed`` and kept in ``vectors.h5`` at
    ``dataset`` (sha256 of its float32 bytes: ``sha256``). An index without one stores its vectors as computed."""

    hidden: int
    width: int
    seed: int = 0
    kind: str = "orthogonal"
    dataset: str = "reduction/matrix"
    sha256: str = ""


@dataclass
class SourceFile:
    """One shard of a directory of shards (``--data dir/``): its file name and how many rows it holds. The shards
    are read in the order listed, so a shard's rows are the dataset's rows after those of the shards before it."""

    name: str
    rows: int


@dataclass
class DataFile:
    """One data file of the index: its rows are index rows ``first_row .. first_row + rows - 1``.

    For a directory of shards, ``sources`` lists its shard files in reading order with their row counts: the
    row a row of the index was read from (its ``source_row``, a row number in the whole directory) is then in
    the shard :meth:`locate` finds, and its ``line`` is its line in that shard."""

    path: str
    sha256: str
    rows: int
    limit: int | None = None
    first_row: int = 0
    split: str | None = None
    file_rows: int | None = None  # rows in the file (more than ``rows`` with --limit or --sample)
    sample: int | None = None  # --sample N: the rows are a seeded sample (their file rows in ``source_row``)
    sources: list[SourceFile] | None = None  # the shards of a directory of shards, in reading order

    def __post_init__(self) -> None:
        if self.sources is not None:
            self.sources = [s if isinstance(s, SourceFile) else SourceFile(**s) for s in self.sources]

    def locate(self, source_row: int) -> tuple[str, int]:
        """``(file, row in it)`` of the dataset row ``source_row`` (0-based): the data path itself, or the shard
        of a directory of shards that holds it (its row counted from the shard's first row)."""
        if not self.sources:
            return self.path, source_row
        first = 0
        for shard in self.sources:
            if source_row < first + shard.rows:
                break
            first += shard.rows
        return str(Path(self.path) / shard.name), source_row - first


@dataclass
class FamilyInfo:
    """One stored vector family: its dimension, storage dtype and FAISS file."""

    dim: int
    dtype: str = "float32"
    faiss: str = ""
    faiss_factory: str = "Flat"


@dataclass
class CurvatureInfo:
    """Fitted factors of one kind: the modules, their damping, the rows fitted on, the datasets' checksums."""

    modules: list[str]
    damping: list[float]
    samples: int
    rows: list[int] = field(default_factory=list)
    labels: str = "sampled"
    sublayer: str | None = None
    seed: int = 0
    seconds: float = 0.0
    fitted_at: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    file: str = ""  # the HDF5 file of the factors, in the index (empty: the group ``curvature/<kind>`` of vectors.h5)


@dataclass
class ShardInfo:
    """Shard ``index`` of ``count``: rows ``[start, end)`` of the data."""

    index: int
    count: int
    start: int
    end: int


@dataclass
class CheckpointInfo:
    """The training checkpoint an index was built with (``ActindexCallback``): the optimiser step (0 = the
    starting weights, before the first update) and the epoch the trainer reported; the weights themselves
    are identified by ``model.fingerprint``."""

    step: int
    epoch: float | None = None


@dataclass
class HeldoutInfo:
    """The index's model on held-out rows: the median over ``rows`` rows of ``source`` (sha256 ``sha256``) of
    the response loss per token, ``loss / n_response`` (the memorisation check compares the indexed rows
    with it, :mod:`actindex.index.memorisation`)."""

    source: str
    sha256: str
    rows: int
    loss_per_token: float


@dataclass
class Manifest:
    """Everything an index records about itself (see the module docstring)."""

    model: ModelInfo
    layers: list[int]
    projection: ProjectionInfo
    data: list[DataFile]
    build: BuildConfig
    families: dict[str, FamilyInfo] = field(default_factory=dict)
    rows: int = 0
    valid_rows: int = 0
    checksums: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    curvature: dict[str, CurvatureInfo] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    shard: ShardInfo | None = None
    checkpoint: CheckpointInfo | None = None
    heldout: HeldoutInfo | None = None
    reduction: ReductionInfo | None = None
    merged_from: list[str] = field(default_factory=list)
    actindex_version: str = ""
    created_at: str = ""
    finished_at: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None  # what a build or merge reports (not stored)

    # ---- what the stages read ---------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """Tokens per row the rows were encoded with (query-side rows are encoded the same way)."""
        return self.build.max_length

    @property
    def batch_size(self) -> int:
        return self.build.batch_size

    @property
    def data_path(self) -> str:
        """The first data file (the one most indexes have)."""
        return self.data[0].path

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON layout (the first data file also at ``data.path``/``data.sha256``)."""
        skip = ("extra", "data", "build", "summary")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out = {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in out.items()}
        out["families"] = {name: asdict(fam) for name, fam in self.families.items()}
        out["curvature"] = {kind: asdict(c) for kind, c in self.curvature.items()}
        first = asdict(self.data[0])
        out["data"] = {k: first[k] for k in ("path", "sha256", "rows", "limit", "split")}
        out["data"]["files"] = [asdict(f) for f in self.data]
        out["build"] = asdict(self.build)
        for key in ("shard", "checkpoint", "heldout", "reduction", "curvature", "merged_from"):
            if not out[key]:
                out.pop(key)
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, values: dict[str, Any], path: Path | str = MANIFEST) -> Manifest:
        """The typed manifest of a parsed ``manifest.json``; a missing or mistyped field is one
        :class:`IndexFileError` naming it."""
        known = {f.name for f in fields(cls)} - {"extra", "summary"}
        try:
            data = values["data"]
            files = data.get("files") or [{k: data.get(k) for k in ("path", "sha256", "rows", "limit")}]
            shard, checkpoint, heldout = values.get("shard"), values.get("checkpoint"), values.get("heldout")
            reduction = values.get("reduction")
            return cls(
                model=ModelInfo(**values["model"]),
                layers=[int(layer) for layer in values["layers"]],
                projection=ProjectionInfo(**values["projection"]),
                data=[DataFile(**{"split": data.get("split"), **f}) for f in files],
                build=BuildConfig.from_manifest(values.get("build") or {}),
                families={name: FamilyInfo(**fam) for name, fam in values.get("families", {}).items()},
                rows=values.get("rows", 0),
                valid_rows=values.get("valid_rows", 0),
                checksums=dict(values.get("checksums", {})),
                files=dict(values.get("files", {})),
                curvature={kind: CurvatureInfo(**c) for kind, c in values.get("curvature", {}).items()},
                versions=dict(values.get("versions", {})),
                shard=ShardInfo(**shard) if shard else None,
                checkpoint=CheckpointInfo(**checkpoint) if checkpoint else None,
                heldout=HeldoutInfo(**heldout) if heldout else None,
                reduction=ReductionInfo(**reduction) if reduction else None,
                merged_from=list(values.get("merged_from", [])),
                actindex_version=values.get("actindex_version", ""),
                created_at=values.get("created_at", ""),
                finished_at=values.get("finished_at", ""),
                format_version=values.get("format_version", FORMAT_VERSION),
                extra={k: v for k, v in values.items() if k not in known and k != MANIFEST_CHECKSUM},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFileError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces) without its own checksum key."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def runtime_versions() -> dict[str, str | None]:
    """Python's and the :data:`RESULT_PACKAGES`' installed versions (``None`` if absent), read from package
    metadata without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in RESULT_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Write ``root/manifest.json`` atomically in the current format, with its own checksum; returns what
    was written. Every writer of a manifest goes through here."""
    manifest.format_version = FORMAT_VERSION
    values = json.loads(json.dumps(manifest.to_dict()))  # what a reader will load (tuples become lists)
    values[MANIFEST_CHECKSUM] = manifest_checksum(values)
    atomic_write_text(Path(root) / MANIFEST, json.dumps(values, indent=2, sort_keys=True))
    return Manifest.from_dict(values)


def read_manifest(root: str | os.PathLike) -> Manifest:
    """The manifest of a complete index, or a clear error if there is none, it is unreadable, of an
    unknown format, or (format 2) edited since it was written (its own checksum no longer matches)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        if (root / BUILD_DIR).exists():
            raise IndexFileError(f"{root} is an unfinished build; rerun the build command to resume it")
        if is_checkpoint_set(root):
            raise IndexFileError(f"{root} is a checkpoint set, not one index: query it with `actindex query --index "
                                 f"{root}` (--checkpoint STEP for one checkpoint), or name one of its step-* indexes")
        raise IndexFileError(f"{root} is not an actindex index (no {MANIFEST})")
    values = manifest_problem(path)
    if isinstance(values, str):
        raise IndexFileError(values)
    return Manifest.from_dict(values, path)


def manifest_problem(path: Path) -> dict[str, Any] | str:
    """The manifest at ``path`` as parsed JSON, or the one-line reason it cannot be used."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err).splitlines()[0] if str(err) else ""
        return f"{path}: corrupt manifest ({reason or type(err).__name__})"
    if not isinstance(values, dict):
        return f"{path}: corrupt manifest (expected a JSON object)"
    version = values.get("format_version")
    if version not in READABLE_FORMATS:
        return f"{path}: index format {version!r} is not supported (this release reads formats 1 and 2)"
    if version >= 2 and values.get(MANIFEST_CHECKSUM) != manifest_checksum(values):
        return (f"{path}: the manifest was edited or damaged since it was written (its checksum does not match); "
                "restore it, or rebuild the index")
    return values


def structure_problem(values: dict[str, Any]) -> str | None:
    """The first way a parsed manifest contradicts itself, or ``None``: ``rows`` a count, every family with
    an integer ``dim``, every per-layer family (``kind/L``) at a listed layer, every listed layer inside the
    model and holding some family's vectors."""
    try:
        rows = values["rows"]
        dims = {name: fam["dim"] for name, fam in values["families"].items()}
        layers = list(values["layers"])
        num_layers = values["model"]["num_layers"]
    except (KeyError, TypeError, AttributeError) as err:
        return f"malformed ({type(err).__name__}: {err})"
    counts = [rows, num_layers, *dims.values(), *layers]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return "rows, layers, num_layers and family dims must be non-negative integers"
    outside = [layer for layer in layers if layer >= num_layers]
    if outside:
        return f"layer {outside[0]} is outside the model's {num_layers} layers"
    for name in dims:
        _, _, at = name.partition("/")
        if at and (not at.isdigit() or int(at) not in layers):
            return f"family {name!r} is not at one of the listed layers {layers}"
    per_layer = [name for name in dims if "/" in name]
    empty = [layer for layer in layers if not any(n.endswith(f"/{layer}") for n in per_layer)]
    if per_layer and empty:
        return f"layer {empty[0]} is listed but no family holds vectors for it"
    return None
