"""cli.py (`posenet-ros`): help for the command and for every subcommand, argument and override
errors as one line with exit code 2 (nothing written), user errors without a traceback unless
--verbose, Ctrl-C as exit code 130, and the console script. What each subcommand does is tested with
the module it wraps (test/<layer>/test_<module>.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import posenet_ros.cli as cli
from posenet_ros.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("synth", "train", "eval", "train-temporal", "calibrate", "saliency", "export", "make-bag",
               "replay", "play", "echo", "node")


def run_cli(*args: str, command: tuple[str, ...] = (sys.executable, "-m", "posenet_ros.cli")
            ) -> subprocess.CompletedProcess:
    """`posenet-ros ARGS` in a child process (this interpreter, this checkout)."""
    return subprocess.run([*command, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


def test_help_exits_0_and_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: posenet-ros") and result.stderr == ""
    for name in SUBCOMMANDS:
        assert name in result.stdout, name


def test_the_subcommands_are_the_documented_ones():
    (commands,) = [action for action in build_parser()._actions if action.dest == "command"]
    assert tuple(commands.choices) == SUBCOMMANDS


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: posenet-ros {name}")


def test_an_unknown_subcommand_is_one_clear_error_with_exit_code_2():
    result = run_cli("frobnicate")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = error_lines(result.stderr)
    assert line.startswith("posenet-ros: error: argument COMMAND: invalid choice: 'frobnicate'")
    assert "'synth'" in line and "'node'" in line  # the choices are listed
    assert "Traceback" not in result.stderr


def test_no_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert error_lines(capsys.readouterr().err) == [
        "posenet-ros: error: the following arguments are required: COMMAND"]


def test_a_bad_override_is_one_clear_error_with_exit_code_2_and_writes_nothing(tmp_path):
    result = run_cli("synth", str(tmp_path / "scene"), "widht=10")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "posenet-ros synth: error: unknown config key(s): widht (known: frames_per_sequence, heading_deg, "
        "height, hfov_deg, outside_sequences, room_scale, seed, test_sequences, train_sequences, "
        "val_sequences, variations, width, world_axes)"]
    assert not (tmp_path / "scene").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["synth", "OUT", "width=abc"], "posenet-ros synth: error: width: expected an integer, got 'abc'"),
    (["synth", "OUT", "width"], "posenet-ros synth: error: override 'width' is not of the form key=value"),
    # overrides after an option are overrides too
    (["synth", "OUT", "--quiet", "widht=3"], "posenet-ros synth: error: unknown config key(s): widht"),
    (["train", "--data", "OUT", "--out", "RUN", "epochs=two"],
     "posenet-ros train: error: epochs: expected an integer, got 'two'"),
    (["node", "--model", "RUN", "--param", "mc_samples:=-5"],
     "posenet-ros node: error: parameter 'mc_samples' must lie in [-1, 1024], got -5"),
    (["node", "--model", "RUN", "--param", "nonsense"],
     "posenet-ros node: error: expected NAME:=VALUE, got 'nonsense'"),
])


def test_bad_overrides_and_parameters_are_one_line_with_exit_code_2(args, message, tmp_path, capsys):
    args = [str(tmp_path / arg) if arg in ("OUT", "RUN") else arg for arg in args]
    assert main(args) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(message) and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_an_unrecognized_argument_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["synth", str(tmp_path / "scene"), "width=32", "--frob"])
    assert exited.value.code == 2
    assert error_lines(capsys.readouterr().err) == ["posenet-ros: error: unrecognized arguments: --frob"]
    assert not (tmp_path / "scene").exists()


@pytest.mark.parametrize(("value", "message"), [
    ("0.1,abc", "expected comma-separated numbers, got '0.1,abc'"),
    ("0.1,0.2", "expected 4 or 5 numbers k1,k2,p1,p2[,k3], got 2"),
])
def test_a_bad_distortion_is_an_argparse_error(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["synth", str(tmp_path / "scene"), "--distortion", value])
    assert exited.value.code == 2
    assert error_lines(capsys.readouterr().err) == [
        f"posenet-ros synth: error: argument --distortion: {message}"]
    assert not (tmp_path / "scene").exists()


def test_a_user_error_is_one_line_and_verbose_raises_it(tmp_path, capsys):
    args = ["eval", "--quiet", "--model", str(tmp_path / "missing"), "--data", str(tmp_path), "--out",
            str(tmp_path / "eval")]
    assert main(args) == 2
    assert capsys.readouterr().err == f"posenet-ros eval: error: no such checkpoint: {tmp_path / 'missing'}\n"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        main(["--verbose", *args])


def test_ctrl_c_is_exit_code_130(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_synth", interrupted)
    assert main(["synth", str(tmp_path / "scene")]) == 130
    assert capsys.readouterr().err == "posenet-ros synth: interrupted\n"


def test_the_console_script_answers_help():
    script = Path(sys.executable).with_name("posenet-ros")
    assert script.exists(), f"no posenet-ros console script beside {sys.executable} (pip install -e .)"
    result = run_cli("--help", command=(str(script),))
    assert result.returncode == 0 and result.stdout.startswith("usage: posenet-ros"), result.stderr
