"""How many emotions a model's head enables, and what to say when that is fewer than promised.

The emotion2vec+ models promise nine emotions (angry, disgusted, fearful, happy, neutral, other, sad,
surprised, unknown). Early snapshots of their hub repositories shipped a ``tokens.txt`` that enables only
five of them (the others are ``unuse_*`` placeholders, masked to probability 0), so a model that loads and
serves can still answer with fewer emotions than the README says. Every place that learns a model's labels
(a download, an export, a server start) asks :func:`check_labels`: it returns a warning to show (log,
``GetModelInfo``, the page's model card, ``manifest.json``), or raises :class:`LabelCountError` when the
caller required a number (``--require-labels N``) that the model does not reach. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from emotion2vec_serving.modelrepo.manifest import ModelManifest

__all__ = [
    "EMOTION2VEC_PLUS_LABELS",
    "LabelCountError",
    "check_labels",
    "enabled_count",
    "label_warning",
    "manifest_revision",
    "promised_labels",
    "served_warnings",
]

#: The emotions an emotion2vec+ model's head enables in its complete ``tokens.txt``.
EMOTION2VEC_PLUS_LABELS = 9


class _HasEnabled(Protocol):
    @property
    def enabled(self) -> bool: ...


class LabelCountError(ValueError):
    """A model enables fewer labels than ``--require-labels`` asks for."""


def enabled_count(labels: Iterable[_HasEnabled]) -> int:
    """Labels the head can predict (``unuse_*`` placeholders are not enabled)."""
    return sum(1 for label in labels if label.enabled)


def promised_labels(model_name: str) -> int | None:
    """How many labels the README promises for a model of this name; None when it promises none (the
    headless emotion2vec_base, generated test models)."""
    return EMOTION2VEC_PLUS_LABELS if model_name.startswith("emotion2vec_plus") else None


def label_warning(model_name: str, labels: Iterable[_HasEnabled], revision: str | None = None) -> str | None:
    """The warning for an emotion2vec+ model with fewer than nine enabled labels; None otherwise."""
    promised = promised_labels(model_name)
    enabled = enabled_count(labels)
    if promised is None or enabled >= promised:
        return None
    where = f" at revision {revision}" if revision else ""
    return (f"{model_name}{where} enables only {enabled} of the {promised} emotions its model card promises "
            f"(its tokens.txt has unuse_* placeholders: an early snapshot); download a revision with the "
            f"complete tokens.txt, or pass --require-labels {promised} to refuse such a model")


def check_labels(model_name: str, labels: Iterable[_HasEnabled], *, revision: str | None = None,
                 require: int | None = None) -> str | None:
    """:func:`label_warning`, after refusing a model with fewer than ``require`` enabled labels."""
    labels = list(labels)
    if require is not None and require > 0:
        enabled = enabled_count(labels)
        if enabled < require:
            where = f" at revision {revision}" if revision else ""
            raise LabelCountError(f"{model_name}{where} enables {enabled} labels; --require-labels asks for "
                                  f"at least {require}")
    return label_warning(model_name, labels, revision)


def manifest_revision(manifest: ModelManifest) -> str | None:
    """The revision a repository was exported from (its download record's commit, else the requested
    revision); None for a local checkpoint."""
    hub = manifest.source.hub if manifest.source is not None else None
    return hub.resolved_revision if hub is not None else None


def served_warnings(manifest: ModelManifest, require: int | None = None) -> tuple[str, ...]:
    """What a server serving ``manifest`` warns about: the manifest's ``warnings`` (written by the export),
    then this check's own on the manifest's labels (a repository exported before the check, or written by
    hand, has none), each text once. Raises :class:`LabelCountError` below ``require``."""
    own = check_labels(manifest.model_name, manifest.labels, revision=manifest_revision(manifest),
                       require=require)
    warnings = list(manifest.warnings)
    if own is not None and own not in warnings:
        warnings.append(own)
    return tuple(warnings)
