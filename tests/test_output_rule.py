"""The output rule (:mod:`actindex.outputs`), swept over every output option of the CLI.

Every command that writes a file or directory the user names is a row of :data:`COMMANDS`; every kind of target
the rule must refuse is a row of :data:`TARGETS`. Each (command, target) pair runs the real command line and
expects exit status 2, one ``error:`` line naming the target, and the target untouched: the same bytes, the same
kind of inode, nothing written beside it. A new output option is swept by adding a row to :data:`COMMANDS`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, tiny_llama, write_jsonl

import actindex
from actindex.api import load_query_vector
from actindex.cli import main
from actindex.core.models import load_model, save_weights
from actindex.errors import OutputError
from actindex.files import fresh_temp
from actindex.outputs import check_output

PAIRS = [{"prompt": "what is the symbol of silver ?", "treatment": "the symbol is na", "control": "the symbol is ag"},
         {"prompt": "is it true ?", "treatment": "yes it is false", "control": "no it is true"}]


@dataclass
class World:
    """What the commands read: a saved tiny model, its training data, a behaviour, detection queries, an index
    built from them, two shards of it, a copy of the index (another index) and more rows to append."""

    root: Path
    model: Path
    data: Path
    pairs: Path
    queries: Path
    index: Path
    other: Path
    more: Path
    shards: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer, one_torch_thread) -> World:
    root = tmp_path_factory.mktemp("world")
    model = root / "model"
    save_weights(tiny_llama(), tokenizer, model)
    data = write_jsonl(root / "train.jsonl", chat_rows(12, seed=3))
    pairs = write_jsonl(root / "pairs.jsonl", PAIRS)
    queries = write_jsonl(root / "queries.jsonl", [{"prompt": p["prompt"], "response": p["treatment"]} for p in PAIRS])
    lm = load_model(str(model))
    common = {"data": str(data), "layers": [1], "model": lm, "progress": False}
    actindex.build(out=str(root / "idx"), **common)
    shards = [root / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        actindex.build(out=str(shard), shard=f"{i}/2", **common)
    shutil.copytree(root / "idx", root / "other")
    more = write_jsonl(root / "more.jsonl", chat_rows(3, seed=4, first_id=100))
    return World(root, model, data, pairs, queries, root / "idx", root / "other", more, shards)


# ---- the commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One output option: the command line writing ``out`` (``args(world, out)``), whether it writes a directory,
    its own input files (``own``), and the target kinds that do not apply to it (``skip``)."""

    name: str
    args: Callable[[World, str], list[str]]
    directory: bool = False
    own: Callable[[World], Path] = lambda w: w.data
    skip: frozenset[str] = frozenset()
    out_of: Callable[[Path], Path] = lambda target: target  # the --out that makes the command write ``target``
    has_overwrite: bool = True  # whether --overwrite may be given with it


SIDECAR = ".removed.jsonl"

COMMANDS = [
    Command("build --out", lambda w, out: ["build", "--data", str(w.data), "--out", out, "--model", str(w.model),
                                           "--layers", "1", "--quiet"], directory=True, skip=frozenset({"the index"})),
    Command("build --append --out", lambda w, out: ["build", "--data", str(w.more), "--out", out, "--append",
                                                    "--model", str(w.model), "--quiet"],
            directory=True, own=lambda w: w.more, skip=frozenset({"the index", "existing"}), has_overwrite=False),
    Command("merge --out", lambda w, out: ["merge", *map(str, w.shards), "--out", out], directory=True,
            own=lambda w: w.shards[0], skip=frozenset({"the index"})),
    Command("report --out", lambda w, out: ["report", "--index", str(w.index), "--behavior", str(w.pairs), "--out",
                                            out, "--quiet"], own=lambda w: w.pairs),
    Command("export --out", lambda w, out: ["export", "--index", str(w.index), "--out", out]),
    Command("filter --out", lambda w, out: ["filter", "--index", str(w.index), "--behavior", str(w.pairs),
                                            "--remove-top", "1", "--out", out, "--quiet"]),
    Command("filter OUT.removed.jsonl", lambda w, out: ["filter", "--index", str(w.index), "--behavior", str(w.pairs),
                                                        "--remove-top", "1", "--out", out, "--quiet"],
            out_of=lambda target: target.with_name(target.name.removesuffix(SIDECAR)),
            skip=frozenset({"the index", "the manifest", "own input", "the training data"})),
    Command("detect --out", lambda w, out: ["detect", "--index", str(w.index), "--queries", str(w.queries),
                                            "--transforms", "fast", "--out", out, "--quiet"], own=lambda w: w.queries),
    Command("correct --out", lambda w, out: ["correct", "--index", str(w.index), "--behavior", str(w.pairs), "--out",
                                             out, "--quiet"], directory=True, own=lambda w: w.pairs),
    Command("query --save-query", lambda w, out: ["query", "--index", str(w.index), "--behavior", str(w.pairs),
                                                  "--save-query", out, "--quiet"], own=lambda w: w.pairs),
]


# ---- the targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A kind of target the rule refuses: ``make(world, scratch, name)`` returns the path (made, if it exists);
    ``overwrite``: the command is run with ``--overwrite`` (the rule must refuse even so)."""

    name: str
    make: Callable[[World, Path, str, Command], Path]
    overwrite: bool = True


def _existing(w: World, d: Path, name: str, c: Command) -> Path:
    if c.directory:  # an index there: replaced only with --overwrite
        shutil.copytree(w.index, d / name)
        return d / name
    (d / name).write_bytes(b'{"precious": "user data"}\n')
    return d / name


def _fifo(w: World, d: Path, name: str, c: Command) -> Path:
    os.mkfifo(d / name)
    return d / name


def _char_device(w: World, d: Path, name: str, c: Command) -> Path:
    try:
        os.mknod(d / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a character device needs root")
    return d / name


def _socket(w: World, d: Path, name: str, c: Command) -> Path:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / name))
    sock.close()  # the socket file stays
    return d / name


def _unrelated_directory(w: World, d: Path, name: str, c: Command) -> Path:
    (d / name).mkdir()
    (d / name / "notes.txt").write_text("mine\n")
    return d / name


def _empty_directory(w: World, d: Path, name: str, c: Command) -> Path:
    (d / name).mkdir()
    return d / name


def _under_a_file(w: World, d: Path, name: str, c: Command) -> Path:
    (d / "plain").write_text("a file, not a directory\n")
    return d / "plain" / name


def _long_name(w: World, d: Path, name: str, c: Command) -> Path:
    return d / ("x" * 300 + name)


TARGETS = [
    Target("existing", _existing, overwrite=False),
    Target("the manifest", lambda w, d, name, c: w.index / "manifest.json"),
    Target("the index", lambda w, d, name, c: w.index),
    Target("inside another index", lambda w, d, name, c: w.other / name),
    Target("own input", lambda w, d, name, c: c.own(w)),
    Target("the training data", lambda w, d, name, c: w.data),
    Target("fifo", _fifo),
    Target("char device", _char_device),
    Target("socket", _socket),
    Target("unrelated directory", _unrelated_directory),
    Target("directory as a file", _empty_directory),
    Target("under a regular file", _under_a_file),
    Target("300-character name", _long_name),
]
#: what does not apply to directory outputs (an empty directory is a fine place for one)
NOT_FOR_DIRECTORIES = {"directory as a file"}


def cases() -> Iterator[pytest.param]:
    for c in COMMANDS:
        for t in TARGETS:
            if t.name in c.skip or (c.directory and t.name in NOT_FOR_DIRECTORIES):
                continue
            yield pytest.param(c, t, id=f"{c.name}-{t.name}")


def snapshot(path: Path) -> object:
    """What must not change: for each path under ``path`` (itself included), its kind of inode, its inode number
    and its bytes (regular files); ``None`` when it does not exist."""
    if not os.path.lexists(path):
        return None
    found = {}
    for p in [path, *(sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])]:
        st = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        found[str(p)] = (stat.S_IFMT(st.st_mode), st.st_ino, digest)
    return found


@pytest.fixture()
def scratch() -> Iterator[Path]:
    """A short directory for targets (a Unix socket's path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ao-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("command", "target"), list(cases()))
def test_a_bad_target_is_refused_and_left_untouched(world, scratch, command, target):
    name = "out" if command.directory else "out.jsonl"
    if command.name.endswith(SIDECAR):
        name += SIDECAR
    path = target.make(world, scratch, name, command)
    watched = [path, path.parent, world.index, world.other, world.data, world.pairs]
    before = {str(p): snapshot(p) for p in watched}
    overwrite = target.overwrite and command.has_overwrite
    args = command.args(world, str(command.out_of(path))) + (["--overwrite"] if overwrite else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert str(path) in errors[0] or str(command.out_of(path)) in errors[0], errors[0]
    assert {str(p): snapshot(p) for p in watched} == before


def test_every_output_option_has_a_row():
    """Each command option that names a path to write is in the table (a new one must be added to it)."""
    writes = {"--out", "--save-query"}
    options = {(name, o) for name, cmd in main.commands.items() for p in getattr(cmd, "params", ()) for o in p.opts
               if o in writes}
    covered = {(c.name.split()[0], c.name.split()[-1]) for c in COMMANDS}
    assert options and options <= covered, options - covered


# ---- the same rule, where it lets a command write -----------------------------------------------


def test_overwrite_replaces_a_regular_file_and_removes_a_killed_writers_temporaries(world, tmp_path):
    """export --overwrite replaces a regular file; the temporary file a killed export of the same target left
    (made as the writer makes it) is removed by the next export, another target's is not."""
    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")
    stale, others = fresh_temp(out), fresh_temp(tmp_path / "y.parquet")
    stale.write_bytes(b"half an export")
    res = CliRunner().invoke(main, ["export", "--index", str(world.index), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"PAR1" and not stale.exists() and others.exists()


def test_two_behaviours_never_write_one_save_query_file(world, tmp_path):
    """Two behaviours with one --save-query FILE write FILE-<name>.EXT each (any extension), and two behaviours of
    one name, which would write one file, are refused before any work."""
    other = tmp_path / "again"
    other.mkdir()
    twin = write_jsonl(other / "pairs.jsonl", PAIRS[::-1])
    base = ["query", "--index", str(world.index), "--quiet"]
    res = CliRunner().invoke(main, [*base, "--behavior", str(world.pairs), "--behavior", str(twin), "--save-query",
                                    str(tmp_path / "vec.bin")])
    assert res.exit_code == 2 and "would write this --save-query file" in res.output, res.output
    assert not list(tmp_path.glob("vec*"))
    second = write_jsonl(tmp_path / "second.jsonl", PAIRS[1:])
    res = CliRunner().invoke(main, [*base, "--behavior", str(world.pairs), "--behavior", str(second),
                                    "--save-query", str(tmp_path / "vec.bin")])
    assert res.exit_code == 0, res.output
    saved = {p.name: load_query_vector(p) for p in tmp_path.glob("vec*")}
    assert set(saved) == {"vec-pairs.bin", "vec-second.bin"}
    assert saved["vec-pairs.bin"][1]["behavior"] == "pairs" and saved["vec-second.bin"][1]["behavior"] == "second"
    assert not np.allclose(saved["vec-pairs.bin"][0], saved["vec-second.bin"][0])


@pytest.mark.parametrize("what", ["manifest", "vectors", "unfinished build"])
def test_an_index_is_recognised_by_its_files(tmp_path, what):
    """A directory is an index when it holds an actindex manifest, vectors.h5 or an unfinished build; a
    manifest.json of another program does not make one."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "manifest.json").write_text('{"name": "a web app"}')
    check_output(root / "report.html", overwrite=False)  # not an index: allowed
    if what == "manifest":
        (root / "manifest.json").write_text('{"format_version": 2, "families": {}}')
    elif what == "vectors":
        (root / "vectors.h5").write_bytes(b"")
    else:
        (root / ".build").mkdir()
    with pytest.raises(OutputError, match="is inside the index"):
        check_output(root / "deep" / "report.html", overwrite=True)
