"""``file:PATH``: evaluate a distilled set saved by any supported tool (see ``distilled.py``)."""

from __future__ import annotations

from rome_bench.data.datasets import ImageSet
from rome_bench.data.distilled import DistilledSet, import_distilled
from rome_bench.methods.contract import MethodConfig, register_method


@register_method("file", description="import a distilled set: --method file:PATH[#k] "
                 "(rome-bench, DC/DSA/DM/BEARD, MTT/DATM formats)", in_all=False)
def from_file(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    path = cfg.params.get("path")
    if not path:
        raise ValueError("method 'file' needs a path: --method file:PATH")
    return import_distilled(str(path), cfg.dataset)
