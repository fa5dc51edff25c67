"""Fuzzed inputs for every file format rome-bench accepts from users (issue 22, item 5).

Distilled sets (rome-bench's own ``.pt``, DC/DSA/DM/BEARD's ``{'data': ...}``, MTT/DATM
folders), ``.pth`` checkpoints, npz shards, BEARD logs and records files are fed arbitrary bytes
and mutated valid files (truncated, bytes flipped, tensors of the wrong shape or dtype, NaN,
missing keys, fields of the wrong type). Each load must either fail with a
:class:`RomeBenchError` (the CLI prints it as one line) or return something that is really
valid (checked by the ``assert_*`` helpers); any other exception, or a hang, fails the test.
Settings (derandomized, bounded) are in ``tests/fuzzing.py``.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import flip_bytes, fuzz_settings, no_hang
from hypothesis import given
from hypothesis import strategies as st

from rome_bench.core.records import MODES, SETTINGS, Record, RecordStore, read_records
from rome_bench.core.registry import RomeBenchError
from rome_bench.data.datasets import DATASETS, ImageSet, load_dataset
from rome_bench.data.distilled import DistilledSet, import_distilled
from rome_bench.models.convnet import build_model, load_dc_checkpoint
from rome_bench.reporting.beard import LINE, parse_beard_logs
from rome_bench.reporting.metrics import metric_table

SPEC = DATASETS.get("cifar10")
N = SPEC.num_classes  # one image per class keeps every example small


def loads_cleanly(load, *args, **kwargs):
    """``load(*args)``, or None when it refused the input with a RomeBenchError."""
    with no_hang():
        try:
            return load(*args, **kwargs)
        except RomeBenchError as exc:
            assert str(exc).strip(), "an error without a message"
            return None


# -- distilled sets -----------------------------------------------------------------------
def _images() -> torch.Tensor:
    return torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _set_first(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[0] = value
    return x


IMAGE_MUTATIONS = {
    "valid": lambda x: x,
    "outside [0,1]": lambda x: x * 3 - 1,  # allowed: synthetic images are never clamped
    "float64": lambda x: x.double(),
    "float16": lambda x: x.half(),
    "rank 3": lambda x: x[0],
    "rank 5": lambda x: x.unsqueeze(0),
    "1 channel": lambda x: x[:, :1],
    "4 channels": lambda x: torch.cat([x, x[:, :1]], 1),
    "16x16": lambda x: x[:, :, :16, :16],
    "channels last": lambda x: x.permute(0, 2, 3, 1),
    "empty": lambda x: x[:0],
    "uint8": lambda x: (x * 255).to(torch.uint8),
    "int64": lambda x: (x * 255).long(),
    "bool": lambda x: x > 0.5,
    "complex": lambda x: x.to(torch.complex64),
    "NaN": lambda x: _set_first(x, math.nan),
    "inf": lambda x: _set_first(x, math.inf),
    "-inf": lambda x: _set_first(x, -math.inf),
    "scalar": lambda x: torch.tensor(1.0),
    "not a tensor": lambda x: "images",
    "None": lambda x: None,
    "number": lambda x: 3,
}

LABEL_MUTATIONS = {
    "valid": lambda y: y,
    "soft logits": lambda y: torch.randn(N, N),
    "soft, 7 columns": lambda y: torch.randn(N, 7),
    "soft NaN": lambda y: _set_first(torch.randn(N, N), math.nan),
    "soft int": lambda y: torch.eye(N, dtype=torch.long),
    "one short": lambda y: y[:-1],
    "one more": lambda y: torch.cat([y, y[:1]]),
    "column": lambda y: y.view(-1, 1),
    "rank 3": lambda y: y.view(-1, 1, 1),
    "float": lambda y: y.float(),
    "float NaN": lambda y: _set_first(y.float(), math.nan),
    "negative": lambda y: y - 1,
    "too large": lambda y: y + 1,
    "int8": lambda y: y.to(torch.int8),
    "int32": lambda y: y.int(),
    "uint8": lambda y: y.to(torch.uint8),
    "bool": lambda y: y % 2 == 0,
    "complex": lambda y: y.to(torch.complex64),
    "scalar": lambda y: torch.tensor(3),
    "empty": lambda y: y[:0],
    "list": lambda y: y.tolist(),
    "not a tensor": lambda y: "labels",
    "None": lambda y: None,
}

META_VALUES = [{}, {"lr": 0.01}, {"method": "dc", "ipc": 1}, None, [], [("a", 1)], "meta", 3,
               torch.zeros(2), {"nested": {"a": [1, 2]}}]


def assert_valid_set(s: DistilledSet, num_classes: int | None = N, channels: int | None = 3) -> None:
    """What every consumer of a loaded set relies on (retraining, tables, figures)."""
    assert isinstance(s, DistilledSet) and isinstance(s.meta, dict)
    x, y = s.images, s.labels
    assert isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] > 0
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    if channels is not None:
        assert tuple(x.shape[1:]) == (channels, 32, 32)
    assert isinstance(y, torch.Tensor) and y.shape[0] == x.shape[0]
    if y.dim() == 2:
        assert y.is_floating_point() and bool(torch.isfinite(y).all())
        assert num_classes is None or y.shape[1] == num_classes
    else:
        assert y.dim() == 1 and y.dtype == torch.int64
        assert int(y.min()) >= 0 and (num_classes is None or int(y.max()) < num_classes)
    assert s.ipc >= 1 and s.hard_labels.shape == (x.shape[0],)


def _mutated_pair(image_mut: str, label_mut: str):
    return IMAGE_MUTATIONS[image_mut](_images()), LABEL_MUTATIONS[label_mut](torch.arange(N))


mutation = st.sampled_from


@fuzz_settings(60)
@given(image_mut=mutation(list(IMAGE_MUTATIONS)), label_mut=mutation(list(LABEL_MUTATIONS)),
       meta=mutation(range(len(META_VALUES))), drop=mutation([None, "images", "labels", "meta"]))
def test_own_format_loads_or_refuses(tmp_path, image_mut, label_mut, meta, drop):
    images, labels = _mutated_pair(image_mut, label_mut)
    obj = {"images": images, "labels": labels, "meta": META_VALUES[meta]}
    obj.pop(drop, None)
    path = tmp_path / "set.pt"
    torch.save(obj, path)
    imported = loads_cleanly(import_distilled, str(path), SPEC)
    if imported is not None:
        assert_valid_set(imported)
    loaded = loads_cleanly(DistilledSet.load, path)
    if loaded is not None:
        assert_valid_set(loaded, num_classes=None, channels=None)
    if image_mut == label_mut == "valid" and drop in (None, "meta") and meta in (0, 1, 2, 9):
        assert imported is not None and loaded is not None  # a valid file is never refused
        assert torch.equal(imported.images, images) and torch.equal(imported.labels, labels)


@fuzz_settings(60)
@given(image_mut=mutation(list(IMAGE_MUTATIONS)), label_mut=mutation(list(LABEL_MUTATIONS)),
       shape=mutation(["valid", "empty data", "data not a list", "pair of one", "pair not a list",
                       "triple"]),
       exp=mutation(["", "#0", "#1", "#-1", "#x", "#", "#0#1", "# 0", "#99999999999999999999"]))
def test_dc_format_loads_or_refuses(tmp_path, image_mut, label_mut, shape, exp):
    images, labels = _mutated_pair(image_mut, label_mut)
    data = {"valid": [[images, labels]], "empty data": [], "data not a list": images,
            "pair of one": [[images]], "pair not a list": [images],
            "triple": [[images, labels, labels]]}[shape]
    path = tmp_path / "res_DC.pt"
    torch.save({"data": data, "accs_all_exps": [0.5]}, path)
    got = loads_cleanly(import_distilled, f"{path}{exp}", SPEC)
    if got is not None:
        assert_valid_set(got)
    if image_mut == label_mut == "valid" and shape in ("valid", "triple") and exp in ("", "#0"):
        assert got is not None
        assert torch.allclose(got.images, images * torch.tensor(SPEC.std).view(1, -1, 1, 1)
                              + torch.tensor(SPEC.mean).view(1, -1, 1, 1))


LR_VALUES = {"absent": None, "valid": torch.tensor(0.01), "float": 0.01, "zero": torch.tensor(0.0),
             "negative": torch.tensor(-0.01), "NaN": torch.tensor(math.nan),
             "inf": torch.tensor(math.inf), "vector": torch.tensor([0.01, 0.02]),
             "empty": torch.zeros(0), "string": "0.01", "list": [0.01], "int": torch.tensor(1)}


@fuzz_settings(50)
@given(image_mut=mutation(list(IMAGE_MUTATIONS)), label_mut=mutation(list(LABEL_MUTATIONS)),
       lr=mutation(list(LR_VALUES)), missing=mutation([None, "images_best.pt", "labels_best.pt"]))
def test_mtt_folder_loads_or_refuses(tmp_path, image_mut, label_mut, lr, missing):
    images, labels = _mutated_pair(image_mut, label_mut)
    folder = tmp_path / "mtt"
    folder.mkdir(exist_ok=True)
    for name, obj in (("images_best.pt", images), ("labels_best.pt", labels),
                      ("lr_best.pt", LR_VALUES[lr])):
        (folder / name).unlink(missing_ok=True)
        if name != missing and not (name == "lr_best.pt" and lr == "absent"):
            torch.save(obj, folder / name)
    got = loads_cleanly(import_distilled, str(folder), SPEC)
    if got is not None:
        assert_valid_set(got)
        if "lr" in got.meta:
            assert isinstance(got.meta["lr"], float) and math.isfinite(got.meta["lr"])
            assert got.meta["lr"] > 0
    if image_mut == label_mut == "valid" and lr in ("absent", "valid", "float") and missing is None:
        assert got is not None


def _valid_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


VALID_SET = _valid_bytes({"images": _images(), "labels": torch.arange(N), "meta": {"lr": 0.01}})


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """``valid`` truncated, with bytes flipped, or with a slice cut out or repeated."""
    how = draw(st.sampled_from(["truncate", "flip", "cut", "repeat", "prefix"]))
    n = len(valid)
    a = draw(st.integers(0, n - 1))
    b = draw(st.integers(a, min(n, a + 4096)))
    if how == "truncate":
        return valid[:a]
    if how == "flip":
        positions = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
        return flip_bytes(valid, positions, draw(st.integers(1, 255)))
    if how == "cut":
        return valid[:a] + valid[b:]
    if how == "repeat":
        return valid[:b] + valid[a:]
    return draw(st.binary(max_size=64)) + valid


DAMAGED_PICKLE = "ignore:Detected pickle protocol:UserWarning"  # torch's note on a garbled header


@pytest.mark.filterwarnings(DAMAGED_PICKLE)
@fuzz_settings(60)
@given(data=st.one_of(st.binary(max_size=2048), damaged(VALID_SET)))
def test_damaged_distilled_file_loads_or_refuses(tmp_path, data):
    path = tmp_path / "set.pt"
    path.write_bytes(data)
    got = loads_cleanly(import_distilled, str(path), SPEC)
    if got is not None:
        assert_valid_set(got)
    got = loads_cleanly(DistilledSet.load, path)
    if got is not None:
        assert_valid_set(got, num_classes=None, channels=None)


# -- checkpoints --------------------------------------------------------------------------
ARCH = "convnet-w32"  # a small net keeps each example cheap


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(ARCH, num_classes=N).net.state_dict()


STATE_KEYS = sorted(_state())


def _mutate_state(state: dict, how: str, key: str):
    state = dict(state)
    if how == "drop key":
        del state[key]
    elif how == "extra key":
        state["extra.weight"] = torch.zeros(1)
    elif how == "wrong shape":
        state[key] = torch.zeros(*state[key].shape, 2)
    elif how == "transposed":
        state[key] = state[key].T if state[key].dim() == 2 else state[key].flip(0)[:-1]
    elif how in ("float64", "float16", "int64", "bool", "complex64"):
        state[key] = state[key].to(getattr(torch, how))
    elif how == "NaN":
        state[key] = _set_first(state[key], math.nan)
    elif how == "inf":
        state[key] = _set_first(state[key], math.inf)
    elif how == "not a tensor":
        state[key] = state[key].tolist()
    elif how == "int key":
        state[7] = state.pop(key)
    elif how == "wrapped":
        return {"state_dict": state, "epoch": 3}
    elif how == "wrapped, not a dict":
        return {"state_dict": [state], "epoch": 3}
    elif how == "module. prefix":
        return {f"module.{k}": v for k, v in state.items()}
    elif how == "a list":
        return list(state.values())
    elif how == "a tensor":
        return state[key]
    elif how == "empty":
        return {}
    return state


STATE_MUTATIONS = ["valid", "drop key", "extra key", "wrong shape", "transposed", "float64",
                   "float16", "int64", "bool", "complex64", "NaN", "inf", "not a tensor",
                   "int key", "wrapped", "wrapped, not a dict", "module. prefix", "a list",
                   "a tensor", "empty"]


def assert_valid_model(model) -> None:
    assert not model.training
    for name, t in model.state_dict().items():
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all()), name
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, N) and bool(torch.isfinite(out).all())


def _load_checkpoint(path: Path):
    return load_dc_checkpoint(path, ARCH, num_classes=N, mean=SPEC.mean, std=SPEC.std)


@fuzz_settings(60)
@given(how=mutation(STATE_MUTATIONS), key=mutation(STATE_KEYS))
def test_checkpoint_loads_or_refuses(tmp_path, how, key):
    path = tmp_path / "model.pth"
    torch.save(_mutate_state(_state(), how, key), path)
    got = loads_cleanly(_load_checkpoint, path)
    if got is not None:
        assert_valid_model(got)
    if how in ("valid", "wrapped", "module. prefix", "float64"):
        assert got is not None


VALID_CHECKPOINT = _valid_bytes(_state())


@pytest.mark.filterwarnings(DAMAGED_PICKLE)
@fuzz_settings(40)
@given(data=st.one_of(st.binary(max_size=2048), damaged(VALID_CHECKPOINT)))
def test_damaged_checkpoint_loads_or_refuses(tmp_path, data):
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    got = loads_cleanly(_load_checkpoint, path)
    if got is not None:
        assert_valid_model(got)


# -- npz shards ---------------------------------------------------------------------------
def _pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)


X_MUTATIONS = {
    "valid": lambda x: x,
    "float32": lambda x: x.astype(np.float32) / 255,
    "int16": lambda x: x.astype(np.int16),
    "channels first": lambda x: x.transpose(0, 3, 1, 2).copy(),
    "grey": lambda x: x[..., 0],
    "16x16": lambda x: x[:, :16, :16],
    "empty": lambda x: x[:0],
    "flat": lambda x: x.reshape(-1),
    "scalar": lambda x: np.array(3, dtype=np.uint8),
    "strings": lambda x: np.array(["a"] * N),
}

Y_MUTATIONS = {
    "valid": lambda y: y,
    "uint8": lambda y: y.astype(np.uint8),
    "int32": lambda y: y.astype(np.int32),
    "column": lambda y: y.reshape(-1, 1),
    "float integral": lambda y: y.astype(np.float32),
    "float halves": lambda y: y + 0.5,
    "NaN": lambda y: np.where(y == 0, np.nan, y),
    "negative": lambda y: y - 1,
    "too large": lambda y: y + 1,
    "huge uint64": lambda y: y.astype(np.uint64) + np.uint64(2**63),
    "one short": lambda y: y[:-1],
    "bool": lambda y: y % 2 == 0,
    "complex": lambda y: y.astype(np.complex64),
    "strings": lambda y: y.astype(str),
    "bytes": lambda y: y.astype("S2"),
    "scalar": lambda y: np.array(3),
    "empty": lambda y: y[:0],
}


def assert_valid_imageset(s: ImageSet) -> None:
    assert s.images.dtype == torch.float32 and tuple(s.images.shape[1:]) == (3, 32, 32)
    assert len(s) > 0 and float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    assert s.labels.dtype == torch.int64 and s.labels.shape == (len(s),)
    assert int(s.labels.min()) >= 0 and int(s.labels.max()) < s.num_classes


@fuzz_settings(60)
@given(x_mut=mutation(list(X_MUTATIONS)), y_mut=mutation(list(Y_MUTATIONS)),
       missing=mutation([None, "x", "y"]),
       second=mutation([None, "valid", "16x16", "float32", "one label more", "string labels"]))
def test_npz_shards_load_or_refuse(tmp_path, x_mut, y_mut, missing, second):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    for old in root.glob("*.npz"):
        old.unlink()
    arrays = {"x": X_MUTATIONS[x_mut](_pixels()), "y": Y_MUTATIONS[y_mut](np.arange(N))}
    arrays.pop(missing, None)
    np.savez(root / "test_0.npz", **arrays)
    if second is not None:  # a second shard, valid or not
        x = X_MUTATIONS.get(second, X_MUTATIONS["valid"])(_pixels())
        y = {"one label more": np.arange(N + 1), "string labels": np.arange(N).astype(str)}.get(
            second, np.arange(N))
        np.savez(root / "test_1.npz", x=x, y=y)
    got = loads_cleanly(load_dataset, "cifar10", "test", root)
    if got is not None:
        assert_valid_imageset(got)
    if (x_mut == "valid" and y_mut in ("valid", "uint8", "int32", "column") and missing is None
            and second in (None, "valid")):
        assert got is not None and torch.equal(got.labels[:N], torch.arange(N))


VALID_SHARD = io.BytesIO()
np.savez(VALID_SHARD, x=_pixels(), y=np.arange(N))


@fuzz_settings(40)
@given(data=st.one_of(st.binary(max_size=2048), damaged(VALID_SHARD.getvalue())))
def test_damaged_npz_shard_loads_or_refuses(tmp_path, data):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (root / "test.npz").write_bytes(data)
    got = loads_cleanly(load_dataset, "cifar10", "test", root)
    if got is not None:
        assert_valid_imageset(got)


BATCH_LABELS = {"valid": list(range(N)), "numpy": np.arange(N), "strings": [str(i) for i in range(N)],
                "floats": [i + 0.5 for i in range(N)], "one short": list(range(N - 1)),
                "nested": [[i] for i in range(N)], "None": None, "number": 3,
                "mixed": [0, "a"] + list(range(N - 2))}


@pytest.mark.filterwarnings(DAMAGED_PICKLE)
@fuzz_settings(60)
@given(x_mut=mutation(list(X_MUTATIONS)), labels=mutation(list(BATCH_LABELS)),
       layout=mutation(["valid", "no data", "no labels", "a list", "bytes"]),
       data=st.binary(max_size=512))
def test_official_cifar_batch_loads_or_refuses(tmp_path, x_mut, labels, layout, data):
    """The official python layout (cifar-10-batches-py/test_batch), read by a restricted
    unpickler: mutated batches and arbitrary bytes."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x = X_MUTATIONS[x_mut](_pixels())
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), int(np.prod(x.shape[1:]))) if x.ndim == 4 else x
    batch = {"data": rows, "labels": BATCH_LABELS[labels], "batch_label": "test batch"}
    if layout in ("no data", "no labels"):
        del batch[layout.removeprefix("no ")]
    with open(folder / "test_batch", "wb") as f:
        if layout == "bytes":
            f.write(data)
        else:
            pickle.dump(list(batch.values()) if layout == "a list" else batch, f)
    got = loads_cleanly(load_dataset, "cifar10", "test", tmp_path / "data")
    if got is not None:
        assert_valid_imageset(got)
    if x_mut == "valid" and labels in ("valid", "numpy") and layout == "valid":
        assert got is not None and torch.equal(got.labels, torch.arange(N))


# -- BEARD logs ---------------------------------------------------------------------------
def _beard_line(attack: str, t_acc: str, u_acc: str, ipc: str = "10") -> str:
    return (f"2025-01-01 10:00:00,000 - INFO - {attack} attack on DC: final acc is:  "
            f"target_attack: {t_acc} +- 0.00, attack time is 8.10; non_target_attack: {u_acc} "
            f"+- 0.00, attack time is 8.20, dataset: CIFAR10, IPC: {ipc}, DSA:True, model: ConvNet")


BEARD_LOG = [_beard_line("Clean", "60.00", "60.00"), _beard_line("FGSM", "40.00", "30.00"),
             "2025-01-01 10:00:00,000 - INFO - epoch 3 done", _beard_line("PGD", "35.5", "20.25"),
             _beard_line("DeepFool", "60.00", "5.00")]
JUNK = ["", ".", "..", "1.2.3", "-1", "-0.5", "100.5", "1e3", "nan", "inf", "abc", "0" * 400,
        "9" * 30, " ", "+-", "٣", ";", ":", "\x00", "attack on"]


def assert_valid_records(records: list[Record]) -> None:
    """Records that tables, figures and the metrics can use, and that read back unchanged."""
    for r in records:
        assert r.mode in MODES and r.setting in SETTINGS
        assert isinstance(r.ipc, int) and r.ipc >= 0
        assert isinstance(r.accuracy, float) and 0 <= r.accuracy <= 100
        assert isinstance(r.seconds, float) and math.isfinite(r.seconds) and r.seconds >= 0
        assert isinstance(r.versions, dict)
    metric_table(records)
    metric_table(records, per_ipc=True)


@st.composite
def beard_logs(draw) -> str:
    lines = list(BEARD_LOG)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["group", "text", "cut", "drop"]))
        if how == "group":  # replace one parsed field with junk
            m = LINE.search(lines[i])
            if m:
                group = draw(st.sampled_from(sorted(LINE.groupindex)))
                a, b = m.span(group)
                lines[i] = lines[i][:a] + draw(st.sampled_from(JUNK)) + lines[i][b:]
        elif how == "text":
            lines.insert(i, draw(st.text(max_size=200)))
        elif how == "cut":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        else:
            del lines[i]
    return "\n".join(lines)


@fuzz_settings(80)
@given(text=beard_logs())
def test_beard_log_parses_or_refuses(tmp_path, text):
    path = tmp_path / "beard.log"
    path.write_text(text, encoding="utf-8")
    got = loads_cleanly(parse_beard_logs, [path])
    if got is not None:
        assert_valid_records(got)
        out = tmp_path / "imported.jsonl"
        out.unlink(missing_ok=True)
        RecordStore(out).append(got)  # what import-beard writes, `table` must read back
        assert [asdict(r) for r in read_records([out])] == [asdict(r) for r in got]
    if text == "\n".join(BEARD_LOG):
        assert got is not None and len(got) == 2 + 2 + 2 + 1


@fuzz_settings(40)
@given(data=st.binary(max_size=1024))
def test_beard_log_of_arbitrary_bytes_parses_or_refuses(tmp_path, data):
    path = tmp_path / "beard.log"
    path.write_bytes(data)
    got = loads_cleanly(parse_beard_logs, [path])
    if got is not None:
        assert_valid_records(got)


# -- records files ------------------------------------------------------------------------
TEMPLATE = asdict(Record(run_id="r", method="dc", dataset="cifar10", ipc=1, seed=0, repeat=0,
                         arch="convnet", preset="quick", threat_model="standard",
                         setting="white-box", source_model=None, mode="untargeted", attack="PGD",
                         eps=8 / 255, accuracy=12.5, seconds=1.5, n_images=9, outcomes="b080",
                         n_attacked=9, created="2026-01-01T00:00:00+00:00",
                         versions={"torch": "2.5"}))
CLEAN = {**TEMPLATE, "mode": "clean", "attack": "clean", "eps": None, "accuracy": 50.0}
WRONG_VALUES = [None, "x", "", 1, -1, 1.5, 0.0, 150.0, -3.0, True, [], [1], {}, {"a": 1}, 2**70,
                "NaN", "Infinity", "b08", "zz80"]


@st.composite
def record_files(draw) -> str:
    rows = [dict(CLEAN), dict(TEMPLATE)]
    lines = []
    for row in rows:
        for _ in range(draw(st.integers(0, 2))):
            field = draw(st.sampled_from(sorted(TEMPLATE)))
            if draw(st.booleans()):
                row[field] = draw(st.sampled_from(WRONG_VALUES))
            else:
                row.pop(field, None)
        lines.append(json.dumps(row).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))
    how = draw(st.sampled_from(["as is", "cut", "text", "list", "number", "string", "deep"]))
    if how == "cut":
        lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
    elif how == "text":
        lines.append(draw(st.text(max_size=100)))
    elif how == "deep":  # json.loads recurses once per bracket
        lines.append("[" * 100_000)
    elif how in ("list", "number", "string"):
        lines.append({"list": "[1, 2]", "number": "3", "string": json.dumps(" ".join(TEMPLATE))}[how])
    return "\n".join(lines) + "\n"


@fuzz_settings(100)
@given(text=record_files())
def test_records_file_reads_or_refuses(tmp_path, text):
    path = tmp_path / "records.jsonl"
    path.write_text(text, encoding="utf-8")
    got = loads_cleanly(read_records, [path])
    if got is not None:
        assert_valid_records(got)
        for r in got:
            if r.outcomes is not None:
                assert r.outcome_mask().shape == (r.n_images,)


@fuzz_settings(40)
@given(data=st.binary(max_size=1024))
def test_records_file_of_arbitrary_bytes_reads_or_refuses(tmp_path, data):
    path = tmp_path / "records.jsonl"
    path.write_bytes(data)
    got = loads_cleanly(read_records, [path])
    if got is not None:
        assert_valid_records(got)


@pytest.mark.parametrize("folder_content", ["nothing", "a folder named x.jsonl"])
def test_records_folder_without_files_is_refused(tmp_path, folder_content):
    if folder_content != "nothing":
        (tmp_path / "x.jsonl").mkdir()
    assert loads_cleanly(read_records, [tmp_path]) is None
