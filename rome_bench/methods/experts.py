"""Expert trajectories for trajectory matching (MTT, DATM) and their cached buffer.

An *expert* is a ConvNet trained on the real training set the way MTT's ``buffer.py`` does it:
a fresh random network, SGD with lr 0.01, no momentum, no weight decay, batch 256, shuffled
every epoch, plain cross-entropy on hard labels and DSA on every batch with per-image random
parameters (the reference's ``seed=-1`` mode). Its parameters are recorded before training and
after every epoch, so one trajectory is ``epochs + 1`` snapshots. With ``flat=True`` the
optimizer step is DATM's/FTD's GSAM (``buffer_FTD.py``: adaptive perturbation with rho 0.01,
gradient decomposition with alpha 0.3) for the "flat" trajectories DATM distils from.

Experts see the images in *network space*, the tensor the network itself receives:
``Normalize(mean, std)`` of the [0,1] pixels, followed by the ZCA whitening of
:mod:`rome_bench.methods.zca` when ``zca`` is on. This reproduces the reference, which trains experts
on normalized (``_NO_ZCA``) or on ZCA-whitened tensors and applies DSA to those tensors (we use
:meth:`DSA.augment_normalized`, which is the reference transform on an already-transformed batch).

Storage: each snapshot is one flat float32 vector of the parameters in module order (conv
weight OIHW, bias, norm weight and bias per block, then the classifier's (out, in) weight and
bias), so one expert is one ``(epochs + 1, P)`` tensor, written atomically to its own file
``<cache>/experts/<key>/expert_NNN.pt``. ``key`` is a content hash of every setting that
determines the trajectories (dataset and a fingerprint of its training images, which stands in
for ``data_root``, number of experts, epochs, preset, seed, ZCA, architecture, optimizer, the
source of the functions here that compute trajectory values and the code of
:mod:`rome_bench.data.augment` and :mod:`rome_bench.methods.zca`). Generation resumes per
expert: finished files are kept and only missing ones are trained. Files are memory-mapped when
read, so a 100 x 51 paper buffer (6.5 GB for CIFAR-10) is not loaded into memory at once.

Presets (:data:`EXPERT_PRESETS`): ``paper`` is the published buffer, 100 experts x 50 epochs on
the full training set (DATM: 100 epochs with GSAM); ``cpu`` and ``quick`` scale experts, epochs,
data and, for ``quick``, the width of the network, and say so in the table's comments.

>>> net = ConvNet(3, 10, width=8, depth=1)
>>> flat = flatten_params(net)
>>> flat.shape
torch.Size([20730])
>>> x = torch.rand(2, 3, 32, 32)
>>> torch.allclose(functional_forward(net, flat, x), net(x))
True
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from rome_bench.core.cache import Cache, CorruptEntry, code_version, content_key, read_cached
from rome_bench.core.storage import atomic_torch_save, atomic_write_json, file_lock, load_tensor_file
from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DATASETS, DatasetSpec, ImageSet, class_balanced_indices, load_dataset
from rome_bench.methods import zca as zca_mod
from rome_bench.models.convnet import ARCHS, ConvNet, LinearTransform, Normalize

# Expert buffers per preset. "paper": MTT's README buffer (buffer.py --train_epochs=50
# --num_experts=100, lr_teacher 0.01, batch 256, DSA); DATM's paper buffer is the same with
# 100 epochs and GSAM (flat=True), selected by DATM's own budget table.
# "cpu" scales: 5 experts x 12 epochs on a class-balanced 5,000-image subset (500 per class)
# instead of 100 x 50 on 50,000, at batch 64 instead of 256 (78 steps per epoch instead of 20,
# for the reason given under "quick"); network, optimizer and DSA unchanged.
# "quick" scales: 2 experts x 10 epochs on the embedded 2,000-image subset, with ConvNet width 32
# (convnet-w32) instead of 128 so that the unrolled student steps fit a CPU budget of seconds,
# and batch 32 instead of 256: an epoch of 2,000 images is then 63 SGD steps (CIFAR-10's 50,000
# images give 196 at batch 256), so that the experts reach ~35-40% test accuracy and their
# logits are informative enough for DATM's soft labels (at batch 256 they stay near 20% with
# almost uniform softmax outputs).
EXPERT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"num_experts": 100, "epochs": 50, "arch": "convnet", "images_per_class": None,
              "batch_size": 256},
    "cpu": {"num_experts": 5, "epochs": 12, "arch": "convnet", "images_per_class": 500,
            "batch_size": 64},
    "quick": {"num_experts": 2, "epochs": 10, "arch": "convnet-w32", "images_per_class": None,
              "batch_size": 32},
}


@dataclass(frozen=True)
class ExpertSettings:
    """Everything that determines an expert buffer (and therefore its cache key).

    Attributes:
        dataset: registered dataset name (its normalization constants come from the spec).
        num_experts, epochs: buffer size; each expert has ``epochs + 1`` snapshots.
        zca: train in ZCA-whitened space (kornia eps 0.1 fitted on the training set).
        seed: base seed; expert ``i`` draws its init, batch order and DSA from it and ``i``.
        preset: the preset that asked for the buffer (part of the key).
        arch: registered ConvNet architecture of the experts (and of the students).
        images_per_class: train on a class-balanced subset (None = all training images).
        lr, batch_size: SGD learning rate and batch (momentum and weight decay are 0).
        flat: GSAM steps (DATM's FTD buffer) instead of plain SGD steps.
        rho, alpha: GSAM's perturbation radius and decomposition coefficient.
    """

    dataset: str
    num_experts: int
    epochs: int
    zca: bool = True
    seed: int = 0
    preset: str = "quick"
    arch: str = "convnet"
    images_per_class: int | None = None
    lr: float = 0.01
    batch_size: int = 256
    flat: bool = False
    rho: float = 0.01
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if self.num_experts <= 0 or self.epochs <= 0:
            raise ValueError(f"an expert buffer needs num_experts > 0 and epochs > 0, got "
                             f"{self.num_experts} x {self.epochs}")
        ARCHS.get(self.arch)

    @classmethod
    def from_params(cls, dataset: str, params: dict[str, Any], *, seed: int,
                    preset: str) -> ExpertSettings:
        """Settings from a method's resolved budget (keys prefixed ``buffer_``, plus ``zca``)."""
        base = dict(EXPERT_PRESETS.get(preset, EXPERT_PRESETS["paper"]))
        names = {f.name for f in fields(cls)}
        for k, v in params.items():
            if k.startswith("buffer_") and k[7:] in names:
                base[k[7:]] = v
        return cls(dataset=dataset, zca=bool(params.get("zca", True)), seed=seed, preset=preset,
                   **{k: v for k, v in base.items() if k in names and k not in ("dataset", "zca")})


# -- flat parameter vectors --------------------------------------------------------------------
def param_layout(net: nn.Module) -> list[tuple[str, torch.Size]]:
    """(name, shape) of every parameter in module order: the layout of a flat vector."""
    return [(name, p.shape) for name, p in net.named_parameters()]


def flatten_params(net: nn.Module) -> torch.Tensor:
    """All parameters of ``net`` as one detached float32 vector in module order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).float()


def unflatten_params(flat: torch.Tensor, net: nn.Module) -> dict[str, torch.Tensor]:
    """Views of ``flat`` shaped like ``net``'s parameters, keyed by name (gradients flow)."""
    layout = param_layout(net)
    total = sum(shape.numel() for _, shape in layout)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat vector has shape {tuple(flat.shape)}, the network {total} values")
    out, i = {}, 0
    for name, shape in layout:
        n = shape.numel()
        out[name] = flat[i:i + n].view(shape)
        i += n
    return out


def load_flat_params(net: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy ``flat`` into ``net``'s parameters in place; returns ``net``."""
    with torch.no_grad():
        for p, v in zip(net.parameters(), unflatten_params(flat, net).values()):
            p.copy_(v)
    return net


def functional_forward(net: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with the parameters taken from ``flat`` (differentiable in both).

    The module's own parameters are left untouched (``torch.func.functional_call``), so the
    same template network serves every unrolled student step.
    """
    return functional_call(net, unflatten_params(flat, net), (x,))


def build_expert_net(settings: ExpertSettings, spec: DatasetSpec) -> ConvNet:
    """An untrained network of the buffer's architecture (seed the global RNG before calling)."""
    arch = ARCHS.get(settings.arch)
    return ConvNet(spec.channels, spec.num_classes, arch.width, arch.depth, arch.norm,
                   spec.image_size)


# -- data in network space ---------------------------------------------------------------------
def data_fingerprint(train: ImageSet) -> str:
    """A content hash of the training images and labels (the data part of cache keys)."""
    h = hashlib.sha1()
    h.update(str((tuple(train.images.shape), train.num_classes, train.name)).encode())
    h.update(train.labels.cpu().numpy().tobytes())
    h.update(train.images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def compute_tag(device: str | torch.device = "cpu") -> str:
    """What besides settings, data and code changes a buffer or a whitening: the device type,
    and on a CPU the torch thread count of this process (float sums are split across threads,
    so 1 and 2 threads train different experts). The same rule as a run plan's compute key, so
    a ``--threads 2`` run never reuses a buffer trained with one thread."""
    kind = torch.device(device).type
    return f"cpu/{torch.get_num_threads()} threads" if kind == "cpu" else kind


def get_whitening(train: ImageSet, spec: DatasetSpec, cache: Cache | None = None,
                  eps: float = zca_mod.DEFAULT_EPS, fingerprint: str | None = None
                  ) -> LinearTransform:
    """ZCA fitted on ``train`` (after ``Normalize``), cached by data, eps and code."""
    cache = cache or Cache()
    key = content_key(stage="zca", data=fingerprint or data_fingerprint(train), eps=eps,
                      mean=spec.mean, std=spec.std, code=code_version(zca_mod),
                      compute=compute_tag("cpu"))  # fitted on the CPU
    path = cache.path("zca", key, ".pt")
    dim = spec.channels * math.prod(_pair(spec.image_size))

    def load(p: Path) -> LinearTransform:
        obj = load_tensor_file(p, "cached ZCA whitening")
        matrix, mean = (obj.get("matrix"), obj.get("mean")) if isinstance(obj, dict) else (None, None)
        if not (isinstance(matrix, torch.Tensor) and isinstance(mean, torch.Tensor)
                and matrix.shape == (dim, dim) and mean.numel() == dim
                and torch.isfinite(matrix).all() and torch.isfinite(mean).all()):
            raise CorruptEntry(f"not a finite {dim}x{dim} whitening with its mean")
        return LinearTransform(matrix, mean)

    cached = read_cached(path, load, "ZCA whitening")
    if cached is not None:
        return cached
    transform = zca_mod.fit_zca(train.images, eps, mean=spec.mean, std=spec.std)
    atomic_torch_save({"matrix": transform.matrix, "mean": transform.offset}, path)
    return transform


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


@torch.no_grad()
def to_network_space(images: torch.Tensor, spec: DatasetSpec,
                     whitening: nn.Module | None = None, batch_size: int = 1000) -> torch.Tensor:
    """[0,1] images -> what the network receives: normalized, then whitened if given."""
    norm = Normalize(spec.mean, spec.std).to(images.device)
    parts = []
    for i in range(0, images.shape[0], batch_size):
        z = norm(images[i:i + batch_size])
        parts.append(whitening(z) if whitening is not None else z)
    return torch.cat(parts)


# -- training one expert -----------------------------------------------------------------------
def _expert_seed(settings: ExpertSettings, index: int) -> int:
    return settings.seed * 1_000_003 + 7_919 * (index + 1)


def _gsam_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float,
               alpha: float) -> torch.Tensor:
    """Set ``.grad`` to GSAM's surrogate gradient on batch (x, y); returns the loss.

    Adaptive SAM ascent ``e = rho * g * w^2 / || |w| * g ||``, gradient ``g'`` at ``w + e``, then
    ``g' - alpha * (g - proj_{g'} g)`` (the component of ``g`` orthogonal to ``g'``).
    """
    params = [p for p in net.parameters()]
    loss = F.cross_entropy(net(x), y)
    g = torch.autograd.grad(loss, params)
    with torch.no_grad():
        norm = torch.stack([(p.abs() * gi).norm() for p, gi in zip(params, g)]).norm()
        scale = rho / (norm + 1e-12)
        eps = [gi * p * p * scale for p, gi in zip(params, g)]
        for p, e in zip(params, eps):
            p.add_(e)
    g2 = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
        inner = sum((a * b).sum() for a, b in zip(g, g2))
        n1 = torch.stack([a.norm() for a in g]).norm()
        n2 = torch.stack([b.norm() for b in g2]).norm()
        cosine = inner / (n1 * n2 + 1e-12)
        for p, a, b in zip(params, g, g2):
            vertical = a - cosine * n1 * b / (n2 + 1e-12)
            p.grad = b - alpha * vertical
    return loss.detach()


def train_expert(net: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: ExpertSettings,
                 augment: DSA, seed: int, progress: tqdm | None = None) -> torch.Tensor:
    """Train ``net`` in place on network-space ``x`` and return its ``(epochs + 1, P)`` trajectory."""
    order_gen = torch.Generator().manual_seed(seed + 1)
    aug_gen = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.0, weight_decay=0.0)
    snapshots = [flatten_params(net).cpu()]
    n = x.shape[0]
    net.train()
    for _ in range(settings.epochs):
        perm = torch.randperm(n, generator=order_gen).to(x.device)
        for start in range(0, n, settings.batch_size):
            idx = perm[start:start + settings.batch_size]
            xb = augment.augment_normalized(x[idx], generator=aug_gen)
            opt.zero_grad(set_to_none=True)
            if settings.flat:
                _gsam_step(net, xb, y[idx], settings.rho, settings.alpha)
            else:
                F.cross_entropy(net(xb), y[idx]).backward()
            opt.step()
        snapshots.append(flatten_params(net).cpu())
        if progress is not None:
            progress.update(1)
    return torch.stack(snapshots)


# -- the buffer --------------------------------------------------------------------------------
def trajectory_code_version() -> str:
    """Hash of the source of the functions that determine a trajectory's values.

    Narrower than the module's file hash on purpose: a paper buffer costs GPU hours, so
    editing documentation or unrelated helpers here must not invalidate it.
    """
    parts = [inspect.getsource(fn) for fn in _TRAJECTORY_FUNCTIONS]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def buffer_key(settings: ExpertSettings, fingerprint: str, compute: str | None = None) -> str:
    """The cache key of a buffer: every setting, the data, the code and the compute
    (:func:`compute_tag`, by default this process's on the CPU) that produce it."""
    return content_key(stage="experts", settings=asdict(settings), data=fingerprint,
                       code=trajectory_code_version(), dsa_code=code_version(DSA),
                       zca_code=code_version(zca_mod) if settings.zca else "",
                       compute=compute or compute_tag("cpu"))


def buffer_folder(settings: ExpertSettings, fingerprint: str, cache: Cache | None = None,
                  compute: str | None = None) -> Path:
    cache = cache or Cache()
    folder = cache.root / "experts" / buffer_key(settings, fingerprint, compute)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def get_experts(train: ImageSet, settings: ExpertSettings, *, device: str | torch.device = "cpu",
                show_progress: bool = True, cache: Cache | None = None,
                whitening: LinearTransform | None = None,
                spec: DatasetSpec | None = None) -> list[torch.Tensor]:
    """The buffer's trajectories, each ``(epochs + 1, P)`` float32; missing experts are trained.

    Finished experts come from the cache (memory-mapped), so MTT, DATM and reruns share them;
    an interrupted generation resumes at the first missing expert. ``whitening`` may pass the
    ZCA already fitted on ``train`` (otherwise it is fetched from the cache or fitted);
    ``spec`` the dataset spec when ``settings.dataset`` is not a registered name.

    >>> import tempfile
    >>> mini = load_dataset("cifar10-mini", "train").subset(torch.arange(0, 2000, 100))
    >>> s = ExpertSettings("cifar10-mini", num_experts=1, epochs=1, zca=False, arch="convnet-d1")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     [e.shape for e in get_experts(mini, s, show_progress=False, cache=Cache(Path(d)))]
    [torch.Size([2, 331530])]
    """
    spec = spec or DATASETS.get(settings.dataset)
    cache = cache or Cache()
    fingerprint = data_fingerprint(train)
    folder = buffer_folder(settings, fingerprint, cache, compute_tag(device))
    paths = [folder / f"expert_{i:03d}.pt" for i in range(settings.num_experts)]
    with torch.random.fork_rng(devices=[]):  # only its size counts: leave the caller's RNG alone
        size = sum(p.numel() for p in build_expert_net(settings, spec).parameters())
    shape = (settings.epochs + 1, size)
    # a corrupt expert is set aside by read_cached (one warning line) and trained again
    found = [read_cached(p, lambda q: _load_trajectory(q, shape), "expert trajectory")
             for p in paths]
    if any(t is None for t in found):
        with file_lock(folder / ".lock"):  # another worker may be training the same buffer
            _train_missing(train, settings, paths, folder, fingerprint, spec, cache, whitening,
                           device, show_progress)
        found = [t if t is not None else _load_trajectory(p, shape) for t, p in zip(found, paths)]
    return found


def _train_missing(train: ImageSet, settings: ExpertSettings, paths: list[Path], folder: Path,
                   fingerprint: str, spec: DatasetSpec, cache: Cache,
                   whitening: LinearTransform | None, device: str | torch.device,
                   show_progress: bool) -> None:
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        atomic_write_json(folder / "settings.json", {**asdict(settings), "data": fingerprint})
        if settings.zca and whitening is None:
            whitening = get_whitening(train, spec, cache, fingerprint=fingerprint)
        data = train
        if settings.images_per_class is not None:
            data = train.subset(class_balanced_indices(train.labels, settings.images_per_class,
                                                       train.num_classes, settings.seed))
        x = to_network_space(data.images.to(device), spec,
                             whitening.to(device) if settings.zca else None)
        y = data.labels.to(device)
        augment = DSA(spec.mean, spec.std)
        total = settings.num_experts * settings.epochs
        with tqdm(total=total, initial=(settings.num_experts - len(missing)) * settings.epochs,
                  desc=f"experts {settings.dataset} x{settings.num_experts}", leave=False,
                  disable=not show_progress, dynamic_ncols=True) as bar:
            for i in missing:
                seed = _expert_seed(settings, i)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    net = build_expert_net(settings, spec).to(device)
                trajectory = train_expert(net, x, y, settings, augment, seed, bar)
                atomic_torch_save({"trajectory": trajectory.contiguous(),
                                   "expert": i, "key": folder.name}, paths[i])


def _load_trajectory(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """The ``(epochs + 1, P)`` float32 trajectory in ``path`` (memory-mapped, so not scanned
    for NaN: a paper buffer holds gigabytes); :class:`CorruptEntry` if it has another shape."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # fall back to the checked loader for a clear error message
        obj = load_tensor_file(path, "expert trajectory")
    trajectory = obj.get("trajectory") if isinstance(obj, dict) else None
    if not isinstance(trajectory, torch.Tensor):
        raise CorruptEntry(f"{path}: no 'trajectory' tensor")
    if tuple(trajectory.shape) != shape or trajectory.dtype != torch.float32:
        raise CorruptEntry(f"{path}: trajectory of shape {tuple(trajectory.shape)} "
                           f"{trajectory.dtype}, expected {shape} float32")
    return trajectory


def generate_experts(dataset_name: str, data_root: str | Path | None = None,
                     num_experts: int | None = None, epochs: int | None = None,
                     preset: str = "quick", seed: int = 0, device: str | None = None,
                     show_progress: bool = True, *, zca: bool = True, flat: bool = False,
                     arch: str | None = None, images_per_class: int | None | str = "preset",
                     download: bool = False) -> list[torch.Tensor]:
    """Build (or complete) an expert buffer from the command line; returns its trajectories.

    Unset sizes come from :data:`EXPERT_PRESETS` for ``preset`` (``flat=True`` at ``paper``:
    DATM's 100 epochs). The buffer lands where MTT and DATM look for it when their budgets ask
    for the same settings (``flat=True`` is DATM's paper buffer; at ``cpu``/``quick`` both
    methods share the plain-SGD buffer).

    >>> # generate_experts("cifar10", "~/data/cifar10", preset="paper", device="cuda")
    """
    base = EXPERT_PRESETS[preset] if preset in EXPERT_PRESETS else EXPERT_PRESETS["paper"]
    default_epochs = 100 if flat and preset == "paper" else base["epochs"]  # DATM's FTD buffer
    settings = ExpertSettings(
        dataset=DATASETS.entry(dataset_name).name, num_experts=num_experts or base["num_experts"],
        epochs=epochs or default_epochs, zca=zca, seed=seed, preset=preset,
        arch=arch or base["arch"], flat=flat, batch_size=base["batch_size"],
        images_per_class=base["images_per_class"] if images_per_class == "preset"
        else images_per_class)
    train = load_dataset(settings.dataset, "train", data_root, download)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return get_experts(train, settings, device=device, show_progress=show_progress)


def expert_accuracy(trajectory: torch.Tensor, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    snapshot: int = -1) -> float:
    """Accuracy (%) of one snapshot on network-space ``x`` (a sanity check for buffers)."""
    with torch.no_grad():
        w = trajectory[snapshot].to(x.device)
        pred = torch.cat([functional_forward(net, w, x[i:i + 500]).argmax(1)
                          for i in range(0, x.shape[0], 500)])
    return 100.0 * float((pred == y).float().mean())


# Bound at import, so that the key does not change when a test wraps one of them.
_TRAJECTORY_FUNCTIONS = (get_experts, train_expert, _gsam_step, _expert_seed, build_expert_net,
                         to_network_space, flatten_params)

__all__: Sequence[str] = (
    "EXPERT_PRESETS", "ExpertSettings", "build_expert_net", "buffer_key", "compute_tag",
    "data_fingerprint",
    "expert_accuracy", "flatten_params", "functional_forward", "generate_experts", "get_experts",
    "get_whitening", "load_flat_params", "param_layout", "to_network_space", "train_expert",
    "trajectory_code_version", "unflatten_params")
