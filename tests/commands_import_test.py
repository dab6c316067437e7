"""Every command module imports beside every other one (absl flags are process-global).

A module-level `flags.DEFINE_*` whose name another command also defines breaks pytest collection
of the whole suite, so this runs in a fresh process that imports them all in one go.
"""

import os
import pkgutil
import subprocess
import sys

import benchmarks
import experiments

# Needs PyTorch, which is not a dependency (the comparison benchmark installs it on demand).
_OPTIONAL = {"benchmarks.torch_vgg"}


def _modules() -> list[str]:
    names = []
    for pkg in (experiments, benchmarks):
        for info in pkgutil.iter_modules(pkg.__path__):
            name = f"{pkg.__name__}.{info.name}"
            if name not in _OPTIONAL:
                names.append(name)
    return names


def test_all_command_modules_import_together():
    names = _modules()
    assert "experiments.main" in names and "experiments.compare" in names
    code = "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
