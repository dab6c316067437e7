"""benchmarks.device_check: the peak-FLOPs table, MFU text, its end-to-end flags, and --quick."""

import pytest

from benchmarks import device_check
from experiments import config as config_lib
from experiments import main as main_lib
from experiments.pipeline import check_config
from tests.config_test import _flags


@pytest.mark.parametrize(
    "kind, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0),
        ("NVIDIA H200", "float32", 494.7),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0),
        ("TPU v5 lite", "bfloat16", 197.0),  # not v5p's figure
        ("Tesla T4", "bfloat16", None),
        ("cpu", "float32", None),
    ],
)
def test_peak_tflops(kind, dtype, peak):
    assert device_check.peak_tflops(kind, dtype) == peak


def test_mfu_text():
    assert device_check.mfu_text(1e12, 100.0, 1000.0) == "10.0% of 1000 TFLOP/s"
    assert device_check.mfu_text(1e12, 100.0, None).startswith("unknown")


@pytest.mark.parametrize("quick", [True, False])
def test_end_to_end_flags_make_a_valid_config(quick):
    args, _ = device_check.e2e_args(quick=quick, data="/data/cifar10-jpg.tar.gz")
    cfg = main_lib.build_config(_flags(*args))
    check_config(cfg)
    assert cfg.train.epochs == cfg.pretext_train.epochs == 1 and cfg.preset == (
        "digits_cpu" if quick else "cifar10"
    )
    assert config_lib.override(cfg, dtype="bfloat16").fingerprint()["dtype"] == "bfloat16"


def test_quick_run_writes_a_table(tmp_path):
    # The in-process sections at toy sizes (the pytest and experiments.main subprocesses are
    # left to the real run: their flags are checked above).
    text = device_check.run_checks(quick=True, tests=None, data="", skip=("tests", "e2e"))
    for row in ("train step", "bfloat16", "pool inference", "kmeans + cdd", "k-center greedy"):
        assert row in text, text
    assert "| error |" not in text, text
    with pytest.raises(ValueError, match="--skip"):
        device_check.run_checks(quick=True, tests=None, data="", skip=("nope",))
