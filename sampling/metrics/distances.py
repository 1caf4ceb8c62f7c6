"""Fréchet distance, KID and precision / recall from features, with torch-fidelity's own
arithmetic (``fid_statistics_to_metric``, ``kid_features_to_metric``,
``prc_features_to_metric``), so numbers match what its ``calculate_metrics`` reports on the
same features; only for sets smaller than the feature dimension does FID take an exact
shortcut (see :func:`fid_from_features`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import (
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)

KID_SUBSETS = 100  # torch-fidelity's default
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; capped at the smaller set's size
# k of the k-nearest-neighbour manifolds of precision / recall: torch-fidelity's default,
# the value Kynkäänniemi et al. 2019 recommend
PRC_NEIGHBORHOOD = 3

def _as_f64(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_matrix(f: np.ndarray) -> None:
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: need an (N, D) matrix with N >= 2, got shape {f.shape}")


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of an (N, D) feature matrix, N >= 2."""
    f = _as_f64(features)
    _check_matrix(f)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, computed as
    torch-fidelity does (trace of the square root from the eigenvalues of sigma1 @ sigma2)."""
    mu1, mu2 = _as_f64(mu1), _as_f64(mu2)
    sigma1, sigma2 = _as_f64(sigma1), _as_f64(sigma2)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mean shapes differ or are not 1-D: {mu1.shape}, {mu2.shape}")
    if sigma1.shape != (mu1.size, mu1.size) or sigma2.shape != sigma1.shape:
        raise ValueError(
            f"frechet_distance: covariances must be {mu1.size}x{mu1.size}, got {sigma1.shape}, {sigma2.shape}"
        )
    out = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)
    return float(out[KEY_METRIC_FID])


def fid_from_features(features1: torch.Tensor | np.ndarray, features2: torch.Tensor | np.ndarray) -> float:
    """FID between two (N, D) feature matrices. With fewer examples than dimensions on both
    sides (small sets, tests) it is computed exactly from the N1 x N2 cross-product: with
    centred features A1, A2, the nonzero eigenvalues of sigma1 @ sigma2 are the squared
    singular values of A1 @ A2.T / sqrt((N1-1)(N2-1)); this avoids the D x D
    eigen-decomposition (tens of seconds for D = 2048 on a busy CPU). Otherwise it is
    :func:`frechet_distance` of the two Gaussians, as torch-fidelity computes it."""
    f1, f2 = _as_f64(features1), _as_f64(features2)
    _check_matrix(f1)
    _check_matrix(f2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features: dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    if n1 >= d or n2 >= d:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = f1 - mu1, f2 - mu2
    tr1 = float((a1**2).sum()) / (n1 - 1)
    tr2 = float((a2**2).sum()) / (n2 - 1)
    sv = np.linalg.svd(a1 @ a2.T, compute_uv=False)
    tr_covmean = float(sv.sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff.dot(diff) + tr1 + tr2 - 2 * tr_covmean)


def default_kid_subset_size(n1: int, n2: int) -> int:
    """min(1000, N1, N2), halved when that is a whole side: every subset of the smaller set
    would then be the set itself and the reported std would be 0."""
    size = min(KID_SUBSET_SIZE, n1, n2)
    return size // 2 if size == min(n1, n2) and size >= 4 else size


def kid_from_features(
    features1: torch.Tensor | np.ndarray,
    features2: torch.Tensor | np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: Optional[int] = None,
    seed: int = 2020,
) -> tuple[float, float]:
    """Kernel Inception Distance (cubic polynomial kernel MMD^2, unbiased), mean and std over
    ``subsets`` random subsets of ``subset_size`` (default: :func:`default_kid_subset_size`) per side."""
    f1 = torch.as_tensor(_as_f64(features1))
    f2 = torch.as_tensor(_as_f64(features2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid: need two (N, D) matrices of equal D, got {tuple(f1.shape)}, {tuple(f2.shape)}")
    size = subset_size or default_kid_subset_size(len(f1), len(f2))
    if size < 2 or size > min(len(f1), len(f2)):
        raise ValueError(f"kid: subset size {size} needs 2 <= size <= min(N1, N2) = {min(len(f1), len(f2))}")
    out = kid_features_to_metric(
        f1, f2, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall_from_features(
    generated: torch.Tensor | np.ndarray,
    real: torch.Tensor | np.ndarray,
    neighborhood: int = PRC_NEIGHBORHOOD,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991): the share
    of ``generated`` features inside the manifold of the ``real`` ones (the union of balls
    reaching each real feature's ``neighborhood``-th nearest real neighbour), and the share
    of real features inside the generated manifold. torch-fidelity's own computation
    (``prc_features_to_metric``), in memory-saving batches."""
    f1, f2 = torch.as_tensor(generated), torch.as_tensor(real)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"precision / recall: need two (N, D) matrices of equal D, "
                         f"got {tuple(f1.shape)}, {tuple(f2.shape)}")
    if min(len(f1), len(f2)) <= neighborhood:
        raise ValueError(f"precision / recall: need more than {neighborhood} examples a side "
                         f"(the {neighborhood}-th nearest neighbour), got {len(f1)} and {len(f2)}")
    out = prc_features_to_metric(f1, f2, prc_neighborhood=neighborhood, save_cpu_ram=True, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def metrics_from_features(
    features1: torch.Tensor | np.ndarray,
    features2: torch.Tensor | np.ndarray,
    kid: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: Optional[int] = None,
    prc: bool = False,
) -> dict[str, Optional[float]]:
    """FID (and optionally KID, and precision / recall of ``features1`` against
    ``features2``) between two (N, D) feature matrices:
    ``{"fid", ["kid_mean", "kid_std"], ["precision", "recall"]}``. Precision and recall are
    None when a side has :data:`PRC_NEIGHBORHOOD` examples or fewer (undefined there)."""
    out: dict[str, Optional[float]] = {"fid": fid_from_features(features1, features2)}
    if kid:
        out["kid_mean"], out["kid_std"] = kid_from_features(
            features1, features2, subsets=kid_subsets, subset_size=kid_subset_size
        )
    if prc:
        out["precision"] = out["recall"] = None
        if min(len(features1), len(features2)) > PRC_NEIGHBORHOOD:
            out["precision"], out["recall"] = precision_recall_from_features(features1, features2)
    return out
