r"""Where a command spends its time in XLA compiling, over every Python process it starts.

    python -m benchmarks.compile_profile -- python -m pytest
    python -m benchmarks.compile_profile --out=/tmp/compiles.md -- python -m experiments.main

The command runs with a `sitecustomize` module on PYTHONPATH. In every Python process it
starts (pytest workers, runner subprocesses, ...), that module logs JAX's compile events
(`jax._src.dispatch`, `jax._src.interpreters.pxla` and `jax._src.compiler` at DEBUG) to one
file per process and turns off their propagation, so nothing extra reaches stdout or stderr.
When the command ends, this prints:
- compile seconds per kind of process (`python -m <module>`, `python -c`, a script), with the
  number of persistent-cache hits;
- compile seconds per program name, with how many compiles and distinct input signatures
  (argument shapes, dtypes and shardings; static arguments are not part of a signature, so one
  signature can be several programs: `epoch_order` compiles once per labeled-set size);
- under pytest, compile seconds per test file (its worker's and its subprocesses'), and how
  many went to programs that no other test file compiled;
- the seconds spent compiling, in another process, a program of the same name and signature
  as one compiled before: about what one compile cache shared by every process could save
  (an over-estimate where programs differ only in static arguments or baked-in constants).

The seconds are JAX's own timing of each backend compile (a persistent-cache hit is timed as
its load), in each process's wall time. The command's exit status is passed on.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from absl import app, flags

_LOGGERS = ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.compiler")
_SITECUSTOMIZE = f"""\
import logging, os
_dir = os.environ.get("BAL_JAX_COMPILE_LOG_DIR")
if _dir:
    _pid = os.getpid()
    try:
        with open("/proc/self/cmdline", "rb") as _f:
            _cmd = _f.read().split(b"\\0")
        _cmd = " ".join(a.decode(errors="replace") for a in _cmd if a)
    except OSError:
        import sys
        _cmd = " ".join(["python", *sys.argv])
    with open(os.path.join(_dir, f"{{_pid}}.cmd"), "w") as _f:
        _f.write(_cmd)
    class _Test(logging.Filter):
        def filter(self, record):  # the test file running (pytest sets it; children inherit)
            record.test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
            return True

    _h = logging.FileHandler(os.path.join(_dir, f"{{_pid}}.log"), delay=True)
    _h.addFilter(_Test())
    _h.setFormatter(logging.Formatter("%(test)s\t%(message)s"))
    for _name in {_LOGGERS!r}:
        _log = logging.getLogger(_name)
        _log.setLevel(logging.DEBUG)
        _log.addHandler(_h)
        _log.propagate = False
"""

_COMPILING = re.compile(r"Compiling (\S+) with global shapes and types (.*)")
_FINISHED = re.compile(r"Finished XLA compilation of (\S+) in ([\d.eE+-]+) sec")
_HIT = "Persistent compilation cache hit"


@dataclass(frozen=True)
class Compile:
    pid: str
    kind: str
    name: str
    signature: str  # shapes, dtypes and argument shardings
    seconds: float
    cache_hit: bool
    test: str = ""  # the pytest test file that was running, if any


def process_kind(cmd: str) -> str:
    """`python -m <module>`, `python -c` or the script a process ran: the first of them
    among the interpreter's arguments (what follows belongs to the program)."""
    args = cmd.split()
    i = 1
    while i < len(args):
        if args[i] == "-m" and i + 1 < len(args):
            return f"python -m {args[i + 1]}"
        if args[i] == "-c":
            return "python -c"
        if not args[i].startswith("-"):
            return os.path.basename(args[i])
        i += 2 if args[i] in ("-X", "-W") else 1  # the options that take a value
    return cmd


def read_logs(log_dir: str) -> list[Compile]:
    """Every backend compile logged under `log_dir`, in each process's order."""
    out = []
    for cmd_file in sorted(glob.glob(os.path.join(log_dir, "*.cmd"))):
        pid = os.path.basename(cmd_file)[: -len(".cmd")]
        with open(cmd_file) as f:
            kind = process_kind(f.read())
        log = os.path.join(log_dir, f"{pid}.log")
        if not os.path.exists(log):
            continue  # a process that compiled nothing
        signature, hit = {}, False
        with open(log, errors="replace") as f:
            for line in f:
                if m := _COMPILING.search(line):
                    signature[m.group(1)] = m.group(2)
                elif _HIT in line:
                    hit = True
                elif m := _FINISHED.search(line):
                    name = m.group(1)
                    sig = signature.get(name, "")
                    test = line.split("\t", 1)[0] if "\t" in line else ""
                    out.append(Compile(pid, kind, name, sig, float(m.group(2)), hit, test))
                    hit = False
    return out


def _table(header: Sequence[str], rows: list[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def summarize(compiles: list[Compile], top: int = 15) -> str:
    total = sum(c.seconds for c in compiles)
    kinds: dict[str, list[Compile]] = collections.defaultdict(list)
    names: dict[str, list[Compile]] = collections.defaultdict(list)
    for c in compiles:
        kinds[c.kind].append(c)
        names[c.name].append(c)
    out = [
        f"{len(compiles)} compiles, {total:.1f} s, in {len({c.pid for c in compiles})} processes.",
        "",
    ]
    rows = []
    for kind, cs in sorted(kinds.items(), key=lambda kv: -sum(c.seconds for c in kv[1])):
        rows.append(
            (
                kind,
                len({c.pid for c in cs}),
                len(cs),
                f"{sum(c.seconds for c in cs):.1f}",
                sum(c.cache_hit for c in cs),
            )
        )
    out += _table(("process", "processes", "compiles", "seconds", "cache hits"), rows)
    out.append("")
    rows = []
    by_time = sorted(names.items(), key=lambda kv: -sum(c.seconds for c in kv[1]))
    for name, cs in by_time[:top]:
        rows.append(
            (
                f"`{name}`",
                len(cs),
                len({c.signature for c in cs}),
                f"{sum(c.seconds for c in cs):.1f}",
            )
        )
    out += _table(("program", "compiles", "signatures", "seconds"), rows)
    seen: dict[tuple[str, str], str] = {}
    again = collections.Counter()
    # Of each program's compiles, those outside the first process read (not persistent-cache
    # loads) are what one cache shared by every process could have saved.
    for c in compiles:
        first = seen.setdefault((c.name, c.signature), c.pid)
        if first != c.pid and not c.cache_hit:
            again[c.kind] += c.seconds
    out += _by_test(compiles, top)
    out += [
        "",
        "Compiled again by another process (same name, shapes and sharding): "
        + (", ".join(f"{k} {v:.1f} s" for k, v in again.most_common()) or "none")
        + f"; {sum(again.values()):.1f} s in all.",
    ]
    return "\n".join(out) + "\n"


def _by_test(compiles: list[Compile], top: int) -> list[str]:
    """Compile seconds per pytest test file (in its worker and its subprocesses), and how many
    of them went to programs (name and signature) that no other test file compiled: what
    sharing shapes with other files could not save, and the rest what it could."""
    files: dict[str, list[Compile]] = collections.defaultdict(list)
    owners: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for c in compiles:
        if c.test:
            files[c.test].append(c)
            owners[(c.name, c.signature)].add(c.test)
    if not files:
        return []
    rows = []
    by_time = sorted(files.items(), key=lambda kv: -sum(c.seconds for c in kv[1]))
    for test, cs in by_time[:top]:
        own = sum(c.seconds for c in cs if len(owners[(c.name, c.signature)]) == 1)
        rows.append((test, len(cs), f"{sum(c.seconds for c in cs):.1f}", f"{own:.1f}"))
    return ["", *_table(("test file", "compiles", "seconds", "only this file's"), rows)]


def profile(command: Sequence[str], top: int = 15) -> tuple[int, str]:
    """Runs `command` with every Python process's compiles logged; (exit status, tables)."""
    with tempfile.TemporaryDirectory(prefix="bal_jax_compile_profile_") as tmp:
        site, logs = os.path.join(tmp, "site"), os.path.join(tmp, "logs")
        os.makedirs(site)
        os.makedirs(logs)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(_SITECUSTOMIZE)
        path = os.environ.get("PYTHONPATH")
        env = dict(
            os.environ,
            BAL_JAX_COMPILE_LOG_DIR=logs,
            PYTHONPATH=site if not path else f"{site}{os.pathsep}{path}",
        )
        status = subprocess.run(list(command), env=env).returncode
        return status, summarize(read_logs(logs), top=top)


def main(argv: Sequence[str]) -> None:
    command = list(argv[1:])
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise app.UsageError("give the command to profile after --")
    status, text = profile(command, top=flags.FLAGS.top)
    print("\n" + text, end="")
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            f.write(f"`{' '.join(command)}`\n\n{text}")
    sys.exit(status)


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_string("out", None, "Also write the tables to this markdown file.")
    flags.DEFINE_integer("top", 15, "Program names listed.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
