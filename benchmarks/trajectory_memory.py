"""Peak memory of one MTT/DATM iteration per IPC (the unrolled student keeps ``syn_steps`` graphs).

Each IPC is measured in a fresh subprocess so that the peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which can only grow) belongs to that IPC alone.
The child builds the preset's student network and a synthetic expert trajectory (random
initial weights plus small steps: memory does not depend on the values), runs one full
iteration of the budget of ``mtt`` (or ``datm``) at that preset and IPC (``syn_steps`` unrolled
steps on DSA-augmented ``batch_syn`` minibatches, the matching loss, the backward pass into the
images and the lr, and the optimizer steps) and reports the resident memory before and at the
peak. On CUDA it reports ``torch.cuda.max_memory_allocated`` as well.

Usage::

    python benchmarks/trajectory_memory.py                     # quick preset, IPC 1 and 10
    python benchmarks/trajectory_memory.py --preset cpu --ipc 1,10 --method datm
    python benchmarks/trajectory_memory.py --preset paper --ipc 1,10,50 --device cuda

The exit status is 1 when a ``quick`` measurement exceeds the 4 GiB limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LIMIT_GIB = {"quick": 4.0}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(method: str, preset: str, ipc: int, device: str) -> dict:
    """One iteration in this process; returns sizes and timings."""
    import torch
    from rome_bench.baselines.mtt import Trajectories, matching_loss, unrolled_student

    from rome_bench.data.datasets import DATASETS
    from rome_bench.methods.contract import METHODS, resolve_budget
    from rome_bench.methods.experts import ExpertSettings, build_expert_net, flatten_params

    params = resolve_budget(METHODS.entry(method).meta["budgets"], preset, ipc)
    spec = DATASETS.get("cifar10-mini" if preset == "quick" else "cifar10")
    settings = ExpertSettings.from_params(spec.name, params, seed=0, preset=preset)
    torch.manual_seed(0)
    net = build_expert_net(settings, spec).to(device).train()
    w0 = flatten_params(net).to(device)
    target = w0 + 0.01 * torch.randn_like(w0)
    n = ipc * spec.num_classes
    images = torch.randn(n, spec.channels, *spec.image_size, device=device, requires_grad=True)
    if method == "datm":
        labels = torch.randn(n, spec.num_classes, device=device, requires_grad=True)
        extra = [labels]
    else:
        labels = torch.arange(spec.num_classes, device=device).repeat_interleave(ipc)
        extra = []
    syn_lr = torch.tensor(float(params["lr_teacher"]), device=device, requires_grad=True)
    opts = [torch.optim.SGD([t], lr=1.0, momentum=0.5) for t in [images, syn_lr, *extra]]
    from rome_bench.data.augment import DSA

    traj = Trajectories([], settings, net, None, DSA(spec.mean, spec.std),
                        torch.tensor(spec.mean).view(1, -1, 1, 1),
                        torch.tensor(spec.std).view(1, -1, 1, 1), "", spec, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _current_rss_gib()
    start = time.perf_counter()
    student = unrolled_student(traj, images, labels, syn_lr, w0, int(params["syn_steps"]),
                               params.get("batch_syn"), torch.Generator().manual_seed(0),
                               torch.Generator().manual_seed(1))
    loss = matching_loss(student, w0, target)
    loss.backward()
    for opt in opts:
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"method": method, "preset": preset, "ipc": ipc, "n": n,
           "batch_syn": params.get("batch_syn") or n, "syn_steps": int(params["syn_steps"]),
           "arch": settings.arch, "params": int(w0.numel()), "rss_before_gib": round(before, 3),
           "peak_rss_gib": round(_rss_gib(), 3), "seconds": round(seconds, 2)}
    if device.startswith("cuda"):
        out["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--method", default="mtt", choices=["mtt", "datm"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.method, args.preset, args.child, args.device)))
        return 0
    rows = []
    for ipc in [int(v) for v in args.ipc.split(",")]:
        res = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--method",
                              args.method, "--device", args.device, "--child", str(ipc)],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    limit = LIMIT_GIB.get(args.preset)
    header = ("method", "preset", "ipc", "n", "batch_syn", "syn_steps", "arch", "params",
              "rss_before_gib", "peak_rss_gib", "seconds")
    cuda = any("cuda_peak_gib" in r for r in rows)
    cols = header + (("cuda_peak_gib",) if cuda else ())
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if limit is not None:
        worst = max(r["peak_rss_gib"] for r in rows)
        print(f"peak {worst:.2f} GiB vs the {args.preset} limit of {limit:.0f} GiB: "
              f"{'OK' if worst <= limit else 'OVER'}")
        return 0 if worst <= limit else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
