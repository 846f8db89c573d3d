"""actindex against bergson (gradient store build) and kronfluence (EK-FAC fit + pairwise scores).

    nice -n 5 python bench/peers.py --rows 32 --pairs 8 --peers-python /work/peers-venv/bin/python

Same model (the default SmolLM2-135M-Instruct, fp32, CPU), same rows (the first ``--rows`` rows of
the shipped demo corpus, chat format, loss on assistant tokens), same tracked modules (every linear
module inside the decoder blocks: ``actindex.vectors.select_grad_modules``'s default, 210 modules,
which is also bergson's default set). The peers live in a separate venv (``--peers-python``):

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.13.0            # the CPU wheel
    /work/peers-venv/bin/pip install -c <(echo torch==2.13.0) kronfluence bergson transformers \
        faiss-cpu h5py click tqdm platformdirs safetensors gguf accelerate numpy pyarrow datasets
    /work/peers-venv/bin/pip uninstall -y torchvision torchaudio  # built for another torch: breaks imports
    /work/peers-venv/bin/pip install -e . --no-deps

Every system runs in its own child process with ``OMP_NUM_THREADS`` = ``$PEERS_THREADS`` (default 1:
on a shared host, 2 OpenMP threads spin-wait and inflate wall times many-fold); wall time is the
child's whole life (imports and model load included) and peak memory its ``ru_maxrss``. Measured:

* actindex build (residual change + mean activation at the default layer) and build ``--grad``
  (k = 8 per side), bytes stored per row, then the time to answer a new behaviour: the first
  ``--pairs`` pairs of the built-in ``hallucination`` behaviour, ``Index.query`` with the default
  method on a freshly opened index (model load excluded, forming the pair vectors included);
* ``bergson build`` with its defaults except ``--projection_dim`` (16, the value of its README;
  its default 0 stores whole gradients, whose size per row is computed from its ``info.json``
  of a 2-row build with ``--projection_dim 0``);
* kronfluence: ``Analyzer.fit_all_factors`` (EK-FAC) on the rows, tracking ``--kron-modules`` (default:
  the 3 MLP linears of block 18 only; all 210 did not finish 4 rows in 15 min on the shared 2-core
  machine, and fewer, deeper modules make its backward pass shorter, so this is a lower bound on
  its cost with the same modules as the others), then ``compute_pairwise_scores``
  with the behaviour as one aggregated query (measurement = sum over pairs of
  ``log p(treatment) - log p(control)``), at ``rows/4`` and ``rows`` training rows. A new behaviour
  needs a new pairwise pass over every training row (the factors are reused), so its cost at 10k
  rows is extrapolated linearly: ``fixed + 10000 * per_row`` from the two measured sizes.
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
    summary = manifest["summary"]
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
    """EK-FAC factors on the rows, then pairwise scores of the behaviour at rows/4 and rows."""
    kron = KronfluenceSetup(args.kron_modules.split(",") if args.kron_modules else None, args.out, args.batch_size)
    train, query = kron.rows(args.data), kron.behaviour(args.behavior)
    fit_s = kron.fit(train)
    timings = {n: kron.scores(f"scores{n}", query, train[:n])[1] for n in (max(1, len(train) // 4), len(train))}
    factor_bytes = dir_bytes(Path(args.out) / "bench" / "factors_ekfac")
    print(json.dumps({"fit_s": fit_s, "scores": timings, "factor_bytes": factor_bytes, "modules": len(kron.modules)}))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8, help="pairs of the hallucination behaviour used as the query")
    ap.add_argument("--peers-python", default="/work/peers-venv/bin/python")
    ap.add_argument("--projection-dim", type=int, default=16, help="bergson --projection_dim")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--kron-modules", default="model.layers.18.mlp.*",
                    help="fnmatch patterns of kronfluence's tracked modules ('' = all 210 block linears)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: actindex,grad,bergson,kronfluence")
    ap.add_argument("--no-record", action="store_true", help="Do not append to the run log in bench/runs/.")
    ap.add_argument("--child", choices=["actindex", "kronfluence", "kron-scores"], help=argparse.SUPPRESS)
    ap.add_argument("--fit-rows", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
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
    peers_bin = Path(args.peers_python).parent
    table: list[list[object]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="actindex-peers-") as tmp:
        work = Path(tmp)
        data = work / "rows.jsonl"
        with open(resolve_data_path("demo")) as src:
            data.write_text("".join(line for _, line in zip(range(args.rows), src)))
        behavior = work / "behaviour.jsonl"
        pairs = load_behavior("hallucination").pairs[: args.pairs]
        behavior.write_text("".join(json.dumps({"prompt": p.prompt, "treatment": p.treatment, "control": p.control})
                                    + "\n" for p in pairs))
        me = [sys.executable, __file__]
        common = ["--data", str(data), "--behavior", str(behavior)]
        tokens = _count_tokens(data)
        answer_s = None
        if "actindex" not in skip:
            for grad in (False, True)[: 1 if "grad" in skip else 2]:
                info, wall, peak, cpu = run_child(me + ["--child", "actindex", "--out", str(work / f"a{grad}"), *common]
                                             + (["--grad"] if grad else []))
                answer_s = answer_s or info["query_s"]
                wall -= info["query_s"]  # the child also answered a behaviour; its build is the rest
                name = "actindex build --grad (k=8)" if grad else "actindex build (residual change)"
                table.append([name, f"{wall:.0f}", f"{cpu:.0f} (incl. query)", f"{tokens / wall:.1f}",
                              f"{peak / 1024:.0f}",
                              f"{info['disk_bytes_per_row']:,}", f"{info['query_s']:.1f} (any rows)"])
                print(table[-1], flush=True)
        if "bergson" not in skip:
            cmd = [str(peers_bin / "bergson"), "build", "", "--model", str(_model_dir()), "--dataset", str(data),
                   "--conversation_column", "messages", "--nproc_per_node", "1", "--overwrite", "true"]
            run = work / "bergson"
            cmd[2] = str(run)
            _, wall, peak, cpu = run_child(cmd[:] + ["--projection_dim", str(args.projection_dim)])
            per_row = dir_bytes(run) // args.rows
            grads_row = (run / "gradients.bin").stat().st_size // args.rows
            table.append([f"bergson build --projection_dim {args.projection_dim}", f"{wall:.0f}", f"{cpu:.0f}",
                          f"{tokens / wall:.1f}", f"{peak / 1024:.0f}",
                          f"{per_row:,} ({grads_row:,} gradients)", "-"])
            print(table[-1], flush=True)
            two = work / "rows2.jsonl"
            two.write_text("".join(data.read_text().splitlines(keepends=True)[:2]))
            full = work / "bergson-full"
            cmd_full = [str(peers_bin / "bergson"), "build", str(full), *cmd[3:]]
            cmd_full[cmd_full.index("--dataset") + 1] = str(two)
            _, _, peak_full, _ = run_child(cmd_full + ["--projection_dim", "0"])
            full_row = (full / "gradients.bin").stat().st_size // 2
            table.append(["bergson build (default: --projection_dim 0)", "-", "-", "-",
                          f"{peak_full / 1024:.0f} (2 rows)",
                          f"{full_row:,} (gradients)", "-"])
            notes.append(f"bergson's default store holds {full_row / 2**20:.0f} MiB per row (whole gradients of the "
                         "tracked modules); with --projection_dim 16 it holds "
                         f"{grads_row / 1024:.0f} KiB per row.")
        if "kronfluence" not in skip:
            info, wall, peak, cpu = run_child([args.peers_python, __file__, "--child", "kronfluence", "--out",
                                               str(work / "kron"), "--batch-size", str(args.batch_size),
                                               "--kron-modules", args.kron_modules, *common])
            (n0, s0), (n1, s1) = sorted((int(k), v) for k, v in info["scores"].items())
            per_row = (s1 - s0) / max(n1 - n0, 1)
            fixed = max(s1 - per_row * n1, 0.0)
            at_10k = fixed + EXTRAPOLATE_ROWS * per_row
            table.append([f"kronfluence EK-FAC fit + 2 score passes ({info['modules']} modules)", f"{wall:.0f}",
                          f"{cpu:.0f}", f"{tokens / info['fit_s']:.1f} (fit only)", f"{peak / 1024:.0f}",
                          f"{info['factor_bytes']:,} (factors, not per row)", f"{s1:.0f} at {n1} rows"])
            line = (f"kronfluence pairwise scores of one behaviour: {s0:.0f} s at {n0} rows, {s1:.0f} s at {n1} rows "
                    f"-> {per_row:.2f} s per training row + {fixed:.0f} s fixed; extrapolated to "
                    f"{EXTRAPOLATE_ROWS:,} rows: {at_10k:.0f} s")
            if answer_s:
                line += (f"; actindex answers the same behaviour in {answer_s:.1f} s at any size (search is "
                         f"milliseconds): {at_10k / answer_s:.0f}x faster (target 1000x)")
            notes.append(line + ".")
            print(notes[-1], flush=True)

    peer_versions = subprocess.run(
        [args.peers_python, "-c", "from importlib.metadata import version as v; "
         "print(', '.join(f'{p} {v(p)}' for p in ('bergson', 'kronfluence', 'torch', 'transformers')))"],
        capture_output=True, text=True).stdout.strip()
    columns = ["system", "wall s", "CPU s", "tokens/s (wall)", "peak RSS MiB", "bytes stored per row",
               "answer a new behaviour s"]
    body = markdown_table(columns, table)
    print(body)
    print("\n".join(notes))
    if not args.no_record:
        intro = (f"SmolLM2-135M-Instruct fp32 on CPU; the first {args.rows} demo rows ({tokens} tokens); the first "
                 f"{args.pairs} pairs of `hallucination` as the new behaviour; tracked modules: every linear module of "
                 f"the blocks (210) for actindex --grad and bergson, `{args.kron_modules or 'all 210'}` for "
                 "kronfluence. Wall time of each child process (imports and model load included); tokens/s = "
                 f"the same token count over that wall time. Peers' venv: {peer_versions}.\n\n")
        append_section("Peers: bergson and kronfluence", intro + body + "\n\n" + "\n".join(f"* {n}" for n in notes),
                       ("torch", "transformers", "faiss-cpu", "bergson", "kronfluence"))


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
