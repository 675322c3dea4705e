"""benchmarks/scaling_sim.py: the HPA algorithm against Kubernetes' documented arithmetic, and the rendered
overlays' autoscaling on the recorded load curve (scale-up within one metrics window of saturation, no flaps,
nothing shed), with the manifests before issue 14 failing the same checks on GPU pods."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import scaling_sim as sim  # noqa: E402


def _config(**targets: float) -> sim.HpaConfig:
    return sim.HpaConfig(
        min_replicas=2, max_replicas=20, targets=targets,
        scale_up=sim.Rules(0, "Max", (sim.Policy("Percent", 100, 30), sim.Policy("Pods", 2, 30))),
        scale_down=sim.Rules(300, "Min", (sim.Policy("Pods", 1, 60),)),
        connection_age_s=60.0,
    )


def _pods(metric: str, *values: float | None, ready: bool = True) -> list[sim.PodView]:
    return [sim.PodView(ready, {metric: v}) for v in values]


def test_replica_calculator_follows_the_kubernetes_formula() -> None:
    # desired = ceil(current x value / target): 2 pods at 200m against 100m -> 4.
    assert sim.metric_proposal(_pods(sim.BUSY, 0.2, 0.2), sim.BUSY, 0.1, 2) == 4
    # Within the 10 % tolerance nothing changes (0.75 / 0.7 = 1.07).
    assert sim.metric_proposal(_pods(sim.BUSY, 0.75, 0.75), sim.BUSY, 0.7, 2) == 2
    assert sim.metric_proposal(_pods(sim.BUSY, 0.8, 0.8), sim.BUSY, 0.7, 2) == 3
    # Scaling up, a pod without a value yet counts as idle: (1.4 + 1.4 + 0) / 3 / 0.7 = 1.33 -> 4.
    assert sim.metric_proposal(_pods(sim.BUSY, 1.4, 1.4, None), sim.BUSY, 0.7, 3) == 4
    # Scaling down, it counts as at target: (0.1 + 0.7) / 2 / 0.7 = 0.57 -> 2, not 1.
    assert sim.metric_proposal(_pods(sim.BUSY, 0.1, None), sim.BUSY, 0.7, 2) == 2
    # CPU ignores pods that are not ready when scaling up ... and counts them as idle.
    pods = _pods(sim.CPU, 1.4, 1.4) + _pods(sim.CPU, 0.05, ready=False)
    assert sim.metric_proposal(pods, sim.CPU, 0.7, 3) == 4


def test_behaviour_limits_and_windows() -> None:
    hpa = sim.Hpa(_config(**{sim.BUSY: 0.7}))
    # Asked for 10 from 2: at most +100 % or +2 pods per 30 s (Max) -> 4.
    assert hpa.decide(0.0, _pods(sim.BUSY, 3.5, 3.5), 2) == 4
    # 15 s later the same period allows no more than 4 (2 x 100 %).
    assert hpa.decide(15.0, _pods(sim.BUSY, 1.75, 1.75, 1.75, 1.75), 4) == 4
    assert hpa.decide(31.0, _pods(sim.BUSY, 1.75, 1.75, 1.75, 1.75), 4) == 8
    # Load gone: the scale-down window (300 s) keeps the highest recommendation of the last 5 minutes.
    idle = _pods(sim.BUSY, *([0.0] * 8))
    assert hpa.decide(60.0, idle, 8) == 8
    assert hpa.decide(340.0, idle, 8) == 7  # 309 s after the last high one; 1 pod per 60 s
    assert hpa.decide(355.0, idle, 7) == 7
    assert hpa.decide(401.0, idle, 7) == 6


@pytest.fixture(scope="module")
def results() -> dict[str, sim.Summary]:
    curve = sim.read_curve()
    assert len(curve) == 3600 and max(curve) > 2 * min(curve)
    ran = sim.run_all(curve, sim.scenarios({o: sim.render(o) for o in ("cpu", "gpu")}))
    return {name: summary for name, (summary, _) in ran.items()}


def test_rendered_overlays_configure_both_signals() -> None:
    for overlay in ("cpu", "gpu"):
        config = sim.HpaConfig.from_objects(sim.render(overlay))
        assert {sim.BUSY, sim.QUEUE} <= set(config.targets)
        assert (sim.CPU in config.targets) == (overlay == "cpu")
        assert config.connection_age_s <= 60
        assert config.scrape_s == 15


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_scale_up_starts_within_a_window_of_saturation_and_never_flaps(
        results: dict[str, sim.Summary], overlay: str) -> None:
    now = results[f"{overlay}/now"]
    assert now.saturation_s is not None, "the curve must saturate the minimum replicas"
    assert now.first_scale_up_s is not None and now.first_scale_up_s <= now.saturation_s + 60.0
    assert now.scale_up_lag_s is not None and now.scale_up_lag_s <= 60.0, now
    assert now.reversals == 0, now
    assert now.shed_fraction == 0.0, now
    assert now.worst_queue_s < 30.0, now


def test_the_manifests_before_issue_14_fail_on_gpu_pods(results: dict[str, sim.Summary]) -> None:
    before, now = results["gpu/before"], results["gpu/now"]
    assert before.scale_up_lag_s is not None and before.scale_up_lag_s > 60.0, before
    assert before.reversals > 0 and before.shed_fraction > 0.0, before
    assert now.pod_hours <= before.pod_hours
