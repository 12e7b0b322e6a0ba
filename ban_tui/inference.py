"""What a paired difference over seeds may claim: its Student-t interval (seed noise), a paired
bootstrap over seeds and test examples (seed noise and test-set noise), Holm's adjustment over
the claims of one report, and the power the seeds give (docs/statistics.md says why each).

Every function takes plain numbers or numpy arrays (no torch): `ban report` and the TUI's
compare screen call the same ones.

- `t_interval(d)`: mean ± t(0.975, n-1) · sd / √n of the per-seed differences d, with the
  two-sided p-value of the paired t-test (mean / (sd / √n) against t(n-1)).
- `paired_bootstrap(D, B, seed)`: D[s, i] = (error of A) - (error of B) of seed s on test
  example i (-1, 0 or +1). Replicate b draws n seeds and N examples with replacement, in this
  order from `numpy.random.default_rng(seed)`: `rng.integers(0, n, (B, n))` then
  `rng.integers(0, N, (B, N))`; its statistic is the mean of D over the drawn seeds x drawn
  examples (one example draw for all seeds: they share the test set). The interval is the 2.5 and
  97.5 percentiles of the B statistics (numpy's linear interpolation).
- `holm(p)`: Holm's step-down adjustment: sort p ascending, adj(i) = max over j <= i of
  min(1, (m - j + 1) p(j)).
- `mde(sd, n)`: the smallest |mean difference| a two-sided paired t-test at level 0.05 detects
  with power 0.80 when the per-seed differences have this sd: the δ with
  P(|T| > t(0.975, n-1)) = 0.8 where T is noncentral t(n-1, δ √n / sd).
- `seeds_needed(effect, sd)`: the smallest n >= 2 whose mde(sd, n) <= effect.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
POWER = 0.80
ALPHA = 1 - LEVEL
BOOTSTRAP_B = 2000
BOOTSTRAP_SEED = 0


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (scipy's, imported lazily)."""
    from scipy.stats import t
    return float(t.ppf(p, df))


def t_interval(d: list[float]) -> dict:
    """{"ci": [lo, hi] | None, "p": two-sided paired-t p | None} of per-seed differences (n >= 2;
    a zero sd gives p 0 for a non-zero mean, 1 for a zero one)."""
    n = len(d)
    if n < 2:
        return {"ci": None, "p": None}
    from scipy.stats import t
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * se
    p = float(2 * t.sf(abs(mean) / se, n - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
    return {"ci": [mean - half, mean + half], "p": p}


def paired_bootstrap(D: np.ndarray, B: int = BOOTSTRAP_B, seed: int = BOOTSTRAP_SEED,
                     chunk: int = 256) -> list[float]:
    """The 95 % percentile interval of the mean of D (seeds x test examples) under resampling of
    both seeds and examples (module docstring: the draws, their order). The example draws come
    `chunk` replicates at a time (the same stream as one call; memory chunk x N, not B x N)."""
    D = np.asarray(D, dtype=np.float64)
    n, N = D.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n, (B, n))
    w = np.zeros((B, n))
    np.add.at(w, (np.arange(B)[:, None], seed_draws), 1.0)   # how often each seed is drawn
    stats = np.empty(B)
    for lo in range(0, B, chunk):
        draws = rng.integers(0, N, (min(chunk, B - lo), N))
        v = np.stack([np.bincount(row, minlength=N) for row in draws]).astype(np.float64)
        # the sum over drawn (seed, example) pairs of D: sum_s w[b, s] sum_i v[b, i] D[s, i]
        stats[lo:lo + len(draws)] = np.einsum("bs,sb->b", w[lo:lo + len(draws)], D @ v.T) / (n * N)
    lo, hi = np.percentile(stats, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return [float(lo), float(hi)]


def holm(p: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values in the order given (None stays None and is not counted)."""
    given = [(x, i) for i, x in enumerate(p) if x is not None]
    m = len(given)
    out: list[float | None] = [None] * len(p)
    running = 0.0
    for rank, (x, i) in enumerate(sorted(given)):
        running = max(running, min(1.0, (m - rank) * x))
        out[i] = running
    return out


def power(effect: float, sd: float, n: int) -> float:
    """The power of the two-sided paired t-test at level ALPHA for a true mean difference
    `effect` with per-seed sd `sd` over n seeds."""
    from scipy.stats import nct
    df = n - 1
    crit = t_quantile(1 - ALPHA / 2, df)
    nc = abs(effect) * math.sqrt(n) / sd
    upper, lower = float(nct.sf(crit, df, nc)), float(nct.cdf(-crit, df, nc))
    if not math.isfinite(upper):
        upper = 1.0 - float(nct.cdf(crit, df, nc))
    # the far tail (opposite to the effect) is tiny where scipy's series gives NaN at df 1
    return upper + (lower if math.isfinite(lower) else 0.0)


def mde(sd: float | None, n: int) -> float | None:
    """The minimum detectable |paired effect| at POWER (module docstring); None for n < 2 or no sd."""
    if sd is None or n < 2 or not sd > 0:
        return None
    from scipy.optimize import brentq
    hi = sd
    while power(hi, sd, n) < POWER:
        hi *= 2
    return float(brentq(lambda e: power(e, sd, n) - POWER, 0.0, hi, xtol=1e-12 * sd))


def seeds_needed(effect: float, sd: float | None, most: int = 1_000_000) -> int | None:
    """The fewest seeds (>= 2) that detect |effect| with POWER (power grows with n: doubling,
    then bisection); None without an sd, for a zero effect, or beyond `most`."""
    if sd is None or not sd > 0 or effect == 0:
        return None
    lo, hi = 1, 2                        # power(lo) < POWER <= power(hi) once found
    while power(effect, sd, hi) < POWER:
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(effect, sd, mid) >= POWER else (mid, hi)
    return hi
