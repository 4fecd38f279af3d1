"""`hps --help`: every argument explained, an example per subcommand; errors name flags, not Python
parameters; `hps -v` shows the loading phases."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest

from hps.cli.flag_words import flag_words
from hps.cli.main import _parser, main


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subcommands(sub, path + (name,))


def test_every_subcommand_has_an_example_and_every_argument_help():
    commands = list(_subcommands(_parser()))
    assert {" ".join(p) for p, _ in commands} >= {"inspect", "lookup", "convert", "demo", "publish", "triton",
                                                   "triton build", "triton serve", "triton convert",
                                                   "triton add-model"}
    for path, sub in commands:
        name = " ".join(path)
        assert sub.epilog and "example" in sub.epilog and f"hps {name}" in sub.epilog, name
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"hps {name} {action.option_strings or action.dest}: no help"


def test_examples_parse():
    """Every example line in the epilogs is a command line the parser accepts."""
    import shlex

    parser = _parser()
    for path, sub in _subcommands(parser):
        for line in sub.epilog.splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith("hps "):
                continue
            for command in line.split("&&"):
                words = shlex.split(command.split(">")[0])
                parser.parse_args(words[1:])  # raises SystemExit on an invalid line


def test_flag_words():
    flags = {"overwrite": "--overwrite", "allow_pickle": "--allow-pickle", "param_name": "--param",
             "instance_count": "--instances", "layout": "--layout"}
    assert flag_words("t0 already exists; pass overwrite=True to replace it", flags) == \
        "t0 already exists; pass --overwrite to replace it"
    assert flag_words("s3://b/t already exists (it holds [key]); pass overwrite=True (hps convert --overwrite) to "
                      "replace it", flags) == "s3://b/t already exists (it holds [key]); pass --overwrite to replace it"
    assert flag_words("if you trust the file, pass --allow-pickle (hps convert) or allow_pickle=True (convert_file), "
                      "or re-save it", flags) == "if you trust the file, pass --allow-pickle, or re-save it"
    assert flag_words("convert: param_name='w' given", flags) == "convert: --param w given"
    assert flag_words("name the embedding table with param_name", flags) == "name the embedding table with --param"
    assert flag_words("use instance_count=1 or set", flags) == "use --instances 1 or set"
    assert flag_words("cannot be fused; use layout='ensemble'", flags) == "cannot be fused; use --layout ensemble"
    assert flag_words("pass overwrite=True", {}) == "pass overwrite=True"


def test_convert_refusal_names_the_flag(tmp_path, capsys):
    np.save(tmp_path / "table.npy", np.ones((4, 2), np.float32))
    args = ["convert", str(tmp_path / "table.npy"), str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert main([*args, "--overwrite"]) == 0


def test_npy_with_param_names_the_flag(tmp_path, capsys):
    np.save(tmp_path / "table.npy", np.ones((4, 2), np.float32))
    assert main(["convert", str(tmp_path / "table.npy"), str(tmp_path / "out"), "--param", "w"]) == 2
    err = capsys.readouterr().err
    assert "--param w given" in err and "param_name=" not in err


def test_verbose_logs_each_loading_phase(small_table, capsys, caplog):
    caplog.set_level(logging.INFO, logger="hps.lookup.loading")
    assert main(["lookup", str(small_table), "--through-hps", "3"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "hps.lookup.loading"]
    assert any("validated 1 sparse file(s), 100 rows" in m for m in messages), messages
    assert any("hps_et.m.sparse_embedding0: 100 rows into" in m for m in messages), messages
    assert capsys.readouterr().out == "3\tfound\t1.0 1.25 1.5 1.75\n"


def test_no_command_prints_help():
    assert main([]) == 2


@pytest.mark.parametrize("argv", [["-v", "lookup", "--help"], ["inspect", "--help"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "example" in capsys.readouterr().out
