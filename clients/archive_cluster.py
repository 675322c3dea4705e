"""``emotion-client cluster SUMMARY --embeddings E.npy --k 8 --out DIR``: K-Means over an archive's
utterance embeddings, to find groups of calls nobody labelled.

Reads a summary (``clients/archive/schema.py``; any of the three formats) and the embeddings written beside
it by ``recognize --embeddings`` (or ``merge --embeddings-out``). The rows are matched to the embeddings by
``(path, channel)`` through ``E.index.csv``, or by position when there is no index file. Rows without an
embedding (error rows, NaN) are left out of the clustering and get an empty ``cluster``.

Writes into ``DIR``:

- ``summary.<fmt>``: a copy of the summary (same format) with a ``cluster`` column;
- ``clusters.csv``: one row per cluster: ``cluster, size, share, label`` (the top emotion of its mean
  scores) and ``mean_score_<label>`` for each emotion;
- ``clusters.png``: the embeddings' 2-D PCA projection, one colour per cluster;
- ``clusters.json``: k, how it was chosen (the silhouette of each k tried with ``--k auto``), counts.

The embeddings are L2-normalised first (K-Means then groups by direction, as cosine similarity does;
``--no-normalize`` keeps them raw). scikit-learn and matplotlib are optional (the ``archive`` extra) and
imported only here.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .archive.schema import SCORE_PREFIX, row_key
from .archive_merge import Summary, read_embeddings, read_summary, write_summary

__all__ = ["ClusterReport", "align_embeddings", "choose_k", "cluster_summary", "plot_clusters"]

FloatMatrix = npt.NDArray[np.float64]


@dataclass
class ClusterReport:
    out_dir: Path
    k: int
    clustered: int
    excluded: int
    sizes: list[int]
    silhouettes: dict[int, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def align_embeddings(summary: Summary, npy: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
    """The embedding of each summary row, ``[rows, dim]`` (NaN rows where there is none)."""
    matrix, keys = read_embeddings(npy)
    if keys is None:
        if matrix.shape[0] != len(summary.rows):
            raise ValueError(
                f"{npy} has {matrix.shape[0]} rows but {summary.path} has {len(summary.rows)} and there is "
                "no index file to match them by (path, channel)"
            )
        return matrix
    where = {key: i for i, key in enumerate(keys)}
    out = np.full((len(summary.rows), matrix.shape[1]), np.nan, np.float32)
    missing = 0
    for i, row in enumerate(summary.rows):
        j = where.get(row_key(row))
        if j is None:
            missing += row.get("status") == "ok"
        else:
            out[i] = matrix[j]
    if missing and missing == sum(row.get("status") == "ok" for row in summary.rows):
        raise ValueError(f"no row of {summary.path} is listed in the index of {npy}: not its embeddings")
    return out


def _kmeans(x: FloatMatrix, k: int, seed: int) -> tuple[npt.NDArray[np.int64], float | None]:
    from sklearn.cluster import KMeans  # optional (the `archive` extra)
    from sklearn.metrics import silhouette_score

    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)
    score = None
    if 1 < len(set(labels.tolist())) < x.shape[0]:
        score = float(silhouette_score(x, labels))
    return labels, score


def choose_k(x: FloatMatrix, k_max: int, seed: int) -> tuple[int, npt.NDArray[np.int64], dict[int, float]]:
    """The k in ``2..k_max`` with the best silhouette, its labels, and the silhouette of each k tried."""
    top = min(k_max, x.shape[0] - 1)
    if top < 2:
        raise ValueError(f"--k auto needs at least 3 recordings with embeddings (got {x.shape[0]})")
    tried: dict[int, float] = {}
    best: tuple[float, int, npt.NDArray[np.int64]] | None = None
    for k in range(2, top + 1):
        labels, score = _kmeans(x, k, seed)
        if score is None:
            continue
        tried[k] = score
        if best is None or score > best[0]:
            best = (score, k, labels)
    if best is None:
        raise ValueError("--k auto: no k gave two or more distinct clusters (identical embeddings?)")
    return best[1], best[2], tried


def _relabel_by_size(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Cluster ids in decreasing size (0 the largest; ties by first appearance), so reruns read alike."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(ids.size), key=lambda i: (-counts[i], first[i]))
    mapping = {int(ids[i]): new for new, i in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], np.int64)


def plot_clusters(
    points: FloatMatrix,
    labels: npt.NDArray[np.int64],
    names: list[str],
    out: str | os.PathLike[str],
    *,
    title: str,
    width_px: int = 900,
    height_px: int = 700,
    dpi: int = 100,
) -> Path:
    """A scatter of 2-D points, one colour per cluster; ``names[c]`` is cluster c's legend entry. The image
    is exactly ``width_px`` x ``height_px``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        for c, name in enumerate(names):
            mine = labels == c
            ax.scatter(points[mine, 0], points[mine, 1], s=22, color=cmap(c % cmap.N), label=name,
                       alpha=0.85, edgecolors="white", linewidths=0.4)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")  # no bbox_inches="tight": it changes the pixel size
    finally:
        plt.close(fig)
    return path


def _pca_2d(x: FloatMatrix) -> FloatMatrix:
    from sklearn.decomposition import PCA  # optional (the `archive` extra)

    n = min(2, x.shape[0], x.shape[1])
    points = np.zeros((x.shape[0], 2))
    points[:, :n] = PCA(n_components=n).fit_transform(x)
    return points


def cluster_summary(
    summary_path: str | os.PathLike[str],
    embeddings: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    k: int | str = 8,
    k_max: int = 10,
    seed: int = 0,
    normalize: bool = True,
    width_px: int = 900,
    height_px: int = 700,
) -> ClusterReport:
    """Cluster the embeddings of a summary's rows and write the four files (module docstring)."""
    summary = read_summary(summary_path)
    matrix = align_embeddings(summary, embeddings).astype(np.float64)
    usable = np.isfinite(matrix).all(axis=1) & (matrix.shape[1] > 0)
    usable &= np.array([row.get("status") in ("ok", None) for row in summary.rows], bool)
    x = matrix[usable]
    if normalize and x.size:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    silhouettes: dict[int, float] = {}
    if k == "auto":
        chosen, labels, silhouettes = choose_k(x, k_max, seed)
    else:
        chosen = int(k)
        if chosen < 1:
            raise ValueError(f"--k must be 1 or more, or 'auto' (got {k})")
        if x.shape[0] < chosen:
            raise ValueError(
                f"--k {chosen} needs at least {chosen} recordings with embeddings (got {x.shape[0]})"
            )
        labels, score = _kmeans(x, chosen, seed)
        if score is not None:
            silhouettes[chosen] = score
    labels = _relabel_by_size(labels)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The copy of the summary with each row's cluster.
    columns = [*summary.columns, "cluster"] if "cluster" not in summary.columns else list(summary.columns)
    cluster_of = np.full(len(summary.rows), -1, np.int64)
    cluster_of[np.flatnonzero(usable)] = labels
    rows = [
        {**row, "cluster": int(c) if c >= 0 else None}
        for row, c in zip(summary.rows, cluster_of, strict=True)
    ]
    copy = write_summary(out / f"summary{summary.path.suffix.lower()}", Summary(out, columns, rows))

    # Per-cluster sizes and mean scores.
    score_cols = [c for c in summary.columns if c.startswith(SCORE_PREFIX)]
    kept = [row for row, ok in zip(summary.rows, usable, strict=True) if ok]
    table_path = out / "clusters.csv"
    sizes: list[int] = []
    names: list[str] = []
    with open(table_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cluster", "size", "share", "label", *(f"mean_{c}" for c in score_cols)])
        for c in range(int(labels.max()) + 1 if labels.size else 0):
            members = [row for row, lab in zip(kept, labels, strict=True) if lab == c]
            means = [
                float(np.mean([m[col] for m in members if m.get(col) is not None] or [np.nan]))
                for col in score_cols
            ]
            top = score_cols[int(np.nanargmax(means))][len(SCORE_PREFIX):] if score_cols and not all(
                np.isnan(means)) else ""
            sizes.append(len(members))
            names.append(f"cluster {c} ({len(members)}, {top})" if top else f"cluster {c} ({len(members)})")
            writer.writerow([c, len(members), round(len(members) / len(kept), 6), top, *means])

    picture = plot_clusters(
        _pca_2d(x), labels, names, out / "clusters.png",
        title=f"K-Means, k={chosen}, {len(kept)} recordings"
        + (f" (silhouette {silhouettes[chosen]:.2f})" if chosen in silhouettes else ""),
        width_px=width_px, height_px=height_px,
    )
    report = ClusterReport(out, chosen, len(kept), len(summary.rows) - len(kept), sizes, silhouettes)
    info: dict[str, Any] = {
        "summary": str(summary.path),
        "embeddings": str(embeddings),
        "k": chosen,
        "k_chosen_by": "silhouette" if k == "auto" else "--k",
        "silhouette": {str(key): value for key, value in silhouettes.items()},
        "normalized": normalize,
        "seed": seed,
        "clustered": report.clustered,
        "excluded": report.excluded,
        "sizes": sizes,
    }
    meta = out / "clusters.json"
    meta.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    report.files = [copy, table_path, picture, meta]
    return report
