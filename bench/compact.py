"""The compact index's storage study: how far can each family the adaptive default searches be compressed
before the default's rankings move?

For each set, the full-width index ``bench/retrieval.py`` built (``--work DIR`` holds ``NAME@L.idx``) is queried
once with the default method (its pairs' vectors computed by the model, at full width); then, for every storage
variant, a copy of the index holding only the families the default searches, each vector transformed by the
variant (projected, rounded), is written with the index writer, its pairs' vectors transformed the same way are
put in its query context (the model pass a query would make, without the model), and the same query is scored
on it (AUROC, AP against the planted labels). Variants:

* ``float32`` / ``float16``: full width, stored in that dtype (each row as its unit vector in float16 times its
  float32 norm: raw float16 overflows where a residual change passes 65,504);
* ``orth K``: the build's seeded random orthogonal projection to ``K`` dims
  (:class:`~actindex.core.reduction.StorageProjection`), float16 unit rows and a norm;
* ``pca K``: per family, the top ``K`` principal directions of a seeded sample of at most 4,096 of the index's
  rows (fitted on the pool itself: the most a fitted projection can give), float16 unit rows and a norm;
* ``... -KIND``: without the families of that kind (the adaptive default chooses among the others);
* ``... int8`` / ``... int4``: each row rounded to ``round(L v / max|v|)`` and stored as such times ``max|v| / L``
  (what an integer store with a per-row scale reads back; L = 127 or 7). ``orth K`` with ``K`` at least the
  model's width is a square rotation (no dimension dropped).

Bytes per row: the default's families (20, fewer with ``-KIND``) x (stored width x itemsize, + 4 for a row's
scale: its norm in float16, ``max|v| / 127`` in int8), one copy.

    python bench/compact.py --work /tmp/ret --sets demo,fif-mixeds,sycophancy
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
from record import append_section, markdown_table
from retrieval import load_set, metrics, ranked

import actindex
from actindex.core.reduction import StorageProjection
from actindex.index.writer import META_FIELDS, Part, write_index
from actindex.query.methods.adaptive import AdaptiveMethod

Transform = Callable[[str, np.ndarray], np.ndarray]
VARIANTS = ("float32,float16,orth 256,orth 192,orth 128,orth 64,pca 128,pca 64,orth 384 int8,orth 256 int8,"
            "orth 192 int8,orth 128 int8,orth 256 int8 -residual_change_opening,"
            "orth 256 int8 -mean_activation_start")


def int_rounded(v: np.ndarray, levels: int = 127) -> np.ndarray:
    """``round(L v / s) s / L`` with ``s = max|v|`` per row: what an integer store of codes in ``[-L, L]`` with a
    per-row scale reads back (L = 127: int8; L = 7: int4, two codes a byte)."""
    scale = np.abs(v).max(axis=1, keepdims=True)
    scale[scale == 0] = 1
    return (np.round(levels * v / scale) * scale / levels).astype(np.float32)


def unit_float16(v: np.ndarray) -> np.ndarray:
    """``float16(v / ||v||) ||v||`` per row: what a float16 store of unit rows with a float32 norm reads back."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    safe = np.where(norm > 0, norm, 1)
    return ((v / safe).astype(np.float16).astype(np.float32) * norm).astype(np.float32)


def searched_families(idx: actindex.Index) -> list[str]:
    """The families the adaptive default's candidates come from in this index."""
    candidates = AdaptiveMethod().candidates(idx.reader.layers, None, tuple(idx.families))
    return list(dict.fromkeys(family for _, family, _ in candidates))


def kept_families(name: str, families: list[str]) -> list[str]:
    """``families`` without the kinds a variant drops (``-KIND`` words)."""
    dropped = {word[1:] for word in name.split() if word.startswith("-")}
    return [family for family in families if family.split("/")[0] not in dropped]


def variant(name: str, idx: actindex.Index, families: list[str]) -> tuple[Transform, str, int]:
    """The transform of ``name`` (its projection and the rounding of its store, read back as float32), the dtype
    the study's copy holds that in, and the bytes per row the variant stores (of ``families``)."""
    words = [word for word in name.split() if not word.startswith("-")]
    bits = {"int8": 8, "int4": 4}.get(words[-1])
    quantised = bits is not None
    words = words[:-1] if quantised else words
    dtype = "float32" if words == ["float32"] else "float16"
    hidden = idx.manifest.model.hidden_size
    if words[0] == "orth":  # K >= the model's width: a square rotation (what a quantised store needs)
        k = int(words[1])
        projection = StorageProjection.seeded(hidden, min(k, hidden), idx.manifest.projection.seed, square=True)
        project: Transform = lambda _family, v: projection.project(v)  # noqa: E731
        width = projection.width
    elif words[0] == "pca":
        width = int(words[1])
        bases = {}
        for family in families:
            rows = idx.reader.table.searchable
            rows = np.sort(np.random.default_rng(0).choice(rows, min(4096, len(rows)), replace=False))
            sample = idx.reader.vectors(family, rows).astype(np.float64)
            _, _, vt = np.linalg.svd(sample - sample.mean(axis=0), full_matrices=False)
            basis = np.zeros((hidden, width))
            basis[:, : min(width, len(vt))] = vt[:width].T
            bases[family] = basis.astype(np.float32)
        project = lambda family, v: np.asarray(v, np.float32) @ bases[family]  # noqa: E731
    else:
        project = lambda _family, v: np.asarray(v, np.float32)  # noqa: E731
        width = hidden
    rounded = (lambda v: int_rounded(v, 2 ** (bits - 1) - 1)) if bits else unit_float16 if dtype == "float16" else None
    transform = project if rounded is None else (lambda family, v: rounded(project(family, v)))
    stored = -(-width * bits // 8) if bits else width * np.dtype(dtype).itemsize
    per_row = len(families) * (stored + (0 if rounded is None else 4))
    return transform, "float32", per_row


def write_variant(idx: actindex.Index, families: list[str], transform: Transform, dtype: str, out: Path) -> Path:
    """A copy of ``idx`` holding ``families`` transformed, through the index writer (one part)."""
    out.mkdir(parents=True, exist_ok=True)
    part = out / "part.h5"
    with h5py.File(idx.root / "vectors.h5", "r") as src, h5py.File(part, "w") as f:
        for key in META_FIELDS:
            f.create_dataset(key, data=src[key][()])
        dims = {}
        for family in families:
            v = transform(family, src[f"vectors/{family}"][()].astype(np.float32))
            f.create_dataset(f"vectors/{family}", data=v)
            dims[family] = v.shape[1]
    manifest = replace(idx.manifest, families={})
    write_index(out, [Part(0, len(idx), part)], manifest, dims, dtype, "Flat")
    part.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="bench/retrieval.py's --work directory (its NAME@L.idx indexes)")
    ap.add_argument("--sets", required=True, help="sets whose indexes are there (NAME or NAME@L)")
    ap.add_argument("--variants", default=VARIANTS, help="comma-separated storage variants (module docstring)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    lm = actindex.load_model()
    names = args.variants.split(",")
    header = ["set", "full width, float32 (today)", *names]
    auroc_rows, ap_rows, bytes_row = [], [], None
    scratch = Path(tempfile.mkdtemp(prefix="actindex-compact-"))
    for spec in args.sets.split(","):
        name, _, cut = spec.partition("@")
        path = work / f"{name}@{int(cut or 512)}.idx"
        if not (path / "manifest.json").exists():
            print(f"skipped {spec}: no index at {path}", file=sys.stderr)
            continue
        _, behavior = load_set(name, work, 300, 80)
        idx = actindex.Index.open(path, cache=False).use_model(lm)
        labels = np.array([r.get("label", "clean") != "clean" for r in idx.reader.records(range(len(idx)))])
        base = metrics(ranked(idx, behavior, "adaptive", None)[0], labels)
        full = dict(idx.session.query_context().cache)  # (family, row) -> the pairs' full-width vectors
        families = searched_families(idx)
        aurocs, aps, sizes = [f"{base['auroc']:.3f}"], [f"{base['ap']:.3f}"], ["-"]
        for v in names:
            kept = kept_families(v, families)
            transform, dtype, per_row = variant(v, idx, kept)
            out = write_variant(idx, kept, transform, dtype, scratch / f"{name}-{v.replace(' ', '-')}")
            copy = actindex.Index.open(out, cache=False).use_model(lm)
            ctx = copy.session.query_context()
            for (family, key), vector in full.items():
                if family in kept:
                    ctx.cache[(family, key)] = transform(family, vector[None])[0]
            m = metrics(ranked(copy, behavior, "adaptive", None)[0], labels)
            copy.close()
            aurocs.append(f"{m['auroc']:.3f}")
            aps.append(f"{m['ap']:.3f}")
            sizes.append(f"{per_row:,}")
            print(f"{spec} {v}: AUROC {m['auroc']:.3f} AP {m['ap']:.3f} ({per_row} B/row)", flush=True)
        idx.close()
        auroc_rows.append([spec, *aurocs])
        ap_rows.append([spec, *aps])
        bytes_row = ["bytes per row (vectors, one copy)", f"{len(families) * 4 * idx.manifest.model.hidden_size:,}"
                     + " (+ as much again in FAISS)", *sizes[1:]]
    body = ("AUROC of the adaptive default per storage variant (module docstring of bench/compact.py):\n\n"
            + markdown_table(header, [*auroc_rows, *([bytes_row] if bytes_row else [])])
            + "\n\nAP:\n\n" + markdown_table(header, ap_rows) + "\n")
    print(body)
    if not args.no_record:
        append_section("Storage study: compression against the default's rankings", body, name="storage")


if __name__ == "__main__":
    main()
