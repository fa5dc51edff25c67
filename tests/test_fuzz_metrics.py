"""Properties of RR, AE, CREI, I-RR and I-CREI on generated records (issue 22, item 5).

The formulas are those of docs/metrics.md; each property below follows from them (the
comment says how), so a change to the implementation that breaks one is a change of the
published metrics. Settings (derandomized, bounded) are in ``tests/fuzzing.py``.
"""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from fuzzing import fuzz_settings
from hypothesis import assume, given
from hypothesis import strategies as st

from rome_bench.core.records import Record
from rome_bench.reporting.metrics import (
    ALL_METRICS,
    compute,
    compute_replicates,
    metric_table,
    metrics_for,
)

MODES = ("targeted", "untargeted")
# accuracies as measured: percentages of at most 10,000 test images, so steps of 0.01
accuracy = st.integers(0, 10_000).map(lambda k: k / 100)
seconds = st.floats(0.01, 1000, allow_nan=False, allow_subnormal=False)


def rec(ipc: int, mode: str, attack: str, acc: float, sec: float, repeat: int = 0,
        method: str = "M", clean_pass: str | None = None) -> Record:
    return Record(run_id="t", method=method, dataset="cifar10", ipc=ipc, seed=0, repeat=repeat,
                  arch="convnet", preset="quick", threat_model="standard", setting="white-box",
                  source_model=None, mode=mode, attack=attack, eps=None, accuracy=acc,
                  seconds=sec, n_images=100,
                  versions={"clean_pass": clean_pass} if clean_pass else {})


@st.composite
def families(draw, repeats: int = 1, below_clean: bool = False) -> list[Record]:
    """The records of one method: clean rows and attacks for 1-3 IPCs (and ``repeats``
    repeats); with ``below_clean`` no attack beats its IPC's clean accuracy."""
    ipcs = draw(st.lists(st.sampled_from([1, 10, 50]), min_size=1, max_size=3, unique=True))
    attacks = draw(st.lists(st.sampled_from(["FGSM", "PGD", "CW", "DeepFool", "AutoAttack"]),
                            min_size=1, max_size=4, unique=True))
    records = []
    for repeat in range(repeats):
        for ipc in ipcs:
            clean = draw(accuracy)
            records.append(rec(ipc, "clean", "clean", clean, draw(seconds), repeat))
            for attack in attacks:
                for mode in MODES:
                    acc = draw(st.floats(0, clean) if below_clean else accuracy)
                    records.append(rec(ipc, mode, attack, acc, draw(seconds), repeat))
    return records


def values(m) -> dict[str, float | None]:
    return {name: m.get(name) for name in ALL_METRICS}


# -- bounds -------------------------------------------------------------------------------
@fuzz_settings(100)
@given(clean=st.lists(accuracy, min_size=1, max_size=3), data=st.data())
def test_bounds_when_attacks_do_not_raise_accuracy(clean, data):
    """With 0 <= a_i <= C: 0 <= mean ASR <= max ASR <= C, so RR and I-RR lie in [0, 100]
    and I-RR >= RR (mean*max/C^2 <= mean/max because max <= C); with t_i >= T0, AE lies in
    [0, 100]; CREI and I-CREI are convex combinations, so they lie between their parts."""
    c = statistics.fmean(clean)
    n = data.draw(st.integers(1, 8))
    attack_acc = data.draw(st.lists(st.floats(0, c), min_size=n, max_size=n))
    t0 = data.draw(st.lists(seconds, min_size=len(clean), max_size=len(clean)))
    base = statistics.fmean(t0)
    attack_time = [base + x for x in data.draw(st.lists(seconds, min_size=n, max_size=n))]
    alpha = data.draw(st.floats(0, 1))
    m = compute(clean, t0, attack_acc, attack_time, alpha)
    tol = 1e-9
    assert -tol <= m.RR <= 100 + tol and -tol <= m.I_RR <= 100 + tol
    assert m.I_RR >= m.RR - tol
    assert -tol <= m.AE <= 100 + tol
    for combined, part in ((m.CREI, m.RR), (m.I_CREI, m.I_RR)):
        assert min(part, m.AE) - tol <= combined <= max(part, m.AE) + tol
        assert combined == pytest.approx(alpha * part + (1 - alpha) * m.AE)
    assert m.n_attacks == n


@fuzz_settings(100)
@given(clean=st.lists(accuracy, min_size=1, max_size=3), t0=seconds,
       attacks=st.lists(st.tuples(accuracy, seconds), min_size=1, max_size=8))
def test_any_percentages_give_finite_metrics(clean, t0, attacks):
    """Whatever the accuracies (attacks may beat the clean model under beard-compat) and
    times, every metric is a finite number: the degenerate cases (C = 0, max ASR = 0,
    max t = T0) are defined, never a division by zero."""
    m = compute(clean, [t0], [a for a, _ in attacks], [t0 + t for _, t in attacks])
    assert all(isinstance(v, float) and math.isfinite(v) for v in values(m).values())


@fuzz_settings(60)
@given(clean=accuracy, a=st.lists(accuracy, min_size=1, max_size=6))
def test_degenerate_cases(clean, a):
    """Attacks that change nothing: RR 0 (max ASR = 0), I-RR 100; C = 0: I-RR 0; no attack:
    every metric None."""
    same = compute([clean], [1.0], [clean] * len(a), [1.0] * len(a))
    assert same.RR == 0.0 and same.AE == 0.0
    assert same.I_RR == (0.0 if clean == 0 else 100.0)
    assert compute([0.0], [1.0], a, [2.0] * len(a)).I_RR == 0.0
    assert all(v is None for v in values(compute([clean], [1.0], [], [])).values())


@fuzz_settings(60)
@given(records=families(repeats=2), tiny=st.floats(0, 1e-150, allow_subnormal=True),
       per_ipc=st.booleans())
def test_absurd_accuracies_never_crash_a_table(records, tiny, per_ipc):
    """A hand-made records file may hold any finite percentage, e.g. a clean accuracy of
    1e-300: metrics then overflow, and the table shows N/A rather than crashing."""
    odd = [rec(r.ipc, r.mode, r.attack, tiny if r.mode == "clean" else r.accuracy, r.seconds,
               r.repeat) for r in records]
    for row in metric_table(odd, per_ipc=per_ipc):
        for mean, std in row.values.values():
            assert mean is None or (math.isfinite(mean) and math.isfinite(std))


# -- invariances --------------------------------------------------------------------------
@fuzz_settings(60)
@given(clean=st.lists(accuracy, min_size=1, max_size=3), a=st.lists(accuracy, min_size=1, max_size=6),
       t=st.lists(seconds, min_size=1, max_size=6), scale=st.floats(0.01, 100),
       shift=st.floats(0, 100), k=st.floats(0.05, 1))
def test_rr_is_scale_free_and_ae_is_affine_free(clean, a, t, scale, shift, k):
    """RR and I-RR are ratios of accuracy differences: scaling every accuracy by k leaves them
    unchanged. AE is a ratio of time differences: t -> scale*t + shift leaves it unchanged."""
    times = (t * len(a))[: len(a)]
    t0 = [min(times) / 2]
    m = compute(clean, t0, a, times)
    scaled = compute([k * c for c in clean], t0, [k * x for x in a], times)
    moved = compute(clean, [scale * x + shift for x in t0], a, [scale * x + shift for x in times])
    assert scaled.RR == pytest.approx(m.RR, rel=1e-6, abs=1e-6)
    assert scaled.I_RR == pytest.approx(m.I_RR, rel=1e-6, abs=1e-6)
    assert moved.AE == pytest.approx(m.AE, rel=1e-6, abs=1e-6)


@fuzz_settings(60)
@given(records=families(repeats=2), seed=st.integers(0, 2**32 - 1), per_ipc=st.booleans())
def test_tables_do_not_depend_on_the_order_of_records(records, seed, per_ipc):
    """Pooling uses means, minima and maxima only: any permutation of the records (as files
    read in another order give) yields the same numbers, exactly."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)

    def table(rows):
        return {r.key: (r.values, r.clean, r.repeats) for r in metric_table(rows, per_ipc=per_ipc)}

    assert table(shuffled) == table(records)
    for mode in MODES:
        assert values(metrics_for(shuffled, mode=mode)) == values(metrics_for(records, mode=mode))


# -- pooling ------------------------------------------------------------------------------
def by_the_formula(records: list[Record], mode: str, alpha: float = 0.5) -> dict[str, float]:
    """docs/metrics.md written out on the flattened lists, independently of metrics.py."""
    ipcs = sorted({r.ipc for r in records if r.mode == "clean"})
    c = statistics.fmean(statistics.fmean(r.accuracy for r in records
                                           if r.ipc == i and r.mode == "clean") for i in ipcs)
    t0 = statistics.fmean(min(r.seconds for r in records if r.ipc == i and r.mode == "clean")
                          for i in ipcs)
    a = [r.accuracy for r in records if r.mode == mode and r.ipc in ipcs]
    t = [r.seconds for r in records if r.mode == mode and r.ipc in ipcs]
    mean_asr, max_asr = c - statistics.fmean(a), c - min(a)
    rr = 0.0 if max_asr == 0 else 100 * (1 - mean_asr / max_asr)
    i_rr = 0.0 if c == 0 else 100 * (1 - mean_asr * max_asr / c**2)
    ae = 0.0 if max(t) == t0 else 100 * (statistics.fmean(t) - t0) / (max(t) - t0)
    return {"RR": rr, "AE": ae, "CREI": alpha * rr + (1 - alpha) * ae, "I-RR": i_rr,
            "I-CREI": alpha * i_rr + (1 - alpha) * ae}


def close(got: dict, want: dict) -> bool:
    return all(got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-9) for k in want)


@fuzz_settings(80)
@given(records=families(), alpha=st.floats(0, 1))
def test_pooling_over_ipcs_is_the_formula_on_flattened_lists(records, alpha):
    """C and T0 are means over IPCs, the attack accuracies and times are flattened over
    attacks x IPCs: not a mean of per-IPC metrics."""
    for mode in MODES:
        assert close(values(metrics_for(records, mode=mode, alpha=alpha)),
                     by_the_formula(records, mode, alpha))
        for ipc in {r.ipc for r in records}:
            one = [r for r in records if r.ipc == ipc]
            assert close(values(metrics_for(records, mode=mode, ipcs=[ipc], alpha=alpha)),
                         by_the_formula(one, mode, alpha))


@fuzz_settings(40)
@given(records=families(repeats=3))
def test_table_rows_are_mean_and_std_over_repeats(records):
    """A table cell is the mean (and sample std) over repeats of each repeat's pooled value."""
    for row in metric_table(records):
        per_repeat = [by_the_formula([r for r in records if r.repeat == k], row.key.mode)
                      for k in range(3)]
        for name in ALL_METRICS:
            xs = [v[name] for v in per_repeat]
            mean, std = row.values[name]
            assert mean == pytest.approx(statistics.fmean(xs), rel=1e-9, abs=1e-9)
            assert std == pytest.approx(statistics.stdev(xs), rel=1e-6, abs=1e-6)


@fuzz_settings(60)
@given(records=families())
def test_ae_baselines_agree_with_one_clean_timing_per_ipc(records):
    """Every rome-bench run times one clean pass per model: 'same-mode' and 'min' coincide."""
    for mode in MODES:
        assert (values(metrics_for(records, mode=mode, ae_baseline="min"))
                == values(metrics_for(records, mode=mode, ae_baseline="same-mode")))


@fuzz_settings(60)
@given(records=families(), u_extra=seconds)
def test_same_mode_baseline_takes_the_clean_timing_of_its_mode(records, u_extra):
    """BEARD logs time the clean pass once per mode: with the default rule, each mode's T0 is
    that mode's timing, so adding a slower timing of the other mode changes nothing."""
    clean = [r for r in records if r.mode == "clean"]
    tagged = [r for r in records if r.mode != "clean"]
    for r in clean:
        tagged.append(rec(r.ipc, "clean", "clean", r.accuracy, r.seconds, clean_pass="targeted"))
        tagged.append(rec(r.ipc, "clean", "clean", r.accuracy, r.seconds + u_extra,
                          clean_pass="untargeted"))
    assert close(values(metrics_for(tagged, mode="targeted")),
                 values(metrics_for(records, mode="targeted")))


@fuzz_settings(60)
@given(ipcs=st.integers(1, 3), attacks=st.integers(1, 6), resamples=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_each_bootstrap_column_is_compute_on_that_column(ipcs, attacks, resamples, seed):
    """compute_replicates is compute() vectorised over resamples: column b is compute() on
    column b's accuracies (times are not resampled)."""
    rng = np.random.default_rng(seed)
    clean = rng.uniform(0, 100, (ipcs, resamples)).round(1)
    attack = rng.uniform(0, 100, (attacks * ipcs, resamples)).round(1)
    clean_time = list(rng.uniform(0.1, 5, ipcs))
    attack_time = list(rng.uniform(0.1, 50, attacks * ipcs))
    assume(max(attack_time) != statistics.fmean(clean_time))
    got = compute_replicates(clean, clean_time, attack, attack_time)
    for b in range(resamples):
        want = compute(list(clean[:, b]), clean_time, list(attack[:, b]), attack_time)
        for name in ALL_METRICS:
            assert got[name][b] == pytest.approx(want.get(name), rel=1e-9, abs=1e-9)
