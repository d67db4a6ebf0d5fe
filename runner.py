"""The run harness: how an algorithm file's training computation is run from the command line.

Every algorithm file builds its whole run as a `Program` and hands it to this module; nothing here is needed
to understand an algorithm, and a file's `make_train(config)(key)` runs without it (one jittable function,
PureJaxRL-style: `jax.jit(jax.vmap(make_train(config)))(keys)`).

A Program is one learner's run in two pieces: `init(key) -> carry` and `update(carry, index) -> (carry,
metrics)`, scanned `num_updates` times; `train(key)` is the same run as one function, and `result(carry)` what
the file keeps at the end. Its metrics are a dict of scalars per update and must include `env_steps` (env
steps per seed so far). The harness adds, the same way for every file:
    parse_config   the CLI: tyro over the file's Config dataclass, `--preset NAME`, `--resume RUN_DIR`
    train          run directory, progress printer, config.json, the start-up line, run_program, one Run per
                   swept value; `Training.finish` then writes the run's files through runlog
    run_program    the updates in equal jitted chunks with the whole state saved after each (resume.npz), so
                   `--resume` continues a run bit-identically on one CPU; `--num-checkpoints` sets the chunks
    sweeps         `--sweep NAME=v1,v2`: one vmapped program over the values, one run directory per value. The
                   file's program is built inside the trace from a config whose swept field is a traced number,
                   so a swept field may feed only the jitted arithmetic (not a loop length, a shape, a Python
                   `if`/`int`); anything else is refused before compiling, as is a field nothing reads
    seeds          `--num-seeds N`: vmapped over keys fold_in(PRNGKey(seed), i), sharded over every visible
                   device (and every host of a multi-host launch, started by `init_distributed` at import)
    cli            runs `main`: a ConfigError (bad input, raised before compiling) prints as one line; any
                   other exception keeps its traceback
    Policy         a trained policy rebuilt from a checkpoint, for scripts/evaluate.py

Algorithm files import this module before `envs`: on a multi-host launch it must start jax.distributed before
gymnax touches the devices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import runlog


# ----------------------------------------------------------------------------------------------------
# MULTI-HOST START-UP (at import, before an algorithm file imports envs and with it gymnax)


def init_distributed() -> None:
    """`jax.distributed.initialize()` when a multi-host launcher set its environment (SLURM, Open MPI, TPU
    pod slices, or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID, which JAX itself does
    not read); a no-op on one host, and when already done. Then `jax.devices()` lists the devices of every
    host and `seed_keys` shards the seeds over all of them.

    It must run before anything touches the devices, and importing gymnax does (it computes arrays at
    import): this module calls it when imported, so an algorithm file imports runner before envs."""
    launched = any(name in os.environ for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                                                   "TPU_WORKER_HOSTNAMES"))
    multi_task = int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))) > 1
    if not (launched and (multi_task or "JAX_COORDINATOR_ADDRESS" in os.environ
                          or "TPU_WORKER_HOSTNAMES" in os.environ)) or jax.distributed.is_initialized():
        return
    numbers = {name: int(os.environ[var]) for name, var in (("num_processes", "JAX_NUM_PROCESSES"),
                                                            ("process_id", "JAX_PROCESS_ID")) if var in os.environ}
    try:
        jax.distributed.initialize(**numbers)
    except RuntimeError as error:
        if "must be called before" not in str(error):
            raise
        raise SystemExit("A multi-host launch (jax.distributed) must start before JAX touches the devices, and "
                         "something did (importing gymnax does): in the algorithm file, put `import runner` above "
                         "`import envs`.") from error


init_distributed()  # at import, before an algorithm file imports envs (and with it gymnax)

from envs.errors import ConfigError  # noqa: E402  (after the start-up above: importing envs imports gymnax)

# ----------------------------------------------------------------------------------------------------
# CLI


def parse_config(config_cls, presets: dict[str, Any], args: list[str] | None = None):
    """Parse the command line into `config_cls`, with defaults taken from `--preset NAME`.

    The preset is read first so that every other flag overrides the preset's value, and `--help`
    shows the chosen preset's values as defaults.
    """
    import tyro

    init_distributed()  # before anything touches the devices; a no-op on one host
    args = list(sys.argv[1:] if args is None else args)
    preset = next(iter(presets))
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            preset = args[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    if preset not in presets:
        raise SystemExit(f"Unknown preset {preset!r}. Choose one of: {', '.join(presets)}.")
    if "--resume" in args or any(arg.startswith("--resume=") for arg in args):
        return resumed_config(config_cls, args)
    return tyro.cli(config_cls, default=presets[preset], args=args)


def resumed_config(config_cls, args: list[str]):
    """`--resume RUN_DIR [--quiet]`: the config that RUN_DIR/config.json recorded, to continue that run."""
    index = next(i for i, arg in enumerate(args) if arg.startswith("--resume"))
    run_dir = args[index].split("=", 1)[1] if "=" in args[index] else (args[index + 1:] or [""])[0]
    rest = [arg for i, arg in enumerate(args) if i != index and not (arg == run_dir and "=" not in args[index])]
    if not run_dir or any(arg not in ("--quiet", "--no-quiet") for arg in rest):
        raise SystemExit("--resume RUN_DIR continues a run exactly as its config.json says; only --quiet may be "
                         f"added (got {' '.join(args)}). To change a setting, start a new run.")
    if not (Path(run_dir) / "config.json").exists():
        raise SystemExit(f"--resume {run_dir}: no config.json there. Pass the directory of an earlier run.")
    check_resumable(config_cls, run_dir)
    return recorded_config(config_cls, run_dir, run_dir=str(run_dir), resume=True, quiet="--quiet" in rest)


def file_name(config_cls) -> str:
    """The name of the algorithm file that defines `config_cls` (its NAME: a copy names itself)."""
    module = sys.modules.get(config_cls.__module__)
    return Path(getattr(module, "__file__", None) or config_cls.__module__).stem


def read_config_json(directory) -> dict:
    """DIRECTORY/config.json as a dict; a file that is not the JSON object a run writes (cut short, edited,
    overwritten) is one line that names it, before anything is written."""
    path = Path(directory) / "config.json"
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SystemExit(f"error: {path} is damaged ({error}); nothing was changed. Restore it from a copy (it "
                         f"holds the run's whole config), or start a new run.") from None
    if not isinstance(recorded, dict):
        raise SystemExit(f"error: {path} is damaged (not a JSON object); nothing was changed. Restore it from a "
                         f"copy (it holds the run's whole config), or start a new run.")
    return recorded


def check_resumable(config_cls, run_dir) -> None:
    """Refuse, before anything is written, to resume a run that another algorithm file made (by name) or whose
    recorded config has other fields than this file's Config: continuing it here would train another rule."""
    recorded = read_config_json(run_dir)
    name, made_by = file_name(config_cls), recorded.get("algorithm")
    if made_by != name:
        raise SystemExit(f"--resume {run_dir}: that run was made by {made_by}.py, not by this file ({name}.py); "
                         f"resume it with the file that made it: python algorithms/{made_by}.py --resume {run_dir}")
    fields = {field.name for field in dataclasses.fields(config_cls)}
    unknown, missing = sorted(set(recorded) - fields - {"algorithm"}), sorted(fields - set(recorded))
    if unknown or missing:
        differ = ([f"fields this file does not have: {', '.join(unknown)}"] if unknown else []) + \
                 ([f"fields it did not record: {', '.join(missing)}"] if missing else [])
        raise SystemExit(f"--resume {run_dir}: its config.json differs from this file's Config "
                         f"({'; '.join(differ)}); the file changed since the run started. Resume with the version "
                         f"that made it, or start a new run.")


def recorded_config(config_cls, directory, **changes):
    """The config that directory/config.json recorded (fields config_cls does not have are dropped; JSON lists
    become tuples where the field's default is one), with `changes` set (those config_cls has)."""
    recorded = read_config_json(directory)
    fields = {field.name: field for field in dataclasses.fields(config_cls)}
    values = {}
    for name, value in {**recorded, **changes}.items():
        if name in fields:
            default = fields[name].default
            values[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return config_cls(**values)


def cli(main) -> None:
    """Run an algorithm file's `main` from the command line. A ConfigError (bad input, found by the checks that
    run before compiling) prints as one line that says what to change; any other error keeps its traceback."""
    try:
        main()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """One PRNG key per run: run i gets fold_in(PRNGKey(seed), i), whatever the number of runs, so run 0
    of `--num-seeds 8` starts from the key of `--num-seeds 1`. Its numbers agree up to float rounding only:
    one seed and a batch of seeds are different float programs, and learning can grow the difference
    (Breakout-MinAtar, PQN at 1e6 steps: seed 0 ends at 17.0 alone and 16.0 among 4).

    With several devices visible (GPUs, TPU cores, or `XLA_FLAGS=--xla_force_host_platform_device_count=N`
    on a CPU), the keys are sharded over them along the seed axis (`shard_seeds`), so the jitted
    `vmap(train)` runs each device's seeds on that device.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(num_seeds))
    return shard_seeds(keys)


def shard_seeds(keys: jax.Array) -> jax.Array:
    """Place the seed axis of `keys` across all devices (a 1-D Mesh named "seeds"); XLA then partitions
    everything vmapped over it. One device, or one seed, leaves the keys where they are."""
    devices = jax.devices()
    num_seeds = keys.shape[0]
    if len(devices) == 1 or num_seeds == 1:
        return keys
    if num_seeds % len(devices):
        raise ConfigError(
            f"--num-seeds {num_seeds} does not divide over the {len(devices)} visible devices: use a multiple "
            f"of {len(devices)}, or limit the devices (CUDA_VISIBLE_DEVICES=0, or JAX_PLATFORMS=cpu)."
        )
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("seeds",))
    return jax.device_put(keys, NamedSharding(mesh, PartitionSpec("seeds")))


def vmap_seeds(train: Callable) -> Callable:
    """`jax.vmap(train)` over a leading axis of keys; one key runs unbatched, with the seed axis added back.

    XLA's CPU backend runs the matmuls of a size-1 vmap as batched matmuls at about half the speed of
    plain ones, so a single seed skips the vmap. Results agree up to float rounding (tests/test_runlog.py).
    """
    batched = jax.vmap(train)

    def run(keys):
        if keys.shape[0] == 1:
            return jax.tree.map(lambda x: x[None], train(keys[0]))
        return batched(keys)

    return run

# ----------------------------------------------------------------------------------------------------
# PROGRAMS: one learner's run as init + scanned update, run in checkpointed chunks, seeds and sweeps vmapped


@dataclasses.dataclass(frozen=True)
class Program:
    """One learner's whole run: the function a file's `make_train(config)` returns, and its pieces.

    init(key) -> carry       everything the run keeps between updates (params, optimizer, envs, replay
                             buffer, PRNG key)
    update(carry, index) -> (carry, metrics)   one update, scanned over index = 0 .. num_updates - 1
    train(key) -> (result, metrics)   the whole run in one jittable function: init, then update scanned
                             num_updates times (written out in each file); calling the program calls it
    result(carry) -> what train returns of the last carry (e.g. its TrainState): what `run_program`, which
                             runs the same updates in chunks, keeps at the end
    act(result, obs) -> env action, evaluate(result, key) -> return: optional, the policy the run evaluates and
                             its evaluation, for the file's `trained_policy` (scripts/evaluate.py)

    Hyperparameters are read from the config `make_train` was given, and nowhere else: under `--sweep`,
    `run_program` builds the program inside the traced run from a config whose swept field holds the traced
    value (`with_values`), so `config.gamma` is swept wherever it is read. (A dataclass, not a NamedTuple:
    `jax.jit(program)` keeps a weak reference to it, which tuples do not allow.)
    """

    init: Callable
    update: Callable
    num_updates: int
    train: Callable
    result: Callable = lambda carry: carry
    act: Callable | None = None
    evaluate: Callable | None = None

    def __call__(self, key):
        return self.train(key)


def with_values(config, values: dict[str, Any]):
    """A copy of the frozen config with some fields set to (possibly traced) numbers: the one config the
    program of a swept run reads. The checks of a file's config (which compare numbers in Python) run on
    `untraced(config)`; each swept value was checked on its own before (the files' derive_sizes)."""
    new = copy.copy(config)
    for name, value in values.items():
        object.__setattr__(new, name, value)
    object.__setattr__(new, "_untraced", untraced(config))
    return new


def program_with(make_program: Callable[[Any], Program], config, values: dict[str, Any]) -> Program:
    """make_program(with_values(config, values)), built inside a traced run: what the building code computes
    from plain numbers (spaces, sizes, tables) is computed at once, as outside a trace; only the swept values
    are traced."""
    with jax.ensure_compile_time_eval():
        return make_program(with_values(config, values))


def untraced(config):
    """The config a `with_values` copy was made from (the config itself otherwise)."""
    return config.__dict__.get("_untraced", config)


class RunInterrupted(RuntimeError):
    """Raised by run_program(stop_after_chunks=N), which stands in for a run killed after N checkpoints."""


def parse_sweep(sweep: str, sweepable: tuple[str, ...]) -> tuple[str | None, tuple[float, ...]]:
    """'lr=1e-4,3e-4' -> ('lr', (1e-4, 3e-4)); '' -> (None, ()). Raises with the names that can be swept."""
    if not sweep:
        return None, ()
    name, _, values = sweep.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if name not in sweepable:
        raise ConfigError(f"--sweep {sweep!r}: {name!r} cannot be swept in one program; choose one of "
                         f"{', '.join(sweepable)} (e.g. --sweep {sweepable[0]}=0.1,0.2).")
    try:
        parsed = tuple(float(v) for v in values.split(","))
    except ValueError:
        raise ConfigError(f"--sweep {sweep!r}: values must be numbers separated by commas, e.g. {name}=0.5,1,2.")
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"--sweep {sweep!r}: the values repeat.")
    return name, parsed


def sweep_run_configs(run_dir: Path, config, name: str | None, values: tuple[float, ...]) -> dict[Path, Any]:
    """The run directory and config of every value of a sweep: RUN_DIR/<name>=<value>, or just RUN_DIR."""
    if name is None:
        return {Path(run_dir): config}
    kind = type(getattr(config, name))
    if kind is bool:
        raise ConfigError(f"--sweep {name}=...: {name} is a switch (true/false), not a number; run each setting "
                         f"as its own run.")
    if kind is int and any(v != int(v) for v in values):
        raise ConfigError(f"--sweep {name}={','.join(f'{v:g}' for v in values)}: {name} is a whole number; sweep "
                         f"whole values only (e.g. {name}=1,2,4).")
    cast = int if kind is int else float
    return {Path(run_dir) / f"{name}={v:g}": dataclasses.replace(config, **{name: cast(v)}, sweep="") for v in values}


def sweep_runs(run_configs: dict[Path, Any], state: Any, metrics: dict[str, Any], swept: bool):
    """Split what `run_program` returned into one run per swept value: yields (run_dir, config, state,
    metrics as numpy arrays [seeds, rows]). Under a sweep every leaf has a leading value axis; without
    one there is a single run and nothing is split."""
    for index, (directory, run_config) in enumerate(run_configs.items()):
        pick = (lambda x: x[index]) if swept else (lambda x: x)
        yield directory, run_config, jax.tree.map(pick, state), {k: np.asarray(pick(v)) for k, v in metrics.items()}


def num_chunks(num_updates: int, num_checkpoints: int) -> int:
    """The largest number of equal chunks <= num_checkpoints that divides num_updates (one compiled chunk)."""
    return max(c for c in range(1, max(min(num_checkpoints, num_updates), 1) + 1) if num_updates % c == 0)


def schedule_note(num_updates: int, num_checkpoints: int, steps: int | None = None,
                  requested_steps: int | None = None) -> str:
    """The start-up line's account of the run's length: the env steps per seed it will take (--total-timesteps
    rounded down to whole updates), and how many checkpoints it will save (`num_chunks`: equal chunks, one
    compiled program, so --num-checkpoints is rounded down to a divisor of the update count)."""
    parts = []
    if steps is not None:
        parts.append(f"{steps:,} steps per seed")
        if requested_steps is not None and steps != requested_steps:
            parts[-1] += f" (--total-timesteps {requested_steps:,} rounded down to whole updates)"
    chunks = num_chunks(num_updates, num_checkpoints)
    parts.append(f"{chunks} checkpoint{'s' * (chunks != 1)}")
    if chunks != num_checkpoints:
        parts[-1] += f" (--num-checkpoints {num_checkpoints} rounded down to a divisor of the {num_updates:,} updates)"
    return ", ".join(parts)


def run_program(make_program: Callable[[Any], Program], config, keys: jax.Array, run_dir: Path,
                num_checkpoints: int = 1, resume: bool = False, sweep: tuple[str, tuple] | dict[str, tuple] | None = None,
                stop_after_chunks: int | None = None, program: Program | None = None,
                before_compile: Callable[[], None] = lambda: None, before_run: Callable[[], None] = lambda: None,
                resume_command: str = ""):
    """Run `make_program(config)` for every seed (and every swept value), in chunks with the full state saved
    after each.

    Returns (result, metrics, compile_seconds, train_seconds); outputs have a leading seed axis, preceded by
    a value axis for a sweep. The updates run in `num_chunks(num_updates, num_checkpoints)` equal jitted
    chunks; after each, the whole carry and the metrics so far go to RUN_DIR/resume.npz (atomically, every
    array under its name: the carry's tree path, the metric's key), and `resume=True` continues from there,
    after checking that the saved names and shapes are the ones this program makes (else it refuses, naming
    what differs). A resumed run executes the same compiled chunks on the same inputs as an uninterrupted one,
    so on one CPU it ends bit-identical to it. `before_compile()` runs once everything is traced (and a resumed
    state checked): `train` writes the run directories there, so that bad input leaves none behind;
    `before_run()` once the program compiled, before the first chunk runs. Ctrl-C
    stops at once with the state of the last finished chunk saved, and prints `resume_command`.

    Under `sweep=(name, values)` the program is built inside the traced run from `with_values(config,
    {name: value})` (`program_with`), the value a traced float32 with one entry per swept value (vmapped), so
    every place the file reads `config.<name>` sees the swept value. A swept name that the computation never
    reads, or reads where a concrete number is needed (a loop length, a shape, a Python `if` or `int`), is an
    error, raised after tracing and before compiling. (`sweep` may also map several names to values of one
    length, swept jointly: the tests use it.)
    """
    sweeps = dict([sweep]) if isinstance(sweep, tuple) else dict(sweep or {})  # {name: values}, one axis
    hparams = {name: jnp.asarray(values, jnp.float32) for name, values in sweeps.items()}
    name = next(iter(sweeps), None)
    batch_axes = 2 if name else 1  # [values,] seeds
    if program is None:  # (else the caller's make_program(config), already built)
        program = make_program(config)
    chunks = num_chunks(program.num_updates, num_checkpoints)
    length = program.num_updates // chunks

    def init(key, hp):
        return program_with(make_program, config, hp).init(key)

    def chunk(carry, start, hp):
        return jax.lax.scan(program_with(make_program, config, hp).update, carry, start + jnp.arange(length))

    num_seeds = keys.shape[0]
    init_all = jax.jit(_batched(init, num_seeds, None if name is None else (None, 0)))
    chunk_all = jax.jit(_batched(chunk, num_seeds, None if name is None else (0, None, 0)))
    t0 = time.perf_counter()
    state_path = Path(run_dir) / "resume.npz"
    with _swept_values_concrete(name):
        if resume:
            carry_shape = jax.eval_shape(init_all, keys, hparams)
            metrics_shape = jax.eval_shape(chunk_all, carry_shape, jnp.int32(0), hparams)[1]
            done, carry, metrics, train_seconds = _load_state(state_path, carry_shape, metrics_shape,
                                                              program.num_updates, length)
        else:
            done, carry, metrics, train_seconds = 0, init_all(keys, hparams), [], 0.0
        # Fresh or resumed, every chunk gets its carry placed the same way (seed axis over the devices), so one
        # compiled chunk serves every call.
        traced = chunk_all.trace(_place(carry, keys, batch_axes), jnp.int32(0), hparams)
    unread = _unread_inputs(traced, hparams, hparams)
    if unread:
        unread = _unread_inputs(init_all.trace(keys, hparams), hparams, unread)
    if unread:
        raise ConfigError(f"--sweep {unread[0]}=...: the training computation never reads config.{unread[0]}, so "
                         f"every value would train the same run; read it in the jitted code (or sweep another name).")
    before_compile()
    compiled = traced.lower().compile()
    compile_seconds = time.perf_counter() - t0  # tracing, compiling and the initial state
    before_run()
    saved = done
    try:
        for index in range(done // length, chunks):
            if stop_after_chunks is not None and index >= stop_after_chunks:
                raise RunInterrupted(f"stopped after {index} of {chunks} chunks")
            t0 = time.perf_counter()
            carry = _place(carry, keys, batch_axes)
            carry, chunk_metrics = _wait(compiled(carry, jnp.int32(index * length), hparams))
            jax.effects_barrier()  # let the chunk's progress callbacks finish before timing stops
            train_seconds += time.perf_counter() - t0
            metrics.append(runlog.gather(chunk_metrics))
            if chunks > 1:
                _save_state(state_path, (index + 1) * length, carry, metrics, batch_axes, train_seconds)
                saved = (index + 1) * length
    except KeyboardInterrupt:
        where = (f"the state after {saved:,} of {program.num_updates:,} updates is in {state_path}; continue with: "
                 f"{resume_command or '--resume ' + str(run_dir)}") if saved else (
                 "no state was saved yet (one is saved after each of the --num-checkpoints chunks): start it again")
        print(f"\nInterrupted: {where}", file=sys.stderr, flush=True)
        os._exit(130)  # at once: the chunk still running in XLA's threads is not waited for (its state is lost)
    metrics = jax.tree.map(lambda *m: np.concatenate(m, axis=batch_axes), *metrics)
    return program.result(carry), metrics, compile_seconds, train_seconds


class _swept_values_concrete:
    """Turns a trace error on a swept run (the swept value used where JAX needs a concrete number) into the
    one-line error of bad input, naming the field and the rule."""

    def __init__(self, name: str | None):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        concrete_needed = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                           jax.errors.TracerBoolConversionError, jax.errors.TracerArrayConversionError)
        if self.name is not None and isinstance(error, concrete_needed):
            raise ConfigError(
                f"--sweep {self.name}=...: config.{self.name} sets a loop length, an array shape or a Python "
                f"if/int in this file, which one vmapped program cannot vary; a swept field may only feed the "
                f"arithmetic of the jitted code. Train one run per value instead (--{self.name.replace('_', '-')} V)."
            ) from None
        return False


def _wait(tree: Any) -> Any:
    """block_until_ready that Ctrl-C can interrupt: polls, so the KeyboardInterrupt is raised at once rather
    than after the chunk."""
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    while not all(x.is_ready() for x in leaves):
        time.sleep(0.02)
    return jax.block_until_ready(tree)


class Run(NamedTuple):
    """One swept value's run (the whole run without a sweep): its directory and config, and what training
    returned for it, metrics as numpy arrays [seeds, rows]."""

    directory: Path
    config: Any
    state: Any
    metrics: dict[str, np.ndarray]


@dataclasses.dataclass
class Training:
    """What `train` returns: the run directory, one Run per swept value, every learner's metrics ([values,]
    seeds, rows) and the timings (train_seconds per swept value)."""

    algorithm: str
    run_dir: Path
    runs: list[Run]
    metrics: dict[str, Any]
    compile_seconds: float
    train_seconds: float
    swept: bool

    def finish(self, run: Run, final_return, checkpoint, **kwargs) -> dict[str, Any]:
        """`finish_run` for one of the runs, with the training's timings: writes its files, returns its summary."""
        return runlog.finish_run(run.directory, run.config, self.algorithm, run.metrics, final_return, checkpoint,
                          self.compile_seconds, self.train_seconds, **kwargs)

    def returned(self, summaries: list[dict[str, Any]]):
        """What `main` returns: the summary, or the list of them under a sweep."""
        return summaries if self.swept else summaries[0]


def train(algorithm: str, config, make_train: Callable, steps_per_seed: int, sweep: tuple[str | None, tuple],
          detail: str = "", every_seconds: float = 2.0, budget: bool = False) -> Training:
    """The run plumbing every file's `main` shares, in order: the run directory, the progress printer,
    `make_train(config, progress)` once (bad input raises here, before anything is written or compiled),
    config.json of the run and of each swept value, the start-up line (`detail` goes beside the preset),
    `run_program` (chunks, checkpoints, --resume, the sweep) and the split into one Run per swept value.

    `steps_per_seed`: the env steps the program takes, for the progress bar and the start-up line (which says
    when --total-timesteps was rounded down to it), unless `budget`: then --total-timesteps is a budget the
    program stops at by itself and the line leaves the steps to `detail`."""
    sweep_name, sweep_values = sweep
    run_dir = runlog.run_path(config, algorithm)
    num_values = len(sweep_values) if sweep_name else 1
    # --quiet compiles no progress callback: a program with a host callback is never kept by JAX's persistent
    # compilation cache, so a quiet rerun of the same config loads its program instead of compiling it again.
    progress = None if config.quiet else runlog.Progress(run_dir, steps_per_seed, config.num_seeds * num_values,
                                                         every_seconds=every_seconds)
    program = make_train(config, progress)
    run_configs = sweep_run_configs(run_dir, config, sweep_name, sweep_values)
    if not config.quiet:
        grid = f" x {num_values} values of {sweep_name}" if sweep_name else ""
        schedule = schedule_note(program.num_updates, config.num_checkpoints,
                                 *(() if budget else (steps_per_seed, config.total_timesteps)))
        print(f"{algorithm} on {config.env_id} ({config.preset} preset{', ' + detail if detail else ''}), "
              f"{config.num_seeds} seed(s){grid}: {schedule} -> {run_dir}", flush=True)
    written = {run_dir: config, **run_configs}

    def write_directories():  # once the program traced and a resumed state was checked: bad input writes nothing
        if config.resume:  # the run's own config.json stays as it was
            return
        for directory, run_config in written.items():
            runlog.start_run(directory, run_config, algorithm)

    started = []  # set once the compiled program starts running

    try:
        state, metrics, compile_seconds, train_seconds = run_program(
            lambda c: make_train(c, progress), config, seed_keys(config.seed, config.num_seeds), run_dir,
            config.num_checkpoints, config.resume, sweep=(sweep_name, sweep_values) if sweep_name else None,
            program=program, before_compile=write_directories, before_run=lambda: started.append(True),
            resume_command=resume_command(algorithm, run_dir))
    except BaseException:
        if not config.resume and not started:  # failed before its first update: leave no directory
            _remove_unstarted(written)
        raise
    runs = [Run(*run) for run in sweep_runs(run_configs, state, metrics, sweep_name is not None)]
    return Training(algorithm, run_dir, runs, metrics, compile_seconds, train_seconds / num_values,
                    sweep_name is not None)


def resume_command(algorithm: str, run_dir: Path) -> str:
    """The command that continues a run: the script as it was started (a copy keeps its own path)."""
    script = Path(sys.argv[0])
    script = script if script.suffix == ".py" else Path("algorithms") / f"{algorithm}.py"
    return f"python {script} --resume {run_dir}"


def _remove_unstarted(directories: dict[Path, Any]) -> None:
    """Remove what `start_run` wrote for a run that failed before its first update (config.json, and the
    directories if that leaves them empty); nothing else in them is touched."""
    for directory in sorted(directories, key=lambda d: -len(d.parts)):  # sweep values before their parent
        (directory / "config.json").unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:  # not there, or holds something else
            pass


def report(training: Training, summaries: list[dict[str, Any]], curve_key: str, label: str,
           final: str = "final return", extra: Callable[[dict[str, Any]], str] = lambda summary: "") -> None:
    """The closing lines of a run: per swept value, the seed-mean `curve_key` as a sparkline and each seed's
    final return (`final` names it; `extra(summary)` is appended); then the speed and where the files are."""
    for run, summary in zip(training.runs, summaries):
        prefix = f"{run.directory.name}: " if training.swept else ""
        print(f"{prefix}{label} {runlog.sparkline(runlog.nanmean_quiet(run.metrics[curve_key], axis=0))}")
        print(f"{prefix}{final} per seed: {[round(r, 2) for r in summary['final_return']]}{extra(summary)}")
    print(f"{summaries[0]['env_steps_per_second']:,.0f} env steps/s, compile {training.compile_seconds:.1f}s; "
          f"curves (curve.png) and summaries (summary.json) in {training.run_dir}")


def _unread_inputs(traced, hparams: dict, names) -> list[str]:
    """Those of `names` whose swept values (the traced program's last inputs: `hparams`, flattened in sorted key
    order) reach no operation or output of the program."""
    jaxpr = traced.jaxpr.jaxpr
    read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    hparam_vars = dict(zip(sorted(hparams), jaxpr.invars[len(jaxpr.invars) - len(hparams):]))
    return [name for name in sorted(names) if id(hparam_vars[name]) not in read]


def _batched(fn: Callable, num_seeds: int, sweep_axes: tuple | None) -> Callable:
    """fn(a, *rest) vmapped over the seed axis of `a` (one seed runs unbatched: see vmap_seeds), then over the
    sweep's value axis as `sweep_axes` say."""

    def over_seeds(a, *rest):
        if num_seeds == 1:
            return jax.tree.map(lambda x: x[None], fn(jax.tree.map(lambda x: x[0], a), *rest))
        return jax.vmap(fn, in_axes=(0, *[None] * len(rest)))(a, *rest)

    return over_seeds if sweep_axes is None else jax.vmap(over_seeds, in_axes=sweep_axes)


def _named(tree: Any) -> tuple[list[str], list[Any]]:
    """The leaves of a pytree with their paths ("[0].params['Dense_0']['kernel']", "['episode_return']")."""
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) for path, _ in pairs], [leaf for _, leaf in pairs]


def _save_state(path: Path, updates_done: int, carry: Any, metrics: list[Any], batch_axes: int,
                train_seconds: float) -> None:
    """The whole carry, the metrics and the training time so far, atomically (a kill mid-write keeps the
    previous state), each array with its name. (A resumed run's train_seconds is the sum over its processes,
    so its steps/s stay true.)"""
    carry_names, carry_leaves = _named(runlog.gather(carry))
    metric_names, metric_leaves = _named(jax.tree.map(lambda *m: np.concatenate(m, axis=batch_axes), *metrics))
    if jax.process_index() != 0:
        return
    arrays = {f"carry_{i}": np.asarray(x) for i, x in enumerate(carry_leaves)}
    arrays |= {f"metric_{i}": np.asarray(x) for i, x in enumerate(metric_leaves)}
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, updates_done=np.int64(updates_done), train_seconds=np.float64(train_seconds),
                 carry_names=np.array(carry_names), metric_names=np.array(metric_names), **arrays)
    os.replace(tmp, path)


def _load_state(path: Path, carry_shape: Any, metrics_shape: Any, num_updates: int, length: int):
    """The saved state, each array put back where its name says; refuses (naming them) names or shapes that
    differ from what this program makes."""
    if not path.exists():
        raise SystemExit(f"--resume: {path} does not exist. The run saved no state before it stopped (it saves "
                         f"one after each of its --num-checkpoints chunks; 1 means only at the end).")
    carry_names, shapes = _named(carry_shape)
    metric_names, metric_shapes = _named(metrics_shape)
    try:
        return _read_state(path, carry_shape, metrics_shape, carry_names, shapes, metric_names, num_updates, length)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:  # (SystemExit passes through)
        raise SystemExit(f"--resume: {path} is damaged ({type(error).__name__}: {error}); nothing was changed. The "
                         f"run cannot continue from it: start it again without --resume, into a new run directory.") from None


def _read_state(path, carry_shape, metrics_shape, carry_names, shapes, metric_names, num_updates, length):
    with np.load(path) as data:
        done, train_seconds = int(data["updates_done"]), float(data["train_seconds"])
        saved = {kind: ([str(n) for n in data[f"{kind}_names"]] if f"{kind}_names" in data else None)
                 for kind in ("carry", "metric")}
        for kind, names in (("carry", carry_names), ("metric", metric_names)):
            if saved[kind] is None:  # saved before names were recorded: accepted only if the counts agree
                count = sum(key.startswith(f"{kind}_") and key[len(kind) + 1:].isdigit() for key in data.files)
                saved[kind] = names if count == len(names) else [f"<{count} unnamed arrays>"]
        differ = [f"{kind} {name}" for kind, names in (("carry", carry_names), ("metric", metric_names))
                  for name in sorted(set(names) ^ set(saved[kind]))]
        if differ:
            raise SystemExit(f"--resume: the state in {path} does not hold what this file's program makes (it was "
                             f"saved by another version of the file or another config); differing: "
                             f"{', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}. Start a new run.")
        by_name = {kind: {name: data[f"{kind}_{i}"] for i, name in enumerate(saved[kind])} for kind in saved}
        leaves = [by_name["carry"][name] for name in carry_names]
        metric_leaves = [by_name["metric"][name] for name in metric_names]
    mismatched = [name for name, x, s in zip(carry_names, leaves, shapes) if x.shape != s.shape or x.dtype != s.dtype]
    if done % length or done > num_updates or mismatched:
        shapes_differ = f"; shapes differ: {', '.join(mismatched[:4])}" if mismatched else ""
        raise SystemExit(f"--resume: the state in {path} does not match this run's config (it was saved by another "
                         f"version of the file or another config{shapes_differ}). Start a new run.")
    carry = jax.tree.unflatten(jax.tree.structure(carry_shape), leaves)
    metrics = [jax.tree.unflatten(jax.tree.structure(metrics_shape), metric_leaves)] if done else []
    return done, carry, metrics, train_seconds


def _place(tree: Any, keys: jax.Array, batch_axes: int) -> Any:
    """Put a carry (fresh, restored or from the last chunk) on the devices the way the keys are: sharded along
    the seed axis if they are (a no-op when it already is)."""
    sharding = getattr(keys, "sharding", None)
    if sharding is None or len(sharding.device_set) == 1:
        return jax.tree.map(jnp.asarray, tree)
    from jax.sharding import NamedSharding, PartitionSpec

    spec = PartitionSpec(*([None] * (batch_axes - 1)), "seeds")
    return jax.device_put(tree, NamedSharding(sharding.mesh, spec))


def compile_and_run(fn: Callable, *args):
    """jit `fn`, compile it for `args`, run it; return (outputs, compile_seconds, run_seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    jax.effects_barrier()  # let the last progress callbacks finish before timing stops
    return out, compile_seconds, time.perf_counter() - t0

# ----------------------------------------------------------------------------------------------------
# TRAINED POLICIES: what scripts/evaluate.py rebuilds from a run directory


FINAL_EVALUATION = 0xE7A1  # fold_in constant of the final evaluation's key


def final_eval_key(seed: int) -> jax.Array:
    """The key of a run's last evaluation (its final_return), for every seed of the run: the seeds are measured
    on the same evaluation episodes (common random numbers), and `scripts/evaluate.py` can measure a saved
    policy on exactly those episodes again."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), FINAL_EVALUATION)


class Policy(NamedTuple):
    """One seed's trained policy, rebuilt from its checkpoint by the algorithm file's
    `trained_policy(config, checkpoint, seed_index)` (the checkpoint of that seed: numpy arrays).

    env, env_params      the env it acts in (the file's own wrappers; without the streaming statistics wrappers)
    start(obs) -> memory at the first observation of an episode (() for a memoryless policy)
    act(memory, obs, key) -> (env action, memory): the trained policy, greedy or deterministic (tanh of the
                         mean); one observation, no batch axis
    final_return() -> the run's own final evaluation of this policy, with the run's keys: summary.json's
                         final_return again; None where final_return is not an evaluation (stream-x)
    """

    env: Any
    env_params: Any
    act: Callable
    start: Callable = lambda obs: ()
    final_return: Callable | None = None


def checkpoint_of_seed(checkpoint: Any, index: int) -> Any:
    """Seed `index` of a checkpoint saved by finish_run (every array has a leading seed axis)."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[index]), checkpoint)


def restore(target_fn: Callable, state_dict: Any) -> Any:
    """The pytree that target_fn() builds (abstractly: nothing runs), with the values of `state_dict` (part of a
    loaded checkpoint, as flax saved it): e.g. a TrainState from the dict a file saved."""
    return serialization.from_state_dict(jax.eval_shape(target_fn), state_dict)
