"""Frame-level emotion scores over time as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .results import Recognition

__all__ = ["bin_means", "label_runs", "plot_frame_scores"]


def bin_means(times: np.ndarray, scores: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: consecutive frames averaged in equal-count bins (a 2-hour
    recording has 360 000 frames; a line of a few thousand points draws the same picture)."""
    n = times.shape[0]
    if n <= max_points or max_points < 1:
        return times, scores
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    counts = np.diff(edges).astype(np.float64)
    t = np.add.reduceat(times, edges[:-1]) / counts
    sc = np.add.reduceat(scores.astype(np.float64), edges[:-1], axis=0) / counts[:, None]
    return t, sc.astype(np.float32)


def label_runs(labels: list[str], min_frames: int = 1) -> list[tuple[int, int, str]]:
    """Runs of equal consecutive labels as ``(first, end_exclusive, label)``.

    A run shorter than ``min_frames`` is absorbed by the run before it, so a label flickering for a frame
    or two does not split a segment.
    """
    runs: list[tuple[int, int, str]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if runs and i - start < min_frames:
                first, _, label = runs[-1]
                runs[-1] = (first, i, label)
            elif runs and runs[-1][2] == labels[start]:
                runs[-1] = (runs[-1][0], i, labels[start])  # rejoined after an absorbed flicker
            else:
                runs.append((start, i, labels[start]))
            start = i
    return runs


def plot_frame_scores(
    result: Recognition,
    out: str | os.PathLike[str],
    *,
    width_px: int = 1200,
    height_px: int = 600,
    dpi: int = 100,
    title: str | None = None,
    min_segment_s: float = 0.2,
) -> Path:
    """Draw one line per enabled emotion over time and shade each segment by its top label.

    Segments are the runs of frames sharing a top label, runs shorter than ``min_segment_s`` absorbed by
    their predecessor. A long recording (the server answered with segments) is drawn as its whole
    timeline: each server segment shaded by its own top label, the pauses between them left blank, the
    lines averaged into at most four points per pixel column, and the time axis in minutes past ten
    minutes. The image is exactly ``width_px`` x ``height_px``.
    """
    if not result.frames:
        raise ValueError("the result has no frames: recognize with granularity='frame'")
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    scores = result.frame_scores
    times = np.array([(f.start_s + f.end_s) / 2 for f in result.frames])
    # Disabled labels ("unuse_N") score 0 everywhere: drawing them only clutters the legend.
    shown = [i for i, _ in enumerate(result.labels) if scores[:, i].max(initial=0.0) > 0.0]
    cmap = plt.get_cmap("tab10")
    colour = {name: cmap(i % 10) for i, name in enumerate(result.labels)}

    span_s = result.frames[-1].end_s - result.frames[0].start_s
    unit, scale = ("min", 60.0) if span_s > 600.0 else ("s", 1.0)
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        if result.segments:
            for seg in result.segments:
                ax.axvspan(seg.start_s / scale, seg.end_s / scale, color=colour.get(seg.label, "grey"),
                           alpha=0.15, lw=0)
        else:
            frame_s = result.frames[0].end_s - result.frames[0].start_s or 0.02
            min_frames = max(1, round(min_segment_s / frame_s))
            for first, end, label in label_runs([f.label for f in result.frames], min_frames):
                ax.axvspan(
                    result.frames[first].start_s / scale,
                    result.frames[end - 1].end_s / scale,
                    color=colour[label],
                    alpha=0.12,
                    lw=0,
                )
        line_t, line_scores = bin_means(times, scores, 4 * width_px)
        # A pause between segments has no frames: break the lines there instead of bridging it.
        steps = np.diff(line_t)
        gaps = np.zeros(0, np.int64)
        if result.segments and steps.size:
            gaps = np.flatnonzero(steps > max(0.5, 3.0 * float(np.median(steps)))) + 1
        for i in shown:
            name = result.labels[i]
            xs = np.insert(line_t / scale, gaps, np.nan)
            ys = np.insert(line_scores[:, i].astype(np.float64), gaps, np.nan)
            ax.plot(xs, ys, color=colour[name], lw=1.0 if result.segments else 1.4, label=name)
        ax.set_xlim(result.frames[0].start_s / scale, result.frames[-1].end_s / scale)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel(f"time ({unit})")
        ax.set_ylabel("probability")
        suffix = " (untrained demo model)" if result.model.untrained else ""
        ax.set_title(title or f"{result.model.name}: top {result.label} ({result.confidence:.2f}){suffix}")
        ax.legend(loc="upper right", fontsize="small", ncol=min(len(shown), 5) or 1)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        # No bbox_inches="tight": it would change the pixel size the caller asked for.
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
