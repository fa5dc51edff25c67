"""``dm``: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Reference: VICO-UoE/DatasetCondensation ``main_DM.py``. Each iteration draws a fresh randomly
initialised ConvNet (frozen, never trained) and, for every class, ``batch_real`` real images;
each class's real batch and its synthetic images are augmented with one shared DSA seed
(siamese) and the loss is the sum over classes of the squared L2 distance between the mean
2048-d embeddings (:func:`~rome_bench.distribution_matching.mean_embedding_loss`). One SGD
step (lr_img 1.0, momentum 0.5) updates all classes' images per iteration. Synthetic images
start as random real images. Retraining uses DSA.

All classes go through the network together (per-sample embeddings, so this equals the
reference's per-class forward passes). The images are optimised in normalized space
(``z = (x - mean)/std``, where the reference's lr applies) and returned as
``z * std + mean``, in pixel units but not clamped to [0,1] (the reference retrains on the
unclamped tensors).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rome_bench import DistilledSet, register_method
from rome_bench.data.datasets import ImageSet, class_balanced_indices
from rome_bench.methods.contract import MethodConfig
from rome_bench.methods.distribution_matching import (
    Normalizer,
    RealSampler,
    class_slices,
    dm_loss,
    frozen,
    image_step,
    indexed_batches,
)
from rome_bench.methods.network_queue import draw_seed, seeded
from rome_bench.models.convnet import build_model

# paper: main_DM.py defaults and the README command (lr_img 1 for IPC 1/10/50, CIFAR-10 and
# CIFAR-100 alike). The reference loops ``range(Iteration + 1)`` with an image update in every
# pass and saves the set after the last one, so Iteration 20000 is 20001 updates.
# cpu/quick scale the number of iterations and the real batch per class (the cost of one
# iteration); lr, momentum, init and loss are the paper's. Sized so one distillation costs
# ~15 s (quick, cifar10-mini) / ~17 min (cpu, CIFAR-10) of one core.
BUDGETS = {
    "paper": {"all": {"iterations": 20001, "lr_img": 1.0, "momentum_img": 0.5,
                      "batch_real": 256, "init": "real"},
              1: {}, 10: {}, 50: {}},
    "cpu": {"all": {"iterations": 500, "lr_img": 1.0, "momentum_img": 0.5, "batch_real": 64,
                    "init": "real"},
            1: {"iterations": 500}, 10: {"iterations": 500}},
    "quick": {"all": {"iterations": 15, "lr_img": 1.0, "momentum_img": 0.5, "batch_real": 16,
                      "init": "real"},
              1: {"iterations": 25}, 10: {"iterations": 15}},
}


@register_method("dm", display="DM", order=5,
                 description="DM: distribution matching of mean embeddings under random "
                 "ConvNets (Zhao & Bilen, WACV 2023)", budgets=BUDGETS, retrain_augment=True)
def dm(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    p = cfg.params
    iterations = int(p.get("iterations", 20001))
    batch_real = int(p.get("batch_real", 256))
    device = cfg.device
    num_classes = train.num_classes
    norm = Normalizer(cfg.dataset.mean, cfg.dataset.std, device)
    aug = cfg.dsa()
    g = cfg.generator(1)
    sampler = RealSampler(train.labels, num_classes, g)
    x_train = train.images.to(device)

    resumed = cfg.resume()
    if resumed is not None:
        state, start = resumed
        z0 = state["syn"]
        g.set_state(state["generator"])
    else:
        start = 0
        if p.get("init", "real") != "real":
            raise ValueError(f"dm: unsupported init '{p.get('init')}' (only 'real')")
        idx = class_balanced_indices(train.labels, ipc, num_classes, seed=cfg.seed)
        idx = idx[torch.argsort(train.labels[idx], stable=True)]
        z0 = norm(train.images[idx])
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    z = z0.detach().to(device).clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=float(p.get("lr_img", 1.0)),
                          momentum=float(p.get("momentum_img", 0.5)))
    if resumed is not None and state["momentum"].numel():
        opt.state[z]["momentum_buffer"] = state["momentum"].to(device).clone()

    def build():
        return build_model(str(p.get("arch", "convnet")), num_classes=num_classes,
                           channels=train.channels, image_size=train.image_size, mean=cfg.dataset.mean,
                           std=cfg.dataset.std)

    def snapshot() -> dict[str, Any]:
        buf = opt.state[z].get("momentum_buffer")
        return {"syn": z.detach().cpu().clone(),
                "momentum": buf.detach().cpu().clone() if buf is not None else torch.empty(0),
                "generator": g.get_state()}

    t0 = time.perf_counter()
    for _ in cfg.loop(iterations, f"dm ipc{ipc}", start=start, snapshot=snapshot):
        net = frozen(seeded(build, draw_seed(g)).to(device)).train()
        seeds = [draw_seed(g) for _ in range(num_classes)]
        idx = [sampler.indices(c, batch_real) for c in range(num_classes)]
        loss = dm_loss(net.net.embed, indexed_batches(x_train, idx, norm),
                       class_slices(z, ipc), num_classes, seeds, aug,
                       max_batch=int(p.get("max_batch", 0)))
        image_step(opt, loss, z)
    x = norm.inverse(z.detach()).cpu()
    return DistilledSet(x, labels, {"iterations": iterations,
                                    "seconds": round(time.perf_counter() - t0, 2)})
