"""actindex against bergson (gradient store build) and kronfluence (EK-FAC fit + pairwise scores), at steady state.

    PEERS_THREADS=1 nice -n 5 python bench/peers.py --data ../shared/data/rept-backdoor/pool.jsonl \
        --sizes 500,2000 --kron-rows 500 --pairs 4 --skip grad

Same model (the default SmolLM2-135M-Instruct, fp32, CPU), same rows (the first rows of ``--data``, chat format,
loss on assistant tokens), same tracked modules for the gradient stores (every linear module inside the decoder
blocks: ``actindex.core.vectors.select_grad_modules``'s default, 210 modules, which is also bergson's default set). The
peers live in a separate venv (``--peers-python``):

    python3.11 -m venv .peers-venv
    .peers-venv/bin/pip install torch==2.13.0            # the CPU wheel
    .peers-venv/bin/pip install -c <(echo torch==2.13.0) kronfluence bergson transformers \
        faiss-cpu h5py click tqdm platformdirs safetensors gguf accelerate numpy pyarrow datasets
    .peers-venv/bin/pip uninstall -y torchvision torchaudio  # built for another torch: breaks imports
    .peers-venv/bin/pip install -e . --no-deps

Every system runs in its own child process with ``OMP_NUM_THREADS`` = ``$PEERS_THREADS`` (default 1: on a shared
host, 2 OpenMP threads spin-wait and inflate wall times many-fold); wall time is the child's whole life (imports
and model load included) and peak memory its ``ru_maxrss``. A build runs once per ``--sizes`` row count; the cost
of a row at steady state is the slope of wall (and CPU) time between the smallest and the largest size, start-up
(imports, model load, set-up) the intercept. Measured:

* actindex build (the default: residual change, its pooled variant and mean activation at 4 layers) and, unless
  ``--skip grad``, build ``--grad`` (k = 8 per side), bytes stored per row, then the time to answer a new
  behaviour: the first ``--pairs`` pairs of the built-in ``hallucination`` behaviour, ``Index.query`` with the
  default method on a freshly opened index (model load excluded, forming the pair vectors included);
* ``bergson build`` with its defaults except ``--projection_dim`` (16, the value of its README; its default 0
  stores whole gradients, whose size per row is computed from a 2-row build with ``--projection_dim 0``);
* kronfluence: ``Analyzer.fit_all_factors`` (EK-FAC) on ``--kron-rows`` / 4 and ``--kron-rows`` rows, tracking
  ``--kron-modules`` (default: the 3 MLP linears of block 18 only; all 210 did not finish 4 rows in 15 min on the
  shared 2-core machine, and fewer, deeper modules make its backward pass shorter, so this is a lower bound on its
  cost with the same modules as the others), then ``compute_pairwise_scores`` with the behaviour as one aggregated
  query (measurement = sum over pairs of ``log p(treatment) - log p(control)``) at the same two sizes. A new
  behaviour needs a new pairwise pass over every training row (the factors are reused), so its cost at 10k rows
  is ``fixed + 10000 * per_row`` from the steady-state slope.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import append_section, markdown_table

EXTRAPOLATE_ROWS = 10_000


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict, float, int, float]:
    """Run ``cmd``; ``(its last JSON stdout line or {}, wall seconds, peak RSS KiB, CPU seconds)`` from
    ``wait4``'s rusage (CPU = user + system time of the child: robust to other jobs on the machine)."""
    env = dict(env or os.environ)
    env.setdefault("OMP_NUM_THREADS", os.environ.get("PEERS_THREADS", "1"))  # no OpenMP spin-waits on a busy host
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {os.waitstatus_to_exitcode(status)})")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- children


def child_actindex(args: argparse.Namespace) -> None:
    import actindex
    from actindex.core.models import load_model

    lm = load_model()
    t = time.perf_counter()
    manifest = actindex.build(data=args.data, out=args.out, model=lm, grad=args.grad, progress=False, overwrite=True)
    build_s = time.perf_counter() - t
    index = actindex.Index.open(args.out).use_model(lm)
    t = time.perf_counter()
    index.query(behavior=args.behavior, k=10)
    query_s = time.perf_counter() - t
    summary = manifest.summary
    print(json.dumps({"build_s": build_s, "query_s": query_s, "tokens": summary["tokens"],
                      "vector_bytes_per_row": summary["vector_bytes_per_row"],
                      "disk_bytes_per_row": summary["disk_bytes_per_row"]}))


class KronfluenceSetup:
    """kronfluence over actindex's rows and behaviours: the same tokenisation and loss mask, a train
    loss ``sum_rows -sum_t log p(x_t | x_<t)`` (labels drawn from the model when kronfluence asks for a
    sample: true Fisher, as actindex fits), and the behaviour as one aggregated measurement
    ``sum_pairs log p(treatment) - log p(control)``. Runs inside the peers' venv."""

    def __init__(self, module_patterns: list[str] | None, out: str, batch_size: int) -> None:
        import torch
        import torch.nn.functional as F
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.task import Task
        from kronfluence.utils.dataset import DataLoaderKwargs

        from actindex.core.models import load_model
        from actindex.core.vectors import select_grad_modules

        self.lm = lm = load_model()
        self.modules = modules = select_grad_modules(lm.model, module_patterns)
        self.batch_size = batch_size
        pad = lm.tokenizer.pad_token_id

        def collate(items: list[dict]) -> dict:
            width = max(len(x["input_ids"]) for x in items)
            out = {"input_ids": torch.full((len(items), width), pad), "labels": torch.full((len(items), width), -100),
                   "attention_mask": torch.zeros((len(items), width), dtype=torch.long),
                   "sign": torch.stack([x["sign"] for x in items])}
            for i, x in enumerate(items):
                n = len(x["input_ids"])
                out["input_ids"][i, :n], out["labels"][i, :n] = x["input_ids"], x["labels"]
                out["attention_mask"][i, :n] = 1
            return out

        def token_nll(batch: dict, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            """Per-row ``-sum_t log p(x_t | x_<t)`` over labelled positions (sampled labels: true Fisher)."""
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            if sample:
                with torch.no_grad():
                    drawn = torch.multinomial(torch.softmax(logits.detach().flatten(0, 1), -1), 1).view_as(labels)
                labels = torch.where(labels == -100, labels, drawn)
            nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
            return nll.view_as(labels).sum(1)

        class BehaviourTask(Task):
            def compute_train_loss(self, batch, model, sample=False):
                return token_nll(batch, model, sample).sum()

            def compute_measurement(self, batch, model):
                return (batch["sign"] * -token_nll(batch, model)).sum()  # sum of +-log p(response)

            def get_influence_tracked_modules(self):
                return modules

            def get_attention_mask(self, batch):
                return batch["attention_mask"]

        model = prepare_model(lm.model, BehaviourTask())
        self.analyzer = Analyzer("bench", model, BehaviourTask(), cpu=True, disable_tqdm=True, output_dir=out)
        self.kwargs = {"dataloader_kwargs": DataLoaderKwargs(collate_fn=collate)}

    def item(self, enc, sign: float) -> dict:
        import torch

        ids = torch.tensor(enc.input_ids)
        labels = ids.masked_fill(~torch.tensor(enc.loss_mask), -100)
        return {"input_ids": ids, "labels": labels, "sign": torch.tensor(sign)}

    def rows(self, data: str) -> list[dict]:
        from actindex.core.encode import encode_row
        from actindex.core.readers import load_rows

        return [self.item(encode_row(self.lm.tokenizer, r, 512), 1.0) for r in load_rows(data)]

    def behaviour(self, behavior) -> list[dict]:
        """Treatment responses with sign +1, controls with -1 (chat format, loss on the response)."""
        from actindex.core.encode import encode_row
        from actindex.core.rows import Row
        from actindex.query.behaviors import load_behavior

        items = []
        for p in load_behavior(behavior).pairs:
            for text, sign in ((p.treatment, 1.0), (p.control, -1.0)):
                messages = [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": text}]
                items.append(self.item(encode_row(self.lm.tokenizer, Row("q", 0, messages, None, {}, 0), 512), sign))
        return items

    def fit(self, train: list[dict]) -> float:
        """EK-FAC factors on ``train``; the seconds it took."""
        from kronfluence.arguments import FactorArguments

        t = time.perf_counter()
        self.analyzer.fit_all_factors("ekfac", train, per_device_batch_size=self.batch_size,
                                      factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True,
                                      **self.kwargs)
        return time.perf_counter() - t

    def scores(self, name: str, query: list[dict], train: list[dict]) -> tuple[object, float]:
        """``g_measurement^T (G_ekfac + lambda)^-1 g_loss(row)`` for every row of ``train``; the seconds."""
        from kronfluence.arguments import ScoreArguments

        t = time.perf_counter()
        self.analyzer.compute_pairwise_scores(name, "ekfac", query, train, per_device_query_batch_size=8,
                                              per_device_train_batch_size=self.batch_size,
                                              score_args=ScoreArguments(aggregate_query_gradients=True),
                                              overwrite_output_dir=True, **self.kwargs)
        seconds = time.perf_counter() - t
        return self.analyzer.load_pairwise_scores(name)["all_modules"], seconds


def child_kronfluence(args: argparse.Namespace) -> None:
    """EK-FAC factors fitted on rows/4 and on all the rows, then pairwise scores of the behaviour at rows/4 and
    rows (two sizes each: the per-row cost at steady state is the slope)."""
    kron = KronfluenceSetup(args.kron_modules.split(",") if args.kron_modules else None, args.out, args.batch_size)
    train, query = kron.rows(args.data), kron.behaviour(args.behavior)
    sizes = (max(1, len(train) // 4), len(train))
    fits = {n: kron.fit(train[:n]) for n in sizes}  # the last fit (all rows) is the one scored with
    timings = {n: kron.scores(f"scores{n}", query, train[:n])[1] for n in sizes}
    factor_bytes = dir_bytes(Path(args.out) / "bench" / "factors_ekfac")
    print(json.dumps({"fit_s": fits[len(train)], "fits": fits, "scores": timings, "factor_bytes": factor_bytes,
                      "modules": len(kron.modules)}))


SCALE_REPEAT = 4  # kron-scores times a second pass over the rows repeated this many times


def child_kron_scores(args: argparse.Namespace) -> None:
    """For bench/rerank.py: EK-FAC fitted on the rows ``--fit-rows`` names, then every row's pairwise
    score against the behaviour, saved to ``OUT/scores.npy`` (kronfluence's sign: positive = upweighting
    the row lowers the measurement)."""
    import numpy as np

    kron = KronfluenceSetup(args.kron_modules.split(","), args.out, args.batch_size)
    train, query = kron.rows(args.data), kron.behaviour(args.behavior)
    fit_rows = [int(r) for r in args.fit_rows.split(",")]
    fit_s = kron.fit([train[r] for r in fit_rows])
    scores, score_s = kron.scores("all", query, train)
    np.save(Path(args.out) / "scores.npy", scores.float().numpy().reshape(-1, len(train)).sum(0))
    # a second, larger size (the rows repeated SCALE_REPEAT times) splits the pass into a fixed and a
    # per-row cost; a far-apart pair of sizes keeps the per-row figure clear of timing noise
    repeated = [train[i % len(train)] for i in range(SCALE_REPEAT * len(train))]
    big_s = kron.scores("repeated", query, repeated)[1]
    per_row = (big_s - score_s) / (len(repeated) - len(train))
    print(json.dumps({"fit_s": fit_s, "score_s": score_s, "per_row_s": per_row, "sizes": [len(train), len(repeated)],
                      "fixed_s": score_s - per_row * len(train), "modules": len(kron.modules), "rows": len(train)}))


# ----------------------------------------------------------------------------- parent


def steady(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(seconds per row, fixed seconds)`` from ``(rows, seconds)`` at two sizes: the slope is the cost of a row
    after start-up (imports, model load, factor or projection set-up), the intercept what start-up costs."""
    (n0, s0), (n1, s1) = sorted(points)[0], sorted(points)[-1]
    per_row = (s1 - s0) / max(n1 - n0, 1)
    return per_row, s1 - per_row * n1


def write_rows(source: Path, target: Path, n: int) -> Path:
    """The first ``n`` rows of ``source`` (a JSONL file) written to ``target``."""
    with open(source) as src:
        target.write_text("".join(line for _, line in zip(range(n), src)))
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo", help="JSONL of chat rows (default: the demo corpus, 320 rows)")
    ap.add_argument("--sizes", default="16,64", help="row counts of the actindex and bergson builds (two or more: "
                                                     "the per-row cost at steady state is the slope between them)")
    ap.add_argument("--kron-rows", type=int, default=16, help="rows kronfluence fits on and scores (and a quarter)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs of the hallucination behaviour used as the query")
    ap.add_argument("--peers-python", default=".peers-venv/bin/python",
                    help="the python of the peers' venv (bergson, kronfluence): see the module docstring")
    ap.add_argument("--projection-dim", type=int, default=16, help="bergson --projection_dim")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--kron-modules", default="model.layers.18.mlp.*",
                    help="fnmatch patterns of kronfluence's tracked modules ('' = all 210 block linears)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: actindex,grad,bergson,kronfluence")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    ap.add_argument("--child", choices=["actindex", "kronfluence", "kron-scores"], help=argparse.SUPPRESS)
    ap.add_argument("--fit-rows", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--behavior", help=argparse.SUPPRESS)
    ap.add_argument("--grad", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "actindex":
        return child_actindex(args)
    if args.child == "kronfluence":
        return child_kronfluence(args)
    if args.child == "kron-scores":
        return child_kron_scores(args)

    from actindex.core.readers import resolve_data_path
    from actindex.query.behaviors import load_behavior

    skip = set(args.skip.split(","))
    try:
        sizes = sorted({int(n) for n in args.sizes.split(",")})
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: comma-separated row counts, e.g. 24,120")
    if len(sizes) < 2 or sizes[0] < 1 or args.kron_rows < 4:
        ap.error("--sizes needs two or more distinct positive row counts and --kron-rows at least 4: the cost per row "
                 "at steady state is a slope between two sizes")
    threads = os.environ.get("PEERS_THREADS", "1")
    peers_bin = Path(args.peers_python).parent
    if "kronfluence" not in skip:  # its child runs in the peers' venv and imports actindex there: checked first
        probe = subprocess.run([args.peers_python, "-c", "import actindex, kronfluence"], capture_output=True,
                               text=True)
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            ap.error(f"{args.peers_python} cannot import actindex and kronfluence ({why}); install them there (see "
                     "this script's docstring) before the hours of builds")
    table: list[list[object]] = []
    notes: list[str] = []
    per_row: dict[str, float] = {}

    def add(name: str, points: list[tuple[int, float, float, int]], tokens: dict[int, int], stored: str,
            modules: str) -> None:
        """A table row from ``(rows, wall s, CPU s, peak KiB)`` at each size: the steady-state cost per row."""
        wall_row, wall_fixed = steady([(n, w) for n, w, _, _ in points])
        cpu_row, _ = steady([(n, c) for n, _, c, _ in points])
        (n0, *_), (n1, *_) = points[0], points[-1]
        tok_row = (tokens[n1] - tokens[n0]) / max(n1 - n0, 1)
        per_row[name] = wall_row
        table.append([name, modules, threads, ", ".join(f"{n}: {w:.0f}" for n, w, _, _ in points),
                      f"{wall_row:.3f} (+{wall_fixed:.0f} s start-up)", f"{cpu_row:.3f}",
                      f"{tok_row / wall_row:.1f}" if wall_row > 0 else "-", f"{max(p for *_, p in points) / 1024:.0f}",
                      stored])
        print(table[-1], flush=True)

    with tempfile.TemporaryDirectory(prefix="actindex-peers-") as tmp:
        work = Path(tmp)
        source = resolve_data_path(args.data)
        files = {n: write_rows(source, work / f"rows{n}.jsonl", n) for n in sorted({*sizes, args.kron_rows, 2})}
        tokens = {n: _count_tokens(path) for n, path in files.items()}
        behavior = work / "behaviour.jsonl"
        pairs = load_behavior("hallucination").pairs[: args.pairs]
        behavior.write_text("".join(json.dumps({"prompt": p.prompt, "treatment": p.treatment, "control": p.control})
                                    + "\n" for p in pairs))
        me = [sys.executable, __file__]
        answer_s = None
        if "actindex" not in skip:
            for grad in (False, True)[: 1 if "grad" in skip else 2]:
                points, stored = [], ""
                for n in sizes:
                    info, wall, peak, cpu = run_child(me + ["--child", "actindex", "--out", str(work / f"a{grad}{n}"),
                                                            "--data", str(files[n]), "--behavior", str(behavior)]
                                                      + (["--grad"] if grad else []))
                    answer_s = answer_s or info["query_s"]
                    points.append((n, wall - info["query_s"], cpu, peak))  # the child also answered a behaviour
                    stored = f"{info['disk_bytes_per_row']:,}"
                add("actindex build --grad (k=8)" if grad else "actindex build (default)", points, tokens, stored,
                    "210 (--grad)" if grad else "residual change at 4 layers")
        if "bergson" not in skip:
            points, stored = [], ""
            for n in sizes:
                run = work / f"bergson{n}"
                cmd = [str(peers_bin / "bergson"), "build", str(run), "--model", str(_model_dir()), "--dataset",
                       str(files[n]), "--conversation_column", "messages", "--nproc_per_node", "1", "--overwrite",
                       "true", "--projection_dim", str(args.projection_dim)]
                _, wall, peak, cpu = run_child(cmd)
                points.append((n, wall, cpu, peak))
                stored = f"{dir_bytes(run) // n:,} ({(run / 'gradients.bin').stat().st_size // n:,} gradients)"
            add(f"bergson build --projection_dim {args.projection_dim}", points, tokens, stored, "210")
            full = work / "bergson-full"
            cmd = [str(peers_bin / "bergson"), "build", str(full), "--model", str(_model_dir()), "--dataset",
                   str(files[2]), "--conversation_column", "messages", "--nproc_per_node", "1", "--overwrite", "true",
                   "--projection_dim", "0"]
            _, _, peak_full, _ = run_child(cmd)
            full_row = (full / "gradients.bin").stat().st_size // 2
            notes.append(f"bergson's default store (`--projection_dim 0`, 2 rows, peak RSS {peak_full / 1024:.0f} MiB) "
                         f"holds {full_row / 2**20:.0f} MiB per row: the whole gradients of the 210 tracked modules.")
        if "kronfluence" not in skip:
            info, wall, peak, cpu = run_child([args.peers_python, __file__, "--child", "kronfluence", "--out",
                                               str(work / "kron"), "--batch-size", str(args.batch_size),
                                               "--kron-modules", args.kron_modules, "--data",
                                               str(files[args.kron_rows]), "--behavior", str(behavior)])
            fit_row, fit_fixed = steady([(int(n), v) for n, v in info["fits"].items()])
            score_row, score_fixed = steady([(int(n), v) for n, v in info["scores"].items()])
            per_row["kronfluence scores"] = score_row
            at_10k = score_fixed + EXTRAPOLATE_ROWS * score_row
            table.append([f"kronfluence EK-FAC fit (rows {', '.join(info['fits'])})", f"{info['modules']}", threads,
                          ", ".join(f"{n}: {v:.0f}" for n, v in info["fits"].items()),
                          f"{fit_row:.3f} (+{fit_fixed:.0f} s)", "-", "-", f"{peak / 1024:.0f}",
                          f"{info['factor_bytes']:,} (factors, not per row)"])
            table.append([f"kronfluence pairwise scores (rows {', '.join(info['scores'])})", f"{info['modules']}",
                          threads, ", ".join(f"{n}: {v:.0f}" for n, v in info["scores"].items()),
                          f"{score_row:.3f} (+{score_fixed:.0f} s)", "-", "-", f"{peak / 1024:.0f}", "-"])
            line = (f"kronfluence: a new behaviour needs a pairwise pass over every row: {score_row:.3f} s per row at "
                    f"steady state + {score_fixed:.0f} s, {at_10k:.0f} s at {EXTRAPOLATE_ROWS:,} rows")
            if answer_s:
                line += (f"; actindex answers it in {answer_s:.1f} s at any size (forming the pair vectors + the "
                         f"ensemble's searches): {at_10k / answer_s:.0f}x")
            notes.append(line + ".")
        for name, cost in per_row.items():
            if name.startswith("actindex build (") and "bergson build --projection_dim 16" in per_row:
                notes.append(f"steady-state build cost per row: actindex {cost:.3f} s, bergson "
                             f"{per_row['bergson build --projection_dim 16']:.3f} s: "
                             f"{per_row['bergson build --projection_dim 16'] / cost:.1f}x")

    peer_versions = subprocess.run(
        [args.peers_python, "-c", "from importlib.metadata import version as v; "
         "print(', '.join(f'{p} {v(p)}' for p in ('bergson', 'kronfluence', 'torch', 'transformers')))"],
        capture_output=True, text=True).stdout.strip()
    columns = ["system", "tracked modules", "threads", "wall s at rows", "s per row at steady state (wall)",
               "CPU s per row", "tokens/s at steady state", "peak RSS MiB", "bytes stored per row"]
    body = markdown_table(columns, table)
    print(body)
    print("\n".join(notes))
    if not args.no_record:
        counted = ", ".join(f"{n} rows: {t:,} tokens" for n, t in tokens.items())
        intro = (f"SmolLM2-135M-Instruct fp32 on CPU; the first rows of `{args.data}` ({counted}); the first "
                 f"{args.pairs} pairs of `hallucination` as the new "
                 f"behaviour; every child on {threads} OpenMP thread(s) (`PEERS_THREADS`). Each build ran at each size "
                 "in its own process; the cost per row at steady state is the slope of wall (and CPU) time between "
                 f"the sizes, start-up (imports, model load) the intercept. Peers' venv: {peer_versions}.\n\n")
        append_section("Peers at steady state: bergson and kronfluence", intro + body + "\n\n"
                       + "\n".join(f"* {n}" for n in notes), ("torch", "transformers", "faiss-cpu", "bergson",
                                                              "kronfluence"))


def _count_tokens(data: Path) -> int:
    """Tokens of the rows as actindex encodes them (the count every system's tokens/s is divided by)."""
    from transformers import AutoTokenizer

    from actindex.core.encode import encode_row
    from actindex.core.readers import load_rows

    tokenizer = AutoTokenizer.from_pretrained(_model_dir())
    return sum(len(encode_row(tokenizer, row, 512).input_ids) for row in load_rows(data))


def _model_dir() -> Path:
    from actindex.core.models import _default_model_dir

    return _default_model_dir()


if __name__ == "__main__":
    main()
