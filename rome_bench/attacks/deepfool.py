"""DeepFool (L2, untargeted), vectorised over the batch.

DeepFool is from Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method
to fool deep neural networks", CVPR 2016 (arXiv:1511.04599).

Why batched: torchattacks 3.5.1's ``DeepFool`` walks the batch one image at a time and builds
each image's Jacobian with one backward pass per class on a batch of size 1, so an attack on
N images costs about ``N * steps_taken * K`` tiny backward passes plus Python overhead per
image. Here one step costs one forward pass and K - 1 backward passes over (chunks of) all
images still correctly classified: the same arithmetic as a few batched kernels instead of
thousands of small ones, which is what accelerators need. On a CPU the DC ConvNet's
convolution backward passes are compute-bound already at batch size 1 (~20 ms per image and
step on one thread), so there the gain comes mostly from skipping work torchattacks repeats
(see below) and is about 3x on one thread.

The iteration reproduces torchattacks' choices, which differ in places from the paper's
Algorithm 2, so that results match it image for image:

* an image is checked at the start of each step and frozen as soon as its prediction differs
  from its true label; after the last step nothing is checked, the image is simply returned;
* the step is the minimal one towards the nearest linearised boundary,
  ``l = argmin_{k != y} |f_k - f_y| / ||w_k - w_y||`` and
  ``r = |f_l - f_y| * (w_l - w_y) / ||w_l - w_y||^2``, with no epsilon in either denominator;
* the overshoot is applied to every step, not to the accumulated perturbation: each step sets
  ``x <- clamp(x + (1 + overshoot) * r, 0, 1)`` where ``x`` is the current adversarial image
  (the paper instead returns ``x0 + (1 + overshoot) * sum(r)``).

With the overshoot applied per step, iterates that do not cross can converge onto the boundary
until ``f_k == f_y`` holds exactly in float32; the step is then zero and torchattacks repeats
the same step until ``steps`` runs out. Such an image stays on the boundary, counted as
correct when ``y`` is the lower class index (argmax takes the first maximum). Here an image
whose step leaves it bit for bit unchanged is retired at once, which gives the same result
(a step is a deterministic function of the image) without the remaining steps. Whether such a
tied image is then *evaluated* as correct depends on the rounding of the evaluating forward
pass (batch size, kernels), so a few percent of DeepFool's "robust" images are a coin toss for
any implementation, torchattacks included.

The gradients of the K - 1 margins ``f_k - f_y`` (k != y) are taken with K - 1 backward passes
over the active batch (pass j uses ``k = (y + j) mod K``, picked per image with ``gather``), so
per-image gradients come out of one batched pass; torchattacks differentiates all K logits
and subtracts, which is the same quantity up to rounding. Batching is exact only when the model
treats the images of a batch independently, which holds for eval-mode networks
(instance/group/layer norm, BatchNorm with running statistics). A BatchNorm that uses batch
statistics in eval mode (``track_running_stats=False``, as rome-bench's ``convnet-bn``) couples
the images, and then the batched and the per-image attacks differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchattacks
from torch import nn

__all__ = ["BatchedDeepFool", "deepfool", "deepfool_with_targets"]

Logits = Callable[[torch.Tensor], torch.Tensor]


def _auto_chunk(device: torch.device) -> int | None:
    # On CPU the work is compute-bound and large batches fall out of cache (and through glibc's
    # mmap threshold), so ~32 images per pass is fastest; accelerators want the whole batch.
    return 32 if device.type == "cpu" else None


def _step(model: Logits, x0: torch.Tensor, y: torch.Tensor, scale: float
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DeepFool step for a chunk of images still in play.

    Returns ``(done, new_images, targets)``: which images need no further step, the stepped
    images (rows of fooled images are their inputs) and the target labels (the prediction for
    fooled images, the chosen boundary class otherwise). An image is done when it is already
    misclassified, or when the step left it bit for bit unchanged: a step is a deterministic
    function of the image, so every later step would leave it unchanged too and running them
    only burns time. That happens at exact float32 ties ``f_k == f_y`` (zero step) or when the
    step is below the rounding of the pixels or points out of [0, 1] everywhere.
    """
    x0 = x0.detach()
    x = x0.clone().requires_grad_(True)
    logits = model(x)
    pred = logits.detach().max(dim=1).indices
    fooled = pred != y
    still = ~fooled
    new_images = x0.clone()
    targets = pred.clone()
    n_still = int(still.sum())
    if n_still == 0:
        return fooled, new_images, targets
    num_classes = logits.shape[1]
    # Gradients of fooled rows would be thrown away; when there are enough of them, one more
    # forward pass on the others is cheaper than K - 1 backward passes carrying them.
    refreshed = int(fooled.sum()) * (num_classes - 1) > n_still
    if refreshed:
        x = x0[still].clone().requires_grad_(True)
        logits = model(x)
        ys = y[still]
    else:
        ys = y

    f = logits.detach()
    f_y = logits.gather(1, ys[:, None]).squeeze(1)
    best_value = torch.full_like(f_y.detach(), float("inf"))
    best_class = torch.full_like(ys, num_classes)  # sentinel above every class index
    best_w = torch.zeros_like(x).flatten(1)
    # K - 1 backward passes: pass j differentiates the margin f_k - f_y with k = (y + j) mod K,
    # so each image gets the gradient w_k - w_y of one wrong class per pass.
    for j in range(1, num_classes):
        k = (ys + j) % num_classes
        f_k = logits.gather(1, k[:, None]).squeeze(1)
        (w,) = torch.autograd.grad((f_k - f_y).sum(), x, retain_graph=j + 1 < num_classes)
        w = w.flatten(1)
        value = (f.gather(1, k[:, None]).squeeze(1) - f.gather(1, ys[:, None]).squeeze(1)).abs() \
            / w.norm(p=2, dim=1)
        # Keep what torch.min over the wrong classes in index order would pick: the first
        # minimum, a NaN counting as the minimum.
        v_nan, b_nan = value.isnan(), best_value.isnan()
        earlier = k < best_class
        take = torch.where(b_nan, v_nan & earlier,
                           v_nan | (value < best_value) | ((value == best_value) & earlier))
        best_value = torch.where(take, value, best_value)
        best_class = torch.where(take, k, best_class)
        best_w = torch.where(take[:, None], w, best_w)

    margin = (f.gather(1, best_class[:, None]) - f.gather(1, ys[:, None])).abs()
    delta = (margin * best_w / best_w.norm(p=2, dim=1).pow(2)[:, None]).view_as(x)
    stepped = torch.clamp(x.detach() + scale * delta, min=0, max=1)
    if not refreshed:
        stepped, best_class = stepped[still], best_class[still]
    new_images[still] = stepped
    targets[still] = best_class
    stalled = torch.zeros_like(fooled)
    stalled[still] = (stepped == x0[still]).flatten(1).all(dim=1)
    return fooled | stalled, new_images, targets


def deepfool_with_targets(model: Logits, images: torch.Tensor, labels: torch.Tensor, *,
                          steps: int = 50, overshoot: float = 0.02, chunk_size: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched DeepFool; returns ``(adv_images, target_labels)``.

    ``target_labels`` is, per image, the predicted label at which the attack stopped, or the
    class of the last boundary it stepped towards if it ran out of steps (torchattacks'
    ``forward_return_target_labels``). See :func:`deepfool` for the arguments.
    """
    if images.ndim < 2 or labels.shape != images.shape[:1]:
        raise ValueError(f"images (N, ...) and labels (N,) expected, got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    adv = images.detach().clone()
    labels = labels.detach().to(device=adv.device, dtype=torch.long)
    targets = labels.clone()
    active = torch.ones(len(adv), dtype=torch.bool, device=adv.device)
    chunk = chunk_size if chunk_size is not None else _auto_chunk(adv.device)
    scale = 1 + overshoot

    for _ in range(steps):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        for part in idx.split(chunk or len(idx)):
            done, new_images, new_targets = _step(model, adv[part], labels[part], scale)
            adv[part] = new_images
            targets[part] = new_targets
            active[part[done]] = False
    return adv, targets


def deepfool(model: Logits, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 50,
             overshoot: float = 0.02, chunk_size: int | None = None) -> torch.Tensor:
    """Untargeted L2 DeepFool on a whole batch at once, matching torchattacks 3.5.1.

    Args:
        model: returns logits ``(N, K)``; put it in eval mode first (it is not changed here).
        images: ``(N, C, H, W)`` float images in [0, 1] (each step clamps to [0, 1]).
        labels: ``(N,)`` true labels.
        steps: at most this many linearisation steps per image.
        overshoot: each step is scaled by ``1 + overshoot``.
        chunk_size: at most this many images per forward/backward pass; ``None`` picks 32 on
            CPU (faster there than one large batch) and the whole batch on other devices.
            Images are independent, so this changes speed only, not results (up to rounding).

    Returns:
        The adversarial images, detached, same shape, dtype and device as ``images``.
    """
    return deepfool_with_targets(model, images, labels, steps=steps, overshoot=overshoot,
                                 chunk_size=chunk_size)[0]


class BatchedDeepFool(torchattacks.attack.Attack):
    """Drop-in for ``torchattacks.DeepFool(model, steps, overshoot)`` using :func:`deepfool`.

    Model mode, normalization (``set_normalization_used``) and device handling are the
    torchattacks ``Attack`` machinery's, so wrappers that call ``atk(images, labels)`` work
    unchanged.
    """

    def __init__(self, model: nn.Module, steps: int = 50, overshoot: float = 0.02,
                 chunk_size: int | None = None) -> None:
        super().__init__("DeepFool", model)
        self.steps = steps
        self.overshoot = overshoot
        self.chunk_size = chunk_size
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward_return_target_labels(images, labels)[0]

    def forward_return_target_labels(self, images: torch.Tensor, labels: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(adv_images, target_labels)`` as torchattacks' DeepFool returns them."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        return deepfool_with_targets(self.get_logits, images, labels, steps=self.steps,
                                     overshoot=self.overshoot, chunk_size=self.chunk_size)
