"""The ``rome-bench`` command line: a thin click layer over :mod:`rome_bench.pipeline`.

Every error a user can cause ends as one line on stderr and a non-zero exit status (set
``ROME_BENCH_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import errno
import os
import sys

import click

from rome_bench.core.registry import RomeBenchError

EXIT_USAGE = 2
EXIT_ERROR = 1


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"rome-bench: error: {message}", err=True)
    sys.exit(code)


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the path it concerns first, then the reason and errno name.

    >>> os_error_message(OSError(30, "Read-only file system", "/out/records.jsonl"))
    '/out/records.jsonl: read-only file system (EROFS)'
    """
    reason = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    reason = reason[:1].lower() + reason[1:]
    code = errno.errorcode.get(exc.errno or 0)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{reason}" + (f" ({code})" if code else "")


class SafeGroup(click.Group):
    """Turns every exception into one line on stderr (no traceback) and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail("interrupted; finished work is cached, rerun the same command to resume", 130)
        except OSError as exc:  # a full disk, a read-only place... that no layer below named
            if os.environ.get("ROME_BENCH_DEBUG"):
                raise
            _fail(os_error_message(exc))
        except (RomeBenchError, NotImplementedError, ValueError) as exc:
            if os.environ.get("ROME_BENCH_DEBUG"):
                raise
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except Exception as exc:  # a bug: still one line, with a hint how to see more
            if os.environ.get("ROME_BENCH_DEBUG"):
                raise
            _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(set ROME_BENCH_DEBUG=1 for the traceback)")


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(package_name="rome-bench")
def main() -> None:
    """rome-bench: adversarial robustness of distilled datasets.

    \b
    Examples:
      rome-bench run --method all                      # quick preset, embedded data, minutes
      rome-bench run --method random,full --ipc 1,10 --preset cpu --data-root DIR
      rome-bench list methods
      rome-bench table results/runs/RUN/records.jsonl --format latex
    """


# -- shared options --------------------------------------------------------------------
def data_options(f):
    f = click.option("--dataset", default=None,
                     help="cifar10 | cifar100 | cifar10-mini (default: the preset's).")(f)
    f = click.option("--data-root", type=click.Path(), default=None,
                     help="Folder with the real data (official CIFAR folder or npz shards).")(f)
    f = click.option("--download", is_flag=True, help="Download the official CIFAR release into "
                     "--data-root if it is missing (never done unless asked).")(f)
    return f


def eval_options(f):
    f = click.option("--attacks", default=None, metavar="NAME,...|suite|sweep|none",
                     help="Attacks to run (default: the white-box suite FGSM, PGD, PGD-L2, CW, "
                          "DeepFool, AutoAttack); 'none' = clean accuracy only.")(f)
    f = click.option("--mode", "modes", default=None, metavar="targeted,untargeted",
                     help="Attack modes (default: both).")(f)
    f = click.option("--threat-model", "threat_models", default=None,
                     metavar="standard[,beard-compat]",
                     help="standard (default: [0,1] inputs, eps in pixels) and/or beard-compat "
                          "(the published numbers' protocol, quirks included).")(f)
    f = click.option("--setting", "settings", default=None,
                     metavar="white-box[,transfer][,query]",
                     help="Attack settings (default: white-box). transfer: examples crafted on "
                          "each model (FGSM, PGD, PGD-L2, CW) fed to every other; query: Square "
                          "and SPSA.")(f)
    f = click.option("--protocol", default="native", show_default=True, metavar="native|beard",
                     help="How models are retrained on the distilled sets: native (each method "
                          "as its own reference evaluates it) or beard (every method as BEARD "
                          "did for the published numbers); see docs/protocol.md. With "
                          "--checkpoint nothing is retrained: it labels the records.")(f)
    f = click.option("--test-subset", type=int, default=None, metavar="N",
                     help="Evaluate on a fixed class-balanced subset of N test images "
                          "(default: the preset's).")(f)
    f = click.option("--preset", default="quick", show_default=True,
                     help="quick | cpu | paper (see `rome-bench list presets`).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--arch", default="convnet", show_default=True,
                     help="Architecture (see `rome-bench list archs`).")(f)
    f = click.option("--out", type=click.Path(), default=None,
                     help="Run folder (default: results/runs/<run id>).")(f)
    f = click.option("--device", default=None, help="cpu | cuda (default: cuda if available).")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Torch threads of every computation on a CPU, in one process or in "
                          "each worker (default: 1). A CPU result is bit-identical only at the "
                          "same thread count, so it is part of the cache keys and of each "
                          "record's environment.")(f)
    f = click.option("--fresh", is_flag=True, help="Recompute instead of using the cache.")(f)
    f = click.option("--quiet", is_flag=True, help="No progress bars.")(f)
    f = click.option("--alpha", type=float, default=0.5, show_default=True,
                     help="CREI weight of RR (and I-RR) against AE.")(f)
    f = ae_baseline_option(f)
    return f


def executor_options(f):
    """``--executor``, ``--address``, ``--gpus-per-task``: where the work runs."""
    f = click.option("--gpus-per-task", type=float, default=1.0, show_default=True,
                     metavar="G", help="GPUs each Ray task asks for when the device is CUDA; a "
                     "fraction such as 0.25 packs several small ConvNets on one GPU.")(f)
    f = click.option("--address", default=None, metavar="auto|HOST:PORT",
                     help="Ray cluster to run on with --executor ray: auto (the cluster this "
                          "node belongs to, started with `ray start`) or the head's HOST:PORT "
                          "(default: join the local Ray instance, or start one).")(f)
    f = click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help="local: this process (or --jobs workers); ray: one Ray task per "
                          "distillation and per retrained model, on this machine or a cluster "
                          "(pip install -e \".[ray]\"). Records are the same.")(f)
    return f


def ae_baseline_option(f):
    """``--ae-baseline``: AE's clean-time baseline T0 (docs/metrics.md)."""
    return click.option("--ae-baseline", "ae_baseline", type=click.Choice(["same-mode", "min"]),
                        default="same-mode", show_default=True,
                        help="AE's clean time T0 per IPC: the clean timing of the same mode, or "
                             "the smaller of the targeted and untargeted ones (BEARD's "
                             "auto_metrics.py); differs only for BEARD logs.")(f)


def _config(**kw):
    from rome_bench.pipeline.config import RunConfig, parse_ipcs

    return RunConfig(methods=kw.get("methods", []), dataset=kw.get("dataset"),
                     data_root=kw.get("data_root"), download=kw.get("download", False),
                     ipcs=parse_ipcs(kw.get("ipc")), preset=kw["preset"],
                     repeats=kw.get("repeats"), first_repeat=kw.get("first_repeat", 0),
                     seed=kw["seed"], arch=kw["arch"], out=kw["out"],
                     fresh=kw["fresh"], attacks=kw["attacks"], modes=kw["modes"],
                     threat_models=kw["threat_models"], test_subset=kw["test_subset"],
                     device=kw["device"], show_progress=not kw["quiet"],
                     jobs=parse_jobs(kw.get("jobs", "1")), threads=kw.get("threads"),
                     settings=kw.get("settings"),
                     protocol=kw.get("protocol", "native"), budget_of=kw.get("budget_of"),
                     executor=kw.get("executor", "local"), address=kw.get("address"),
                     gpus_per_task=kw.get("gpus_per_task", 1.0))


def parse_jobs(text: str | None) -> int | None:
    """``auto`` -> None (one worker per core on a CPU, see pipeline.resolve_jobs), else N >= 1."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs <= 0:
        raise click.UsageError(f"--jobs takes a positive integer or 'auto', got '{text}'")
    return jobs


def _finish(plan, records, alpha: float, ae_baseline: str = "same-mode") -> None:
    from rome_bench.reporting.tables import format_tables, tables_for
    from rome_bench.reporting.uncertainty import Bootstrap

    if not records:
        click.echo("no records were produced")
        return
    click.echo("")
    # what the terminal shows carries 95% bootstrap intervals; the files stay the published layout
    click.echo(format_tables(records, tables_for(records), "markdown", alpha, ci=Bootstrap(),
                             ae_baseline=ae_baseline))
    click.echo(f"\nrecords: {plan.out / 'records.jsonl'}")
    click.echo(f"tables:  {plan.out}/tables.md (+ CSV and LaTeX files)")


def bootstrap_options(f):
    f = click.option("--bootstrap-seed", type=int, default=0, show_default=True,
                     help="Seed of the bootstrap's generators.")(f)
    f = click.option("--resamples", type=click.IntRange(min=1), default=2000, show_default=True,
                     help="Bootstrap resamples behind each 95% interval.")(f)
    f = click.option("--ci", is_flag=True, help="Add 95% bootstrap intervals to the Table 1 "
                     "metrics (CSV: *_ci_low/*_ci_high columns after the published ones) and "
                     "flag marks whose lead is not significant.")(f)
    return f


# -- run ----------------------------------------------------------------------------------
@main.command()
@click.option("--method", "method", default="all", show_default=True,
              metavar="all|NAME[,NAME..]|file:PATH",
              help="Methods to benchmark (see `rome-bench list methods`).")
@data_options
@click.option("--ipc", default=None, metavar="1,10,50", help="Images per class (default: the preset's).")
@click.option("--repeats", type=int, default=None, help="Models retrained per cell (default: the preset's).")
@click.option("--first-repeat", type=int, default=0, show_default=True, metavar="K",
              help="Skip models 0..K-1 of each cell, e.g. to train a cell's models in separate "
                   "processes or machines (seeds and records keep the model index).")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--jobs", default="auto", show_default=True, envvar="ROME_BENCH_JOBS",
              metavar="auto|N",
              help="Cells computed side by side in N worker processes (auto: one per --threads "
                   "CPU cores, at most 4, on a CPU; 1 on a GPU). Results do not depend on it; "
                   "ignored with --executor ray.")
@click.option("--budget-of", "budget_of", default=None, metavar="METHOD",
              help="Distill every method with METHOD's budget for the hyperparameters both "
                   "declare (iterations, real batch, queue settings): an equal-budget "
                   "comparison. Rows are labelled <method>@<METHOD>-budget.")
@eval_options
@executor_options
def run(method: str, dry_run: bool, alpha: float, ae_baseline: str, **kw) -> None:
    """Distill (or load), retrain, attack, and print the comparison table.

    \b
    Examples:
      rome-bench run --method all
      rome-bench run --method random,full --ipc 1,10 --attacks FGSM,PGD
      rome-bench run --method all --preset cpu --data-root ../shared/data/cifar10 \\
          --threat-model standard,beard-compat
      rome-bench run --method file:dc_cifar10_ipc10.pt#0 --attacks none
      rome-bench run --method dm,idm --jobs 1      # one process (e.g. to profile)
      rome-bench run --method full --repeats 3 --first-repeat 2   # only model #2
      rome-bench run --method all --preset paper --data-root ../shared/data/cifar10 \\
          --threat-model beard-compat --protocol beard    # the published Table 1's protocol
      rome-bench run --method rome,rome-compat --budget-of idm --ipc 10 --preset cpu \\
          --data-root ../shared/data/cifar10    # ROME with IDM's distillation budget
      rome-bench run --method all --executor ray        # Ray tasks on this machine
      rome-bench run --method all --preset paper --data-root /shared/cifar10 \\
          --executor ray --address auto                   # on a Ray cluster (README)
    """
    from rome_bench.pipeline import runner as pipeline

    config = _config(methods=method.split(","), **kw)
    if dry_run:
        click.echo(pipeline.plan_run(config, require_data=False).describe())
        return
    plan, records = pipeline.run(config, echo=click.echo, alpha=alpha, ae_baseline=ae_baseline)
    _finish(plan, records, alpha, ae_baseline)


# -- evaluate -----------------------------------------------------------------------------
@main.command()
@click.option("--distilled", "distilled", multiple=True, metavar="PATH[#k]",
              help="Distilled set(s) to retrain on and evaluate (any supported format).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME=PATH",
              help="Trained DC-style ConvNet checkpoint(s) to evaluate as method NAME.")
@click.option("--ipc", type=int, default=None,
              help="IPC recorded for checkpoints (default: parsed from names like *_CIFAR10_50_*).")
@data_options
@eval_options
@executor_options
def evaluate(distilled: tuple[str, ...], checkpoints: tuple[str, ...], ipc: int | None,
             alpha: float, ae_baseline: str, **kw) -> None:
    """Evaluate given distilled sets (retraining first) or given trained models.

    \b
    Examples:
      rome-bench evaluate --checkpoint DC=../shared/data/beard_model_pool/DC_ConvNet_CIFAR10_50_None.pth \\
          --dataset cifar10 --data-root ../shared/data/cifar10 --attacks none
      rome-bench evaluate --distilled res_DC_CIFAR10_ConvNet_10ipc.pt#0 --attacks FGSM,PGD
      rome-bench evaluate --checkpoint DC=DC.pth --checkpoint DM=DM.pth --dataset cifar10 \\
          --data-root ../shared/data/cifar10 --setting transfer,query
    """
    from rome_bench.pipeline import runner as pipeline

    if bool(distilled) == bool(checkpoints):
        raise click.UsageError("give either --distilled PATH ... or --checkpoint NAME=PATH ...")
    config = _config(**kw)
    if checkpoints:
        pairs = []
        for item in checkpoints:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise click.UsageError(f"--checkpoint takes NAME=PATH, got '{item}'")
            pairs.append((name, path))
        plan, records = pipeline.evaluate_checkpoints(config, pairs, ipc, echo=click.echo,
                                                      alpha=alpha, ae_baseline=ae_baseline)
    else:
        plan, records = pipeline.evaluate_distilled(config, list(distilled), echo=click.echo,
                                                    alpha=alpha, ae_baseline=ae_baseline)
    _finish(plan, records, alpha, ae_baseline)


# -- reproduce --------------------------------------------------------------------------
@main.group()
def reproduce() -> None:
    """Reproduce a published table with one resumable command."""


@reproduce.command("table1")
@click.option("--dataset", "datasets", default="cifar10,cifar100", show_default=True,
              metavar="cifar10,cifar100", help="Which part(s) of the grid.")
@click.option("--data-root", type=click.Path(), default=None, metavar="DIR",
              help="Folder holding one folder per dataset (DIR/cifar10, DIR/cifar100).")
@click.option("--download", is_flag=True, help="Download the official CIFAR releases into "
              "DIR/cifar10 and DIR/cifar100 if they are missing.")
@click.option("--out", type=click.Path(), default="results/table1", show_default=True,
              help="Results go to OUT/<dataset>; a rerun resumes from the cache.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda if available, or if "
              "the Ray cluster has GPUs).")
@click.option("--dry-run", is_flag=True, help="Print the task graph and an estimate of its "
              "GPU-hours, and exit (needs neither the data nor Ray).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@executor_options
def table1(datasets: str, data_root: str | None, download: bool, out: str, device: str | None,
           dry_run: bool, quiet: bool, executor: str, address: str | None,
           gpus_per_task: float) -> None:
    """The published Table 1: its methods, CIFAR-10 and CIFAR-100, IPC 1/10/50, 5 models per
    cell, the paper preset, threat models beard-compat and standard, BEARD's retraining
    protocol; ends by printing Table 1 beside the published values.

    \b
    Examples:
      rome-bench reproduce table1 --dry-run
      rome-bench reproduce table1 --data-root /data --executor ray --address auto
      rome-bench reproduce table1 --dataset cifar10 --data-root /data --device cuda
    """
    from rome_bench.pipeline import reproduce as rep
    from rome_bench.reporting.tables import TABLE1, format_tables

    configs = [rep.table1_config(d, data_root=data_root, download=download, out=out,
                                 executor=executor, address=address, gpus_per_task=gpus_per_task,
                                 device=device, show_progress=not quiet)
               for d in rep.parse_datasets(datasets)]
    if dry_run:
        click.echo(rep.describe_table1(configs))
        return
    records = rep.reproduce_table1(configs, echo=click.echo)
    if not records:
        click.echo("no records were produced")
        return
    click.echo("")
    click.echo(format_tables(records, [TABLE1], "markdown", reference="paper"))
    click.echo("\nThe published values were measured under beard-compat (with BEARD's "
               "retraining); standard shows what the same models withstand under the threat "
               "model the metrics are meant to describe.")
    click.echo(f"records: {', '.join(str(c.out) for c in configs)} (records.jsonl in each)")


# -- table ---------------------------------------------------------------------------------
@main.command()
@click.argument("records", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["markdown", "csv", "latex"]))
@click.option("--kind", default="robustness", show_default=True,
              type=click.Choice(["robustness", "accuracy", "blackbox", "robust"]),
              help="robustness = Table 1 layout; accuracy = clean/attacked accuracy per IPC; "
                   "blackbox = Table 2 layout (transfer and query I-RR per victim); robust = "
                   "clean, AutoAttack and worst-case accuracy and effective robustness with "
                   "95% bootstrap intervals.")
@click.option("--reference", default=None, metavar="paper|CSV",
              help="Put the published Table 1 value and the difference next to each cell.")
@click.option("--threat-model", default=None, help="Only records of this threat model.")
@click.option("--preset", default=None, help="Only records of this preset.")
@click.option("--protocol", default=None, help="Only records of this evaluation protocol.")
@click.option("--per-ipc", is_flag=True, help="One robustness row per IPC instead of pooling.")
@click.option("--alpha", type=float, default=0.5, show_default=True)
@bootstrap_options
@ae_baseline_option
def table(records: tuple[str, ...], fmt: str, kind: str, reference: str | None,
          threat_model: str | None, preset: str | None, protocol: str | None, per_ipc: bool,
          alpha: float, ci: bool, resamples: int, bootstrap_seed: int, ae_baseline: str) -> None:
    """Tables from records files or run folders.

    \b
    Examples:
      rome-bench table results/runs/RUN --reference paper
      rome-bench table beard.jsonl --format csv
      rome-bench table results/runs/RUN --kind accuracy --format latex
      rome-bench table results/runs/RUN --per-ipc
      rome-bench table results/runs/RUN --kind blackbox --reference paper
      rome-bench table results/runs/RUN --ci
      rome-bench table results/runs/RUN --kind robust --format csv
    """
    from rome_bench.core.records import read_records
    from rome_bench.reporting.tables import format_tables, tables_for
    from rome_bench.reporting.uncertainty import Bootstrap

    rows = read_records(list(records))
    boot = Bootstrap(resamples, bootstrap_seed)
    click.echo(format_tables(rows, tables_for(rows, kind), fmt, alpha, reference, threat_model,
                             preset, per_ipc, protocol, ci=boot if ci else None, bootstrap=boot,
                             ae_baseline=ae_baseline))


# -- plot ----------------------------------------------------------------------------------
@main.command()
@click.argument("records", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default=None,
              help="Folder for figures/ (default: the first RECORDS folder, or the file's folder).")
@click.option("--distilled", "distilled", multiple=True, type=click.Path(), metavar="PATH",
              help="rome-bench distilled-set file(s) to draw as image grids (also found as *.pt "
                   "below RECORDS folders).")
@click.option("--alpha", type=float, default=0.5, show_default=True)
def plot(records: tuple[str, ...], out: str | None, distilled: tuple[str, ...], alpha: float) -> None:
    """Figures from records files or run folders (PNG and PDF in OUT/figures).

    Transfer heatmaps (rows = surrogate, columns = victim), accuracy-vs-eps curves from the PGD
    sweep, distilled-image grids and the Table-1 metrics as grouped bars, as far as the records
    support them; the rest is listed as skipped.

    \b
    Examples:
      rome-bench plot results/runs/RUN
      rome-bench plot pool.jsonl --out figs --distilled dc_ipc10.pt
    """
    from pathlib import Path

    from rome_bench.core.records import read_records
    from rome_bench.data.distilled import DistilledSet
    from rome_bench.pipeline.runner import find_distilled, image_grids
    from rome_bench.reporting.figures import write_figures

    rows = read_records(list(records))
    first = Path(records[0])
    folder = Path(out) if out else (first if first.is_dir() else first.parent)
    sets = {}
    for r in records:
        if Path(r).is_dir():
            sets.update(find_distilled(Path(r)))
    for d in distilled:
        sets[Path(d).stem] = DistilledSet.load(d)
    write_figures(rows, folder, distilled=image_grids(sets), alpha=alpha, echo=click.echo)


# -- leaderboard --------------------------------------------------------------------------
@main.command()
@click.argument("records", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="Folder for leaderboard.html.")
@click.option("--alpha", type=float, default=0.5, show_default=True)
@click.option("--resamples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples behind each 95% interval.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap's generators.")
def leaderboard(records: tuple[str, ...], out: str, alpha: float, resamples: int,
                bootstrap_seed: int) -> None:
    """One self-contained HTML page: sortable table, scatter, preset, protocol, threat model.

    The page (OUT/leaderboard.html) needs no server and loads nothing from elsewhere: robust
    accuracy, effective robustness and the Table 1 metrics with 95% bootstrap intervals per
    method and IPC, the clean-vs-robust scatter, and the command that regenerates it.

    \b
    Examples:
      rome-bench leaderboard results/runs/RUN --out site
      rome-bench leaderboard results/cpu-ipc1 results/cpu-ipc10 --out site --resamples 5000
    """
    import shlex

    from rome_bench.core.records import read_records
    from rome_bench.reporting.leaderboard import write_leaderboard
    from rome_bench.reporting.uncertainty import Bootstrap

    rows = read_records(list(records))
    command = ["rome-bench", "leaderboard", *records, "--out", out]
    if alpha != 0.5:
        command += ["--alpha", f"{alpha:g}"]
    if resamples != 2000:
        command += ["--resamples", str(resamples)]
    if bootstrap_seed != 0:
        command += ["--bootstrap-seed", str(bootstrap_seed)]
    path = write_leaderboard(rows, out, shlex.join(command), Bootstrap(resamples, bootstrap_seed),
                             alpha)
    click.echo(f"leaderboard: {path}")


# -- import-beard ------------------------------------------------------------------------
@main.command("import-beard")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="Records file to write (JSONL).")
def import_beard(logs: tuple[str, ...], out: str) -> None:
    """Convert BEARD evaluation logs into records (threat model beard-compat).

    \b
    Example:
      rome-bench import-beard logs/*.txt --out beard.jsonl && rome-bench table beard.jsonl
    """
    from rome_bench.core.storage import atomic_write_text
    from rome_bench.reporting.beard import parse_beard_logs

    recs = parse_beard_logs(list(logs))
    atomic_write_text(out, "".join(r.to_json() + "\n" for r in recs))
    methods = sorted({r.method for r in recs})
    click.echo(f"wrote {len(recs)} records ({', '.join(methods)}) to {out}")


# -- experts -----------------------------------------------------------------------------
@main.command()
@data_options
@click.option("--num-experts", type=int, default=None, help="Experts to train (default: the preset's).")
@click.option("--epochs", type=int, default=None, help="Epochs per expert (default: the preset's).")
@click.option("--preset", default="quick", show_default=True, help="quick | cpu | paper.")
@click.option("--zca/--no-zca", default=True, show_default=True,
              help="Train experts on ZCA-whitened images (MTT's CIFAR setting).")
@click.option("--flat", is_flag=True, help="DATM's flat trajectories (GSAM steps).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu | cuda (default: cuda if available).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def experts(dataset: str | None, data_root: str | None, download: bool, num_experts: int | None,
            epochs: int | None, preset: str, zca: bool, flat: bool, seed: int,
            device: str | None, quiet: bool) -> None:
    """Train (or complete) the cached expert buffer that MTT and DATM match.

    Generation is resumable per expert; existing experts are reused.

    \b
    Examples:
      rome-bench experts                                    # quick preset, embedded data
      rome-bench experts --dataset cifar10 --data-root ../shared/data/cifar10 \\
          --preset paper --num-experts 5 --epochs 50 --device cuda
    """
    try:
        from rome_bench.methods.experts import generate_experts
    except ModuleNotFoundError as exc:
        raise NotImplementedError("expert buffers are not implemented yet: see issue #5") from exc
    from rome_bench.pipeline.presets import PRESETS

    name = dataset or PRESETS.get(preset).dataset
    trajectories = generate_experts(name, data_root, num_experts, epochs, preset, seed, device,
                                    not quiet, zca=zca, flat=flat, download=download)
    click.echo(f"expert buffer ready: {len(trajectories)} experts x "
               f"{trajectories[0].shape[0] - 1} epochs, {trajectories[0].shape[1]:,} parameters "
               f"per snapshot")


# -- list ------------------------------------------------------------------------------
@main.command("list")
@click.argument("what", type=click.Choice(["methods", "datasets", "archs", "presets", "attacks",
                                           "protocols"]))
def list_(what: str) -> None:
    """List registered methods, datasets, architectures, presets, attacks or protocols.

    \b
    Examples:
      rome-bench list methods
      rome-bench list presets
    """
    from tabulate import tabulate

    from rome_bench.core.catalog import ATTACKS, METHODS
    from rome_bench.data.datasets import DATASETS
    from rome_bench.models.convnet import ARCHS
    from rome_bench.pipeline.presets import PRESETS

    if what == "methods":
        rows = []
        for e in METHODS.entries():
            status = ("in all" if e.meta.get("in_all") else
                      "planned" if not e.meta.get("implemented", True) else "on request")
            rows.append([e.name, ", ".join(e.aliases), status, e.description])
        click.echo(tabulate(rows, headers=["method", "aliases", "--method all", "description"]))
    elif what == "datasets":
        rows = [[e.name, e.obj.num_classes, "yes" if e.obj.needs_root else "no (embedded)",
                 e.description] for e in DATASETS.entries()]
        click.echo(tabulate(rows, headers=["dataset", "classes", "needs --data-root", "description"]))
    elif what == "archs":
        rows = [[e.name, e.obj.width, e.obj.depth, e.obj.norm, e.description]
                for e in ARCHS.entries()]
        click.echo(tabulate(rows, headers=["arch", "width", "depth", "norm", "description"]))
    elif what == "protocols":
        from rome_bench.pipeline.protocol import PROTOCOLS

        for e in PROTOCOLS.entries():
            click.echo(f"{e.name}: {e.obj.description}")
    elif what == "attacks":
        rows = [[e.obj.name, e.obj.setting, "yes" if e.obj.targeted else "no",
                 "suite" if e.obj.suite else "extra", e.description] for e in ATTACKS.entries()]
        click.echo(tabulate(rows, headers=["attack", "setting", "targeted", "in", "description"]))
    else:
        for e in PRESETS.entries():
            p = e.obj
            click.echo(f"{p.name}: {p.description}\n  dataset {p.dataset}, IPC "
                       f"{','.join(map(str, p.ipcs))}, {p.repeats} model(s) per cell, test images "
                       f"{p.attacks.test_subset or 'all'}\n  scaled: {p.scaled}\n")


if __name__ == "__main__":  # pragma: no cover
    main()
