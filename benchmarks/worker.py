"""One measurement in a fresh process: ``python -m benchmarks.worker {time|peak} CASE_JSON``.

``time``: builds every side in ``case["sides"]``, makes one guarded first call per side (its
time, compilation included, is reported; a side that fails is dropped with its error), then
``case["warmup"] - 1`` more untimed calls per side and ``case["reps"]`` alternating timed rounds.

``peak``: builds ``case["side"]`` alone, resets the process's memory high-water mark (Linux
``/proc/self/clear_refs``), runs it once (compilation included: it is part of what a user
pays) and reports the peak resident memory of the process. The data set stays resident, so
the peak includes it on both sides.

The result is one JSON line prefixed with ``BENCH_RESULT`` on stdout.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback

import numpy as np

from benchmarks import cases, timing


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:300]


def time_case(case: dict) -> dict:
    built, errors, first, infos = {}, {}, {}, {}
    for side in case["sides"]:
        try:
            built[side] = cases.build(case, side)
        except cases.Unavailable as e:
            errors[side] = f"not available: {e}"
        except Exception as e:
            traceback.print_exc()
            errors[side] = _error(e)
    for side, s in list(built.items()):
        try:
            start = time.perf_counter()
            infos[side] = s.run()
            first[side] = time.perf_counter() - start
        except Exception as e:
            traceback.print_exc()
            errors[side] = _error(e)
            del built[side]
    result = {"first": first, "errors": errors, "infos": infos, "times": {}}
    result["work"] = {side: s.work for side, s in built.items()}
    result["num_params"] = {side: s.num_params for side, s in built.items()}
    if built:
        t = timing.alternate(
            {side: s.run for side, s in built.items()},
            reps=case["reps"],
            warmup=max(0, case.get("warmup", 1) - 1),
        )
        result["times"] = t.times
        result["infos"].update(t.infos)
    result["agreement"] = _agreement(result["infos"])
    result["infos"] = {s: _public(i) for s, i in result["infos"].items()}
    return result


def _agreement(infos: dict) -> dict:
    """For selection cases: how the reference's picks compare with bal_jax's."""
    ours = (infos.get("bal_jax") or {}).get("_picks")
    out = {}
    for side, info in infos.items():
        theirs = (info or {}).get("_picks")
        if side == "bal_jax" or ours is None or theirs is None:
            continue
        ours_l, theirs_l = np.asarray(ours).tolist(), np.asarray(theirs).tolist()
        out[side] = {
            "same_order": ours_l == theirs_l,
            "overlap": len(set(ours_l) & set(theirs_l)) / max(1, len(theirs_l)),
            "distinct": len(set(ours_l)) == len(ours_l),
            "k": len(ours_l),
        }
    return out


def _public(info):
    return {k: v for k, v in info.items() if not k.startswith("_")} if info else info


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_case(case: dict) -> dict:
    side = case["side"]
    try:
        s = cases.build(case, side)
    except cases.Unavailable as e:
        return {"errors": {side: f"not available: {e}"}}
    gc.collect()
    reset = _reset_peak()
    base = timing.rss_mb()
    start = time.perf_counter()
    try:
        info = s.run()
    except Exception as e:
        traceback.print_exc()
        return {"errors": {side: _error(e)}}
    return {
        "peak_mb": timing.peak_rss_mb(),
        "base_mb": base,
        "seconds": time.perf_counter() - start,
        "hwm_reset": reset,
        "info": _public(info),
    }


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[1] not in ("time", "peak"):
        raise SystemExit("usage: python -m benchmarks.worker {time|peak} CASE_JSON")
    case = json.loads(argv[2])
    result = time_case(case) if argv[1] == "time" else peak_case(case)
    timing.emit_result(result)


if __name__ == "__main__":
    main(sys.argv)
