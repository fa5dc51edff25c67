"""ZCA whitening fitted on the real training set, as a layer of the model's input transform.

MTT and DATM (``--zca``) whiten every image with kornia's ``ZCAWhitening(eps=0.1)`` fitted on
the raw [0,1] training pixels: with ``mu`` the per-feature mean of the flattened (C*H*W) images
and ``Cov = Xc^T Xc / (N-1)`` (unbiased), ``T = U diag((S + eps)^-1/2) U^T`` from the
eigendecomposition ``Cov = U diag(S) U^T``, and an image maps to ``(x_flat - mu) @ T``.
This module implements that with torch alone (no kornia dependency).

In rome-bench the whitening is a layer *after* :class:`~rome_bench.models.Normalize` inside the
model (``build_model(..., whitening=fit_zca(...))``), so attacks still see [0,1] images and
epsilons stay in pixel units. The normalization is folded into the returned
:class:`~rome_bench.models.LinearTransform`: it receives ``z = (x - mean) / std`` and produces
exactly kornia's ``(x_flat - mu) @ T`` of the pixels ``x``, i.e. the same whitened tensors the
reference feeds its networks. (With ``x = z*std + mean``: ``(x - mu) @ T = (z - off) @ (diag(std) T)``
with ``off = (mu - mean) / std``; ``LinearTransform`` computes ``(z - offset) @ matrix.T``, so
``matrix = T diag(std)`` and ``offset = off``.)

When the training set has fewer images than features (the embedded 2,000-image subset has
2,000 < 3,072), the covariance has rank ``N - 1`` and the eigendecomposition is done on the
smaller ``N x N`` Gram matrix; on the null space of the covariance ``S = 0``, so ``T`` acts there
as ``eps^-1/2``. Both routes give the same ``T``.

>>> x = torch.rand(64, 3, 4, 4)
>>> w = fit_zca(x, mean=(0.5,) * 3, std=(0.25,) * 3)
>>> z = (x - 0.5) / 0.25
>>> torch.allclose(unwhiten(w, w(z)), z, atol=1e-3)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rome_bench.models.convnet import LinearTransform

DEFAULT_EPS = 0.1  # kornia.enhance.ZCAWhitening(eps=0.1) as MTT/DATM call it


def zca_matrix(images: torch.Tensor, eps: float = DEFAULT_EPS,
               chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia-style ZCA of ``images`` (N,C,H,W): returns ``(T, mu)`` in float64.

    ``T`` is the symmetric (D,D) whitening matrix and ``mu`` the (D,) feature mean, so that
    ``(x_flat - mu) @ T`` whitens ``x``.
    """
    if images.dim() < 2 or images.shape[0] < 2:
        raise ValueError("ZCA needs at least two images")
    x = images.flatten(1)
    n, d = x.shape
    mu = x.double().mean(0)
    if n - 1 < d:  # rank-deficient: eigendecompose the N x N Gram matrix instead
        xc = x.double() - mu
        gram = xc @ xc.T / (n - 1)
        lam, vec = torch.linalg.eigh(gram)
        keep = lam > lam.max() * 1e-10
        lam, vec = lam[keep], vec[:, keep]
        u = xc.T @ vec / torch.sqrt(lam * (n - 1))           # (D, r) orthonormal eigvecs of Cov
        shrink = (lam + eps).rsqrt() - eps ** -0.5
        t = (u * shrink) @ u.T
        t.diagonal().add_(eps ** -0.5)
        return t, mu
    cov = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, chunk):  # chunked so a 50k x 3072 float64 copy never exists
        xc = x[i:i + chunk].double() - mu
        cov += xc.T @ xc
    cov /= n - 1
    s, u = torch.linalg.eigh(cov)
    s = s.clamp_min(0.0)
    return (u * (s + eps).rsqrt()) @ u.T, mu


def fit_zca(images: torch.Tensor, eps: float = DEFAULT_EPS, *,
            mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> LinearTransform:
    """Fit ZCA on ``images`` ([0,1], N,C,H,W) as a layer that follows ``Normalize(mean, std)``.

    Args:
        images: the real training set in [0,1] pixel space.
        eps: kornia's regulariser (MTT/DATM use 0.1).
        mean, std: the dataset's normalization constants (the model's first layer). None
            means no normalization precedes the whitening.

    Returns:
        A :class:`LinearTransform` whose output on ``(x - mean)/std`` equals kornia's
        ``ZCAWhitening`` output on ``x``.
    """
    t, mu = zca_matrix(images, eps)
    c = images.shape[1]
    per_pixel = images[0].numel() // c
    m = torch.tensor(mean if mean is not None else (0.0,) * c, dtype=torch.float64)
    s = torch.tensor(std if std is not None else (1.0,) * c, dtype=torch.float64)
    m_flat, s_flat = m.repeat_interleave(per_pixel), s.repeat_interleave(per_pixel)
    matrix = t * s_flat.unsqueeze(0)        # T diag(std)
    offset = (mu - m_flat) / s_flat
    return LinearTransform(matrix.float(), offset.float())


def unwhiten(transform: LinearTransform, w: torch.Tensor) -> torch.Tensor:
    """Invert ``transform``: whitened tensors (N,C,H,W) -> its (normalized) inputs, in float64 maths.

    Used to turn images learned in whitened space back into pixels; the result is exact up to
    floating-point error (the whitening matrix is well conditioned thanks to ``eps``).
    """
    matrix = transform.matrix.double().to(w.device)
    flat = w.detach().flatten(1).double()
    # w = (z - offset) @ matrix.T  <=>  matrix @ (z - offset)^T = w^T
    z = torch.linalg.solve(matrix, flat.T).T + transform.offset.double().to(w.device)
    return z.to(w.dtype).view_as(w)
