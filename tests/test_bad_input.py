"""Bad input fails before compiling, in every algorithm file, with one line that says how to fix it.

For each of the six files and each kind of mistake (an unknown env id, an env with the wrong action space,
sizes that do not fit together, a value out of its range) a case calls the file's `main([...flags])` as the
command line does and checks what `python algorithms/pqn.py --gamma 1.5` ends with today: a ConfigError (the
one error class of bad input, which `runner.cli` prints as one line) whose message is one line, names the flag
(or the env id) and says what to pass instead. Any other exception keeps its traceback on the command line
(`test_a_bug_keeps_its_traceback`).

"Nothing was compiled" is checked with a tripwire: for the length of each call `jax.jit` raises. Every program
these files compile is made by a `jax.jit` call at run time (make_train returns plain functions that
runner.run_program and the final evaluations of qarl.py and iwocs.py wrap; no module jits a function of its own at
import), so a run that got as far as compiling hits the tripwire first. It raises a BaseException, which no
`except Exception` on the way can swallow. `test_the_tripwire_catches_a_good_config` shows that it fires for
each file's default config, so a case that passes here did stop before compiling. Counting XLA compilations
(jax.monitoring) instead would not do: building an env runs a few eager jnp operations, each compiled the
first time a process sees it, so the count would depend on which test ran first. The modules are imported
before the tripwire is set (distrax jits functions at import).
"""

import jax
import pytest

import runner
from algorithms import iwocs, pqn, qarl, sac, sqirl, stream_x

MODULES = {"pqn": pqn, "sac": sac, "stream_x": stream_x, "sqirl": sqirl, "qarl": qarl, "iwocs": iwocs}


class CompileReached(BaseException):
    """Raised by the tripwire in place of jax.jit: the run got as far as compiling."""


@pytest.fixture
def tripwire(monkeypatch):
    def jit(fun=None, *args, **kwargs):
        raise CompileReached(f"jax.jit({getattr(fun, '__name__', fun)}) was called: the run reached compiling")

    monkeypatch.setattr(jax, "jit", jit)


def case(name, kind, flags, fix):
    """`fix`: a regex the message must match, the part that says what to pass instead."""
    return pytest.param(name, kind, flags, fix, id=f"{name}-{kind}-{' '.join(flags)}")


KINDS = ("env-id", "action-space", "sizes", "range")
CASES = [
    # unknown env id
    case("pqn", "env-id", ["--env-id", "CartPoel-v1"], r"Did you mean 'CartPole-v1'"),
    case("sac", "env-id", ["--env-id", "Pendulm-v1"], r"Did you mean 'Pendulum-v1'"),
    case("stream_x", "env-id", ["--env-id", "CartPoel-v1"], r"Did you mean 'CartPole-v1'"),
    case("sqirl", "env-id", ["--env-id", "CombinationLok-H4"], r"Did you mean 'CombinationLock-H4'"),
    case("qarl", "env-id", ["--env-id", "Pendulm-v1"], r"Did you mean 'Pendulum-v1'"),
    case("iwocs", "env-id", ["--env-id", "Pendulm-v1"], r"pass --env-id Pendulum-v1"),  # no uncertainty set
    # wrong action space
    case("pqn", "action-space", ["--env-id", "Pendulum-v1"], r"Pick a discrete environment .* or use SAC"),
    case("sac", "action-space", ["--env-id", "CartPole-v1"], r"Pick a continuous environment .* or use PQN"),
    case("stream_x", "action-space", ["--env-id", "Pendulum-v1"], r"Pick a discrete environment .* --learner ac"),
    case("sqirl", "action-space", ["--env-id", "Pendulum-v1"], r"Pick a discrete environment .* or use SAC"),
    case("qarl", "action-space", ["--env-id", "Acrobot-v1"], r"Pick a continuous environment"),
    case("iwocs", "action-space", ["--env-id", "CartPole-v1", "--uncertainty-set", "cartpole-2d"],
         r"Pick a continuous environment .* or use --env-id Pendulum-v1 --uncertainty-set pendulum-2d"),
    # sizes that do not fit together
    case("pqn", "sizes", ["--num-minibatches", "7"], r"divisible by num_minibatches \(7\): change --num-minibatches"),
    case("pqn", "sizes", ["--total-timesteps", "100"], r"total_timesteps \(100\) must be at least num_envs \*"),
    case("pqn", "sizes", ["--num-minibatches", "0"], r"num_minibatches must be at least 1"),
    case("pqn", "sizes", ["--num-envs", "0"], r"num_envs must be at least 1"),
    case("sac", "sizes", ["--updates-per-env-step", "0.3"], r"whole number .*: change --updates-per-env-step"),
    case("sac", "sizes", ["--total-timesteps", "2", "--num-envs", "4"], r"\(2\) must be at least num_envs \(4\)"),
    case("sac", "sizes", ["--total-timesteps", "1000", "--learning-starts", "1000"],
         r"no update: lower --learning-starts or raise --total-timesteps"),
    case("sac", "sizes", ["--buffer-size", "8", "--batch-size", "32"], r"buffer_size \(8\) .*raise --buffer-size"),
    case("stream_x", "sizes", ["--total-timesteps", "0"], r"total_timesteps must be at least 1"),
    case("sqirl", "sizes", ["--total-timesteps", "0"], r"pass --total-timesteps 1 or more"),
    case("sqirl", "sizes", ["--horizon", "0"], r"pass --horizon 1 or more"),
    case("sqirl", "sizes", ["--env-id", "CartPole-v1"], r"no horizon of its own: pass --horizon H"),
    case("qarl", "sizes", ["--total-timesteps", "100"], r"must cover one protagonist phase.* Raise --total-timesteps"),
    case("iwocs", "sizes", ["--updates-per-env-step", "0.3"], r"whole number .*: change --updates-per-env-step"),
    case("iwocs", "sizes", ["--total-timesteps", "1000"], r"outlast learning_starts .* Raise --total-timesteps"),
    # values out of range
    case("pqn", "range", ["--lr", "-1e-4"], r"lr must be positive"),
    case("pqn", "range", ["--sweep", "lr=1e-4,-1e-4"], r"lr must be positive, got -0.0001"),  # every swept value
    case("pqn", "range", ["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    case("pqn", "range", ["--td-lambda", "-0.1"], r"td_lambda must be in \[0, 1\]"),
    case("sac", "range", ["--actor-lr", "-3e-4"], r"actor_lr must be positive"),
    case("sac", "range", ["--critic-lr", "-3e-4"], r"critic_lr must be positive"),
    case("sac", "range", ["--sweep", "critic_lr=3e-4,-3e-4"], r"critic_lr must be positive, got -0.0003"),
    case("sac", "range", ["--alpha-lr", "-3e-4"], r"alpha_lr must be at least 0"),
    case("sac", "range", ["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    case("sac", "range", ["--tau", "2"], r"tau must be in \[0, 1\]"),
    case("stream_x", "range", ["--lr", "-1"], r"lr must be positive"),
    case("stream_x", "range", ["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    case("stream_x", "range", ["--td-lambda", "1.5"], r"td_lambda must be in \[0, 1\]"),
    case("sqirl", "range", ["--lr", "-1e-3"], r"lr must be positive"),
    case("sqirl", "range", ["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    case("qarl", "range", ["--actor-lr", "-3e-4"], r"actor_lr must be positive"),
    case("qarl", "range", ["--critic-lr", "-3e-4"], r"critic_lr must be positive"),
    case("qarl", "range", ["--alpha-lr", "-3e-4"], r"alpha_lr must be at least 0"),
    case("qarl", "range", ["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    case("qarl", "range", ["--tau", "-0.1"], r"tau must be in \[0, 1\]"),
    case("iwocs", "range", ["--actor-lr", "-3e-4"], r"actor_lr must be positive"),
    case("iwocs", "range", ["--critic-lr", "-3e-4"], r"critic_lr must be positive"),
    case("iwocs", "range", ["--alpha-lr", "-3e-4"], r"alpha_lr must be at least 0"),
    case("iwocs", "range", ["--gamma", "1.5"], r"gamma must be in \(0, 1\)"),
    case("iwocs", "range", ["--tau", "2"], r"tau must be in \[0, 1\]"),
]


def named(flags: list[str], message: str) -> bool:
    """The message names the case's flag (as --flag-name or field_name) or its value (an env id, a swept name)."""
    flag, value = flags[:2]
    return flag in message or flag[2:].replace("-", "_") in message or value.split("=")[0] in message


@pytest.mark.parametrize("name, kind, flags, fix", CASES)
def test_bad_input_fails_before_compiling_with_one_line_that_says_the_fix(name, kind, flags, fix, tripwire, tmp_path):
    with pytest.raises(runner.ConfigError, match=fix) as error:
        MODULES[name].main([*flags, "--quiet", "--run-dir", str(tmp_path / "run")])
    message = str(error.value)
    assert "\n" not in message, message
    assert named(flags, message), message
    assert not (tmp_path / "run").exists()  # nothing written either


def test_every_file_has_a_case_of_every_kind():
    covered = {param.values[:2] for param in CASES}
    assert covered == {(name, kind) for name in MODULES for kind in KINDS}, covered


@pytest.mark.parametrize("name", list(MODULES))
def test_the_tripwire_catches_a_good_config(name, tripwire, tmp_path):
    """The default config gets as far as compiling: the tripwire stops it there, so the cases above test it."""
    with pytest.raises(CompileReached):
        MODULES[name].main(["--quiet", "--run-dir", str(tmp_path / "run")])


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """`runner.cli` turns only a ConfigError into one line: any other exception raised before compiling (here a
    TypeError from an edited make_train) reaches the user whole, with its traceback."""

    def broken_make_train(config, progress=None):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(pqn, "make_train", broken_make_train)
    monkeypatch.setattr("sys.argv", ["pqn.py", "--quiet", "--run-dir", "unused"])
    with pytest.raises(TypeError, match="unsupported operand"):
        runner.cli(pqn.main)
    monkeypatch.setattr("sys.argv", ["pqn.py", "--gamma", "1.5"])
    with pytest.raises(SystemExit, match=r"^error: gamma must be in \[0, 1\]"):
        runner.cli(pqn.main)
