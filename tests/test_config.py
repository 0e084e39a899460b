"""One source of configuration: the dataclasses in cdr.config / cdr.backends.base make the CLI flags, the flat
Python and YAML names and their checks. Bad values are one line naming the option (and its flag)."""

import argparse

import pytest

from cdr.backends import BACKENDS
from cdr.backends.base import BackendOptions
from cdr.cli import add_reward_options, build_parser, reward_config
from cdr.config import RewardConfig
from cdr.errors import CdrError
from conftest import cdr_in_process, write_jsonl

ROWS = [{"prompt": "Hi", "response": "Hello."}]


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_reward_options(parser)
    return reward_config(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--dtype", "fp16"], "--dtype: invalid choice: 'fp16'"),
        (["--device", "gpu"], "device (--device) must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        (["--threads", "0"], "threads (--threads) must be a whole number >= 1, got 0"),
        (["--variant", "median"], "--variant: invalid choice: 'median'"),
        (["--batch-tokens", "many"], "--batch-tokens: invalid int value: 'many'"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_flag(tmp_path, argv, fragment):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "o.jsonl"), *argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in lines if "error" in line]) == 1  # the usage line may precede it, nothing more


def test_backend_help_lists_every_backend():
    help_text = " ".join(build_parser().format_help().split())  # the root's help: subcommands only
    score = cdr_in_process("score", "--help")
    assert score.returncode == 0 and help_text
    backend_help = " ".join(score.stdout.split()).split("--backend ", 1)[1].split(" --strong-backend", 1)[0]
    for name in BACKENDS:
        assert name in backend_help, backend_help


@pytest.mark.parametrize(
    "yaml_text,fragment",
    [
        ("plain_format: 3\n", "plain_format must be a mapping"),
        ("plain_format:\n  usr: '{content}'\n", "plain_format: unknown key 'usr'"),
        ("plain_format:\n  user: 7\n", "plain_format.user must be a string, got 7"),
        ("dtype: fp16\n", "dtype (--dtype) must be one of"),
        ("device: gpu\n", "device (--device) must be"),
        ("remote_retries: -1\n", "remote_retries (--remote-retries) must be a whole number >= 0, got -1"),
        ("variant: sum\nvarient: sum\n", "line 2: unknown key 'varient'"),
    ],
)
def test_bad_yaml_values_are_one_line_naming_the_file_and_option(tmp_path, yaml_text, fragment):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(CdrError) as info:
        RewardConfig.from_yaml(cfg)
    message = str(info.value)
    assert message.startswith(str(cfg)) and fragment in message and "\n" not in message


def test_bad_plain_format_from_the_cli_config_is_one_line(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("plain_format:\n  usr: '{content}'\n")
    proc = cdr_in_process("score", str(src), "-o", str(tmp_path / "o.jsonl"), "--config", str(cfg))
    assert proc.returncode == 2 and "plain_format: unknown key 'usr'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_api_checks_the_same_way():
    with pytest.raises(CdrError, match=r"^dtype \(--dtype\) must be one of .*got 'fp16'$"):
        RewardConfig.from_flat(dtype="fp16")
    with pytest.raises(CdrError, match="unknown reward option 'dtyp'"):
        RewardConfig.from_flat(dtyp="float32")
    with pytest.raises(CdrError, match=r"threads \(--threads\) must be a whole number >= 1"):
        BackendOptions(threads=0)


def test_backend_options_reach_each_side():
    config = RewardConfig.from_flat(
        strong_url="http://s:1",
        weak_url="http://w:2",
        remote_timeout_s=7.5,
        remote_retries=0,
        tensor_parallel_size=2,
        dtype="bfloat16",
    )
    strong, weak = config.options_for("strong"), config.options_for("weak")
    assert (strong.url, weak.url) == ("http://s:1", "http://w:2")
    assert strong.timeout_s == weak.timeout_s == 7.5 and strong.retries == weak.retries == 0
    assert strong.tensor_parallel_size == weak.tensor_parallel_size == 2
    assert strong.dtype == weak.dtype == "bfloat16"
    assert config.options_for("router") is strong and config.options_for("policy") is strong


def test_a_per_side_option_wins_over_the_same_option_for_both():
    config = RewardConfig.from_flat(backend="hf", weak_backend="llamacpp")
    assert (config.backend_for("strong"), config.backend_for("weak")) == ("hf", "llamacpp")
    config = RewardConfig(strong_options=BackendOptions(threads=1)).replace(threads=2)
    assert config.strong_options.threads == config.weak_options.threads == 2


def test_flat_round_trips_and_names_sides_only_when_they_differ():
    config = RewardConfig.from_flat(threads=3, strong_url="http://s:1")
    flat = config.flat()
    assert flat["threads"] == 3 and flat["strong_url"] == "http://s:1" and flat["weak_url"] is None
    assert RewardConfig.from_flat(flat) == config
    split_config = RewardConfig(strong_options=BackendOptions(threads=1), weak_options=BackendOptions(threads=2))
    split = split_config.flat()
    assert "threads" not in split and (split["strong_threads"], split["weak_threads"]) == (1, 2)
    assert RewardConfig.from_flat(split) == split_config


def test_cli_flags_are_made_from_the_fields():
    default = parse()
    assert default == RewardConfig()
    config = parse(
        "--remote-timeout-s", "9", "--tensor-parallel-size", "2", "--weak-url", "http://w:2", "--exclude-eot"
    )
    assert config.weak_options.timeout_s == 9 and config.strong_options.tensor_parallel_size == 2
    assert config.weak_options.url == "http://w:2" and config.strong_options.url is None
    assert config.include_eot is False
