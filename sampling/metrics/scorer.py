"""The scorer every FID of this package goes through, and the one report of every scoring
command (``hqvae fid``, ``hqvae audio-fid``, ``hqvae classify``).

:func:`score_against_reference` takes a set of samples and a :class:`ReferenceSet` in a
:class:`FeatureSpace` (Inception for images, the classifier for audio): it checks the cache
can keep the reference before any network runs, computes the samples' features, reads or
computes the reference's, and returns FID (KID, precision / recall) with the counts under
one set of keys for both modalities. :func:`format_report` prints any scorer's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from sampling.classifier.evaluate import per_class_line
from sampling.metrics.distances import KID_SUBSETS, PRC_NEIGHBORHOOD, metrics_from_features
from sampling.metrics.features import (
    FeatureSpace,
    ReferenceSet,
    SpreadRows,
    cache_entry,
    check_reference_cache,
    reference_set_features,
)

# what one example is called in errors and reports, per modality
UNITS = {"image": "images", "audio": "clips"}


def fid_scores(
    samples: torch.Tensor,
    reference: torch.Tensor,
    kid: bool = False,
    prc: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: Optional[int] = None,
    unit: str = "examples",
) -> dict[str, Any]:
    """FID (and KID, and precision / recall of the samples) between two (N, D) feature
    matrices, with their counts: ``{"fid", ["kid_mean", "kid_std"], ["precision",
    "recall"], "num_samples", "num_reference"}``. A side of fewer than 2 is refused."""
    for name, f in (("samples", samples), ("reference", reference)):
        if len(f) < 2:
            raise ValueError(f"FID: the {name} side has {len(f)} {unit}; need at least 2")
    out: dict[str, Any] = metrics_from_features(samples, reference, kid=kid, kid_subsets=kid_subsets,
                                                kid_subset_size=kid_subset_size, prc=prc)
    out["num_samples"], out["num_reference"] = len(samples), len(reference)
    return out


def score_against_reference(
    space: FeatureSpace,
    samples: SpreadRows,
    reference: ReferenceSet,
    kid: bool = False,
    prc: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: Optional[int] = None,
    cache: bool = True,
    cache_root: Optional[Path] = None,
) -> dict[str, Any]:
    """FID of ``samples`` against ``reference`` in ``space``; the reference's features come
    from the cache when it holds them under the same key (``cache``; ``cache_root``: another
    folder than ``$HQVAE_CACHE/fid_ref``). Returns :func:`fid_scores`' keys and
    ``"reference_bad_examples_skipped"``, ``"reference_cache"``, ``"features"``,
    ``"feature_dim"`` and ``"modality"``."""
    entry = cache_entry(space, reference, cache_root) if cache else None
    check_reference_cache(entry)  # a cache that cannot keep them fails before any network runs
    f_samples = space.features(samples)
    f_ref, skipped = reference_set_features(space, reference, entry)
    out = fid_scores(f_samples, f_ref, kid=kid, prc=prc, kid_subsets=kid_subsets,
                     kid_subset_size=kid_subset_size, unit=UNITS[space.modality])
    out.update({"reference_bad_examples_skipped": skipped,
                "reference_cache": str(entry.path) if entry else None,
                "features": space.name, "feature_dim": space.dim, "modality": space.modality})
    return out


# ---------------------------------------------------------------------------------------
# the report


def _distance_lines(result: dict[str, Any]) -> list[str]:
    audio = result.get("modality") == "audio"
    unit = UNITS["audio" if audio else "image"]
    # "+ 0.0" and the clamp at -5e-5: a rounding-level negative distance (a set against
    # itself) prints as 0.0000, not -0.0000; larger negative values are shown as they are
    fid = result["fid"] if result["fid"] <= -5e-5 else max(result["fid"], 0.0) + 0.0
    lines = [f"{'audio FID' if audio else 'FID'} {fid:.4f}"]
    if "kid_mean" in result:
        lines.append(f"KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}")
    if "precision" in result:
        lines.append(f"precision {result['precision']:.4f}  recall {result['recall']:.4f}"
                     if result["precision"] is not None else
                     f"precision / recall: undefined for {PRC_NEIGHBORHOOD} or fewer {unit} a side")
    ref = result["reference"]
    where = f"{ref['source']}:{ref['split']}" + (f" ({ref['path']})" if ref.get("path") else "")
    if ref.get("image_size"):
        where += f" at {ref['image_size']}px"
    bad = result.get("reference_bad_examples_skipped")
    lines.append(f"samples: {result['num_samples']} {unit} from {result['folder']}; reference: "
                 f"{result['num_reference']} {unit} of {where}"
                 + (f" ({bad} bad row{'s' if bad > 1 else ''} skipped, not scored)" if bad else ""))
    if audio:
        lines.append(f"features: {result['feature_dim']}-d penultimate layer of classifier "
                     f"{result['classifier']} (not Inception: comparable only under the same classifier)")
    if min(result["num_samples"], result["num_reference"]) < result["feature_dim"]:
        lines.append(f"note: fewer than {result['feature_dim']} {unit} on a side: the covariance is "
                     f"rank-deficient and FID is biased upwards; compare only numbers taken with the same counts")
    return lines


def _accuracy_lines(report: dict[str, Any], result: dict[str, Any]) -> list[str]:
    kind = "audio files" if result.get("modality") == "audio" else "images"
    return [
        f"class accuracy {report['accuracy']:.4f} on {report['num_examples']} labelled {kind} in "
        f"{result['folder']} (labels: {result['labels']})",
        f"  per class: {per_class_line(report)}",
        f"  classifier {result['classifier']} (accuracies compare under the same classifier only)",
    ]


def format_report(result: dict[str, Any]) -> str:
    """The lines a scoring command prints for its result: the distances (FID, KID,
    precision / recall and the counts) when it has them, and the class accuracy when it
    has one (nested under "accuracy", or the result itself for ``hqvae classify``)."""
    lines = _distance_lines(result) if "fid" in result else []
    accuracy = result.get("accuracy")
    if isinstance(accuracy, dict):
        lines += _accuracy_lines(accuracy, result)
    elif accuracy is not None:
        lines += _accuracy_lines(result, result)
    return "\n".join(lines)
