"""Online latency model of one runner: how long a batch takes, learnt from measured runs.

    run_s ≈ a + b·n·ℓ + c·n·ℓ² + d·n·(n−1)·ℓ

with n items padded to the longest item ℓ (in units of ``cost_scale`` samples, i.e. audio seconds at
16 kHz). ``a`` is the fixed cost per call (launches, session overhead): what batching saves. ``b`` and ``c``
are the per-item encoder cost, linear and quadratic (self-attention grows with the square of length).
``d`` captures contention: on a CPU whose cores are already busy with one item, n items cost more than n
times one (measured on 2 cores with the large model: 3.2 audio-s/s at batch 1, 2.7 at batch 8). The fit is
least squares over a sliding window of recent runs, with ``b, c, d ≥ 0`` (active set) and ``a`` free: a
negative ``a`` is itself the sign that batching does not pay.

From the fit the batcher derives whether batching pays at a given length, the batch size that maximises
throughput, a single item's run time (to fail requests that cannot meet their deadline), and the time to
drain the queue. Standard library only; not thread-safe (used from the event loop).

Lengths longer than any run in the window are not predicted from the fitted curve: the quadratic term,
fitted on short runs whose times carry scheduling noise, can put a 30-s item at a hundred times its true
cost (seen: a server that had only run 1–3 s clips refused a 30-s segment with a 30-s deadline, predicting
24 s for a 0.3-s run). Beyond the longest measured length ``L`` a prediction scales linearly from the fit
at ``L``: ``t(n, ℓ) = t(n, L)·ℓ/L``. For a cost that grows at least linearly with length this is a lower
bound, so a request refused on it could not have finished, and the batch sizes chosen at ``L`` carry over.

Memory: ``observe_out_of_memory(items, longest)`` records a batch that did not fit (a GPU's memory limit).
Memory grows with both the batch size and the length, so a shape at least as large in both does not fit
either: ``fits`` / ``max_items`` answer from the recorded points, and the batch policy never forms such a
batch again. A success at a shape at least as large removes a point (the failure was transient), and
points expire after ``oom_memory_runs`` runs so that a limit learnt under pressure is tried again.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LatencyModel"]

_K = 4  # parameters: a, b, c, d


def _features(items: int, longest_scaled: float) -> tuple[float, float, float, float]:
    n = float(items)
    return (1.0, n * longest_scaled, n * longest_scaled * longest_scaled, n * (n - 1.0) * longest_scaled)


def _solve(m: list[list[float]], v: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    k = len(v)
    a = [[*row[:], v[i]] for i, row in enumerate(m)]
    for col in range(k):
        piv = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-300:
            return None
        a[col], a[piv] = a[piv], a[col]
        for r in range(col + 1, k):
            f = a[r][col] / a[col][col]
            if f:
                for c in range(col, k + 1):
                    a[r][c] -= f * a[col][c]
    x = [0.0] * k
    for r in range(k - 1, -1, -1):
        s = a[r][k] - sum(a[r][c] * x[c] for c in range(r + 1, k))
        x[r] = s / a[r][r]
    return x


class LatencyModel:
    """Windowed least-squares fit of batch run time; one instance per runner (device).

    ``window``: number of recent runs fitted. ``min_observations``: runs needed before the model is trusted
    (``ready``). ``min_gain``: batching "pays" only when the best batch size is predicted to raise throughput
    by at least this fraction over one item at a time — small predicted gains are within fitting noise, and
    batching when it does not pay makes serving slower. ``explore_every``: while batching does not pay, a
    multi-item batch is still tried this often (when requests are waiting) so that the estimate of what
    batching costs stays current.
    """

    def __init__(
        self,
        *,
        cost_scale: float = 16000.0,
        window: int = 256,
        min_observations: int = 8,
        min_gain: float = 0.05,
        explore_every: int = 64,
        oom_memory_runs: int = 4096,
    ) -> None:
        if window < _K or min_observations < 1 or cost_scale <= 0:
            raise ValueError("window must be >= 4, min_observations >= 1, cost_scale > 0")
        self.cost_scale = float(cost_scale)
        self.window = window
        self.min_observations = min_observations
        self.min_gain = min_gain
        self.explore_every = explore_every
        # (features, run seconds, longest item in units of cost_scale), oldest first.
        self._obs: deque[tuple[tuple[float, float, float, float], float, float]] = deque()
        self._longest: float | None = None  # longest ℓ in the window; None: recompute (_edge)
        self._xtx = [[0.0] * _K for _ in range(_K)]
        self._xty = [0.0] * _K
        self._updates = 0
        self._coef: tuple[float, float, float, float] | None = None
        self._dirty = False
        self._since_multi = 0
        self._total_runs = 0
        self._total_run_s = 0.0
        self._total_padded = 0.0
        self.oom_memory_runs = oom_memory_runs
        self._oom: list[tuple[int, int, int]] = []  # (items, longest, run count when seen): did not fit

    # -- learning ---------------------------------------------------------------------------------------

    def observe(self, items: int, longest: int, run_s: float) -> None:
        """Record one successful run of ``items`` items padded to ``longest`` samples taking ``run_s``."""
        if items < 1 or run_s < 0 or not math.isfinite(run_s):
            return
        ell = longest / self.cost_scale
        x = _features(items, ell)
        self._add(x, run_s, +1.0)
        self._obs.append((x, run_s, ell))
        if self._longest is not None and ell > self._longest:
            self._longest = ell
        if len(self._obs) > self.window:
            old_x, old_y, old_ell = self._obs.popleft()
            self._add(old_x, old_y, -1.0)
            if any(old_x[i] != 0.0 and self._xtx[i][i] <= 1e-9 * old_x[i] * old_x[i] for i in range(_K)):
                # The run that left dominated a feature's sum (e.g. the only multi-item batch, or a 30-s
                # segment among short clips): the subtraction left a rounding residue, possibly negative,
                # not the true (tiny or zero) sum. Recompute exactly.
                self._recompute_sums()
            if self._longest is not None and old_ell >= self._longest:
                self._longest = None  # the longest left the window: recomputed when next needed
        self._updates += 1
        if self._updates % self.window == 0:
            self._recompute_sums()  # bound the drift of adding and subtracting floats
        self._dirty = True
        self._since_multi = 0 if items > 1 else self._since_multi + 1
        self._total_runs += 1
        self._total_run_s += run_s
        self._total_padded += items * longest
        if self._oom:
            # It fitted: forget failures at shapes no larger (they were transient), and expired ones.
            oldest = self._total_runs - self.oom_memory_runs
            self._oom = [p for p in self._oom if not (items >= p[0] and longest >= p[1]) and p[2] > oldest]

    def observe_out_of_memory(self, items: int, longest: int) -> None:
        """Record that ``items`` items padded to ``longest`` samples did not fit in memory."""
        if items < 1 or longest < 1:
            return
        if not self.fits(items, longest):
            return  # already known (a point at least as small exists)
        # Keep only the frontier: points this one dominates add nothing.
        self._oom = [p for p in self._oom if not (p[0] >= items and p[1] >= longest)]
        self._oom.append((items, longest, self._total_runs))
        if len(self._oom) > 64:
            self._oom.pop(0)

    def fits(self, items: int, longest: int) -> bool:
        """False when a batch no larger in both items and length already ran out of memory."""
        return not any(items >= n and longest >= ell for n, ell, _ in self._oom)

    def max_items(self, longest: int, max_items: int) -> int:
        """The most items (≤ ``max_items``, ≥ 1) of ``longest`` samples not known to run out of memory."""
        limit = max_items
        for n, ell, _ in self._oom:
            if longest >= ell:
                limit = min(limit, n - 1)
        return max(1, limit)

    def _add(self, x: tuple[float, ...], y: float, sign: float) -> None:
        for i in range(_K):
            xi = x[i] * sign
            self._xty[i] += xi * y
            row = self._xtx[i]
            for j in range(_K):
                row[j] += xi * x[j]

    def _recompute_sums(self) -> None:
        self._xtx = [[0.0] * _K for _ in range(_K)]
        self._xty = [0.0] * _K
        for x, y, _ell in self._obs:
            self._add(x, y, +1.0)

    def _fit(self) -> tuple[float, float, float, float] | None:
        if len(self._obs) < self.min_observations:
            return None
        active = list(range(_K))
        while True:
            # Jacobi scaling: features differ by orders of magnitude (ℓ vs ℓ²); a tiny ridge keeps
            # unidentified terms (d with only single-item runs) at zero instead of arbitrary.
            scale = [math.sqrt(max(self._xtx[i][i], 0.0)) or 1.0 for i in active]
            m = [
                [self._xtx[i][j] / (scale[ii] * scale[jj]) for jj, j in enumerate(active)]
                for ii, i in enumerate(active)
            ]
            for ii in range(len(active)):
                m[ii][ii] += 1e-6
            v = [self._xty[i] / scale[ii] for ii, i in enumerate(active)]
            sol = _solve(m, v)
            if sol is None:
                return None
            coef = [0.0] * _K
            for ii, i in enumerate(active):
                coef[i] = sol[ii] / scale[ii]
            negative = [i for i in active if i > 0 and coef[i] < 0]
            if not negative:
                return (coef[0], coef[1], coef[2], coef[3])
            active.remove(min(negative, key=lambda i: coef[i] * scale[active.index(i)]))

    @property
    def coefficients(self) -> tuple[float, float, float, float] | None:
        """Fitted ``(a, b, c, d)`` (seconds; ℓ in units of ``cost_scale``), or None before ``ready``."""
        if self._dirty:
            self._coef = self._fit()
            self._dirty = False
        return self._coef

    @property
    def ready(self) -> bool:
        """Enough runs were measured to trust the fit."""
        return self.coefficients is not None

    @property
    def observations(self) -> int:
        """Runs currently in the fitting window."""
        return len(self._obs)

    @property
    def explore_due(self) -> bool:
        """True when no multi-item batch was measured for ``explore_every`` runs."""
        return self._since_multi >= self.explore_every

    # -- predictions ----------------------------------------------------------------------------------

    def _edge(self) -> float | None:
        """Longest item among the runs in the window (units of ``cost_scale``); None before any run."""
        if self._longest is None and self._obs:
            self._longest = max(ell for _x, _y, ell in self._obs)
        return self._longest

    def predict(self, items: int, longest: int) -> float | None:
        """Predicted run time of ``items`` items padded to ``longest`` samples; None before ``ready``.

        Beyond the longest measured length the prediction scales linearly from there (module docstring).
        """
        coef = self.coefficients
        if coef is None:
            return None
        ell = longest / self.cost_scale
        edge = self._edge()
        if edge is not None and edge > 0 and ell > edge:
            return self._curve(coef, items, edge) * (ell / edge)
        return self._curve(coef, items, ell)

    @staticmethod
    def _curve(coef: tuple[float, float, float, float], items: int, ell: float) -> float:
        x = _features(items, ell)
        t = coef[0] + coef[1] * x[1] + coef[2] * x[2] + coef[3] * x[3]
        # A negative intercept can make tiny inputs predict below zero; a run never takes less than ~0.
        return max(t, 1e-6)

    def best_batch_size(self, longest: int, max_items: int) -> int:
        """Items per batch that maximise predicted throughput at ``longest``; 1 when batching does not pay.

        Before ``ready`` returns ``max_items`` (the batcher explores with what is queued).
        """
        if max_items <= 1:
            return 1
        single = self.predict(1, longest)
        if single is None:
            return max_items
        best_n, best_rate = 1, 1.0 / single
        for n in range(2, max_items + 1):
            t = self.predict(n, longest)
            assert t is not None
            rate = n / t
            if rate > best_rate:
                best_n, best_rate = n, rate
        if best_rate < (1.0 + self.min_gain) / single:
            return 1
        return best_n

    def batching_pays(self, longest: int, max_items: int) -> bool | None:
        """Whether batching items of ``longest`` samples raises throughput enough; None before ``ready``."""
        if not self.ready:
            return None
        return self.best_batch_size(longest, max_items) > 1

    def estimated_drain_s(self, requests: int, cost: int, max_items: int, instances: int = 1) -> float:
        """Seconds to run ``requests`` queued requests totalling ``cost`` samples on ``instances`` runners.

        Uses the mean length; before ``ready`` falls back to the mean measured seconds per padded sample,
        and to 0.0 before any run was measured.
        """
        if requests <= 0:
            return 0.0
        instances = max(1, instances)
        mean_len = max(1, round(cost / requests))
        if self.ready:
            size = self.best_batch_size(mean_len, max_items)
            t = self.predict(size, mean_len)
            assert t is not None
            return math.ceil(requests / size) * t / instances
        if self._total_padded > 0:
            return cost * (self._total_run_s / self._total_padded) / instances
        return 0.0
