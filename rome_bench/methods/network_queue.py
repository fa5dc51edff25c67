"""IDM's queue of partially trained networks (Zhao et al., CVPR 2023), reusable by BACON and ROME.

Instead of a fresh random network per iteration (DM), IDM keeps a FIFO queue of networks at
different stages of training:

* the queue starts with ``initial`` random networks; every ``push_every`` iterations
  (iteration 0 included) ``push_num`` new randomly initialised networks are appended, and when
  the queue already holds ``capacity`` networks the oldest is dropped first;
* each iteration the distillation samples one network (:meth:`NetworkQueue.sample`);
* afterwards ``fetch_num`` networks drawn at random train ``train_steps`` SGD steps each
  (lr 0.01, momentum 0.9, weight decay 5e-4: the reference's ``--net_decay``) on random
  batches of ``batch_size`` real images from the whole training set (:meth:`NetworkQueue.train`);
* every network keeps a running training-accuracy meter **in percent** (0-100, as torchnet's
  ``ClassErrorMeter(accuracy=True)``), which IDM uses to weight its cross-entropy term; the
  meters are reset when the caller asks (the reference resets them at every evaluation).

What a training step trains on is pluggable: ``batch_fn(model, x, y) -> (x', y')`` turns the
real batch into the batch actually trained on (ROME plugs in targeted PGD here; the meter then
records the accuracy on ``x'``). The queue is agnostic of the input space: it calls
``model(x)`` on whatever the caller passes (rome-bench passes [0,1] images to
:class:`~rome_bench.models.Classifier` models, which normalize internally).

All randomness (network initialisation, sampling, batch draws) comes from one private
generator seeded at construction; :meth:`NetworkQueue.state_dict` captures everything
(weights, momentum buffers, meters, generator) as plain tensors, ints and lists so a
distillation can checkpoint and resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BatchFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)`` without disturbing the global RNG state.

    >>> a = seeded(lambda: nn.Linear(2, 2), 3); b = seeded(lambda: nn.Linear(2, 2), 3)
    >>> torch.equal(a.weight, b.weight)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def draw_seed(generator: torch.Generator) -> int:
    """A fresh non-negative int seed from ``generator``."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


class AccuracyMeter:
    """Running top-1 accuracy in percent over everything added since the last reset.

    >>> m = AccuracyMeter(); m.add(torch.tensor([[2., 0.], [0., 1.]]), torch.tensor([0, 0]))
    >>> m.value, m.count
    (50.0, 2)
    """

    def __init__(self) -> None:
        self.correct = 0
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += int((logits.detach().argmax(1) == labels).sum())
        self.count += int(labels.shape[0])

    def reset(self) -> None:
        self.correct = 0
        self.count = 0

    @property
    def value(self) -> float:
        """Accuracy in percent; 0.0 while empty (the reference's weight for an untrained net)."""
        return 100.0 * self.correct / self.count if self.count else 0.0


class QueuedNet:
    """One queue entry: the model, its own persistent optimizer and its accuracy meter."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                 uid: int) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.meter = AccuracyMeter()
        self.uid = uid  # creation order: 0, 1, 2, ... (oldest has the smallest)
        self.steps = 0  # SGD steps taken so far

    @property
    def accuracy(self) -> float:
        """Running training accuracy in percent (0 while the meter is empty)."""
        return self.meter.value

    def __repr__(self) -> str:
        return f"QueuedNet(uid={self.uid}, steps={self.steps}, accuracy={self.accuracy:.1f}%)"


class NetworkQueue:
    """A FIFO queue of partially trained networks (IDM), with per-network accuracy meters.

    Args:
        build: makes a new randomly initialised network (called under a seeded RNG).
        capacity: maximum queue length (``net_num``, 100 in the reference).
        initial: networks created at construction (3 in the reference).
        push_every: :meth:`step` pushes new networks when ``it % push_every == 0``
            (``net_generate_interval``: 30, or 5 for IPC 1).
        push_num: networks pushed each time (``net_push_num``, 1).
        fetch_num: networks trained per :meth:`train` call (``fetch_net_num``, 2).
        train_steps: SGD steps per trained network (``model_train_steps``, 10).
        batch_size: real images per step (``trained_bs``, 256).
        lr, momentum, weight_decay: each network's SGD (0.01, 0.9, 5e-4).
        batch_fn: ``(model, x, y) -> (x', y')``, the batch actually trained on (default: as is).
        seed: seeds the private generator.
        device: where new networks live.
        max_batch: images per forward/backward pass within a step (gradients are accumulated,
            so the step is the same as one pass over the batch); 0: 4096 on GPUs, 64 on CPUs,
            where smaller passes run faster per image.

    >>> q = NetworkQueue(lambda: nn.Linear(4, 3), capacity=2, initial=1, push_every=1, seed=0)
    >>> q.step(0); q.step(1); len(q), [n.uid for n in q.nets]   # oldest (uid 0) dropped
    (2, [1, 2])
    """

    def __init__(self, build: Callable[[], nn.Module], *, capacity: int = 100, initial: int = 3,
                 push_every: int = 30, push_num: int = 1, fetch_num: int = 2,
                 train_steps: int = 10, batch_size: int = 256, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_fn: BatchFn | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", max_batch: int = 0) -> None:
        if capacity < 1 or push_every < 1 or push_num < 0 or fetch_num < 0 or train_steps < 0:
            raise ValueError("capacity and push_every must be >= 1; push_num, fetch_num and "
                             "train_steps >= 0")
        self.build = build
        self.capacity = capacity
        self.push_every = push_every
        self.push_num = push_num
        self.fetch_num = fetch_num
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.batch_fn = batch_fn
        self.device = device
        self.max_batch = max_batch or (4096 if torch.device(device).type == "cuda" else 64)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.nets: list[QueuedNet] = []
        self._next_uid = 0
        self.push(initial)

    def __len__(self) -> int:
        return len(self.nets)

    # -- membership -------------------------------------------------------------------------
    def _new_net(self) -> QueuedNet:
        model = seeded(self.build, draw_seed(self.generator)).to(self.device)
        net = QueuedNet(model, self.lr, self.momentum, self.weight_decay, self._next_uid)
        self._next_uid += 1
        return net

    def push(self, n: int = 1) -> None:
        """Append ``n`` new random networks, dropping the oldest whenever the queue is full."""
        for _ in range(n):
            if len(self.nets) >= self.capacity:
                self.nets.pop(0)
            self.nets.append(self._new_net())

    def step(self, it: int) -> None:
        """The start-of-iteration schedule: push ``push_num`` networks when ``it % push_every == 0``."""
        if it % self.push_every == 0:
            self.push(self.push_num)

    def sample(self, k: int = 1) -> list[QueuedNet]:
        """``k`` distinct networks chosen uniformly at random."""
        order = torch.randperm(len(self.nets), generator=self.generator)[:k]
        return [self.nets[int(i)] for i in order]

    def reset_meters(self) -> None:
        """Empty every network's accuracy meter (the reference does this at each evaluation)."""
        for net in self.nets:
            net.meter.reset()

    # -- training ---------------------------------------------------------------------------
    def train_net(self, net: QueuedNet, images: torch.Tensor, labels: torch.Tensor,
                  steps: int | None = None) -> None:
        """``steps`` SGD steps of ``net`` on random batches of ``images``/``labels``.

        Each batch is ``batch_size`` distinct indices drawn uniformly from the whole set,
        passed through ``batch_fn``; cross-entropy; the meter records the batch's logits.
        """
        model = net.model
        n = images.shape[0]
        for _ in range(self.train_steps if steps is None else steps):
            idx = torch.randperm(n, generator=self.generator)[:self.batch_size].to(images.device)
            x, y = images[idx].to(self.device), labels[idx].to(self.device)
            if self.batch_fn is not None:
                x, y = self.batch_fn(model, x, y)
            model.train()
            net.optimizer.zero_grad(set_to_none=True)
            for i in range(0, x.shape[0], self.max_batch):  # mean CE over the whole batch
                logits = model(x[i:i + self.max_batch])
                target = y[i:i + self.max_batch]
                loss = F.cross_entropy(logits, target, reduction="sum") / x.shape[0]
                loss.backward()
                net.meter.add(logits, target)
            net.optimizer.step()
            net.steps += 1

    def train(self, images: torch.Tensor, labels: torch.Tensor) -> list[QueuedNet]:
        """Train ``fetch_num`` randomly chosen networks ``train_steps`` steps each; returns them."""
        chosen = self.sample(self.fetch_num)
        for net in chosen:
            self.train_net(net, images, labels)
        return chosen

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: weights, momentum buffers, meters, generator."""
        nets = []
        for net in self.nets:
            params = list(net.model.parameters())
            momentum = []
            for p in params:
                buf = net.optimizer.state.get(p, {}).get("momentum_buffer")
                momentum.append(buf.detach().cpu().clone() if buf is not None else torch.empty(0))
            nets.append({"weights": {k: v.detach().cpu().clone()
                                     for k, v in net.model.state_dict().items()},
                         "momentum": momentum, "correct": net.meter.correct,
                         "count": net.meter.count, "uid": net.uid, "steps": net.steps})
        return {"nets": nets, "next_uid": self._next_uid, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (networks are rebuilt with ``build`` then overwritten)."""
        self.nets = []
        for entry in state["nets"]:
            model = seeded(self.build, 0).to(self.device)  # weights are overwritten below
            model.load_state_dict(entry["weights"])
            net = QueuedNet(model, self.lr, self.momentum, self.weight_decay, int(entry["uid"]))
            for p, buf in zip(model.parameters(), entry["momentum"], strict=True):
                if buf.numel():
                    net.optimizer.state[p]["momentum_buffer"] = buf.to(p.device).clone()
            net.meter.correct, net.meter.count = int(entry["correct"]), int(entry["count"])
            net.steps = int(entry["steps"])
            self.nets.append(net)
        self._next_uid = int(state["next_uid"])
        self.generator.set_state(state["generator"])
