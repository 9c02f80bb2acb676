"""agent.config: defaults, validation with every problem listed, the documented sample."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent import config
from agent.flows import FlowSettings

SAMPLE = Path(__file__).parents[2] / "firmware-config" / "agent.toml"


def test_no_file_gives_defaults() -> None:
    """Without a config file the agent runs on the documented defaults."""
    assert config.load(None) == config.AgentConfig()


def test_sample_parses_to_the_defaults() -> None:
    """The shipped sample is valid and its values are the defaults."""
    assert config.load(SAMPLE) == config.AgentConfig()


def test_sample_documents_every_field() -> None:
    """Every settings field appears in the sample, so the sample stays the reference."""
    sample = tomllib.loads(SAMPLE.read_text())
    for section in dataclasses.fields(config.AgentConfig):
        settings_type = section.default_factory  # type: ignore[misc]
        for field in dataclasses.fields(settings_type):
            if (section.name, field.name) == ("detectors", "tuning"):  # one table per detector, not a key
                continue
            assert field.name in sample[section.name], f"{section.name}.{field.name} missing from sample"


def test_values_are_applied() -> None:
    """Values in the document override the defaults."""
    settings = config.parse({"flows": {"idle_timeout": 30, "max_flows": 10}, "capture": {"bpf": "tcp"}})
    assert settings.flows == FlowSettings(idle_timeout=30, max_flows=10)
    assert settings.capture.bpf == "tcp"


def test_every_problem_is_listed_with_its_path() -> None:
    """Several bad values and unknown keys are all reported, each with its dotted path."""
    with pytest.raises(config.ConfigError) as caught:
        config.parse({"capture": {"snaplen": 0, "promiscuous": "yes", "colour": 1},
                      "flows": {"idle_timeout": 0}, "extra": {}})
    paths = sorted(p.split(":")[0] for p in caught.value.problems)
    expected = ["capture.colour", "capture.promiscuous", "capture.snaplen", "extra", "flows.idle_timeout"]
    assert paths == expected


def test_booleans_are_not_numbers() -> None:
    """`true` is refused where a number is expected."""
    with pytest.raises(config.ConfigError, match=r"flows\.max_flows"):
        config.parse({"flows": {"max_flows": True}})


def test_active_timeout_not_below_idle() -> None:
    """An active timeout shorter than the idle timeout is refused."""
    with pytest.raises(config.ConfigError, match=r"flows\.active_timeout"):
        config.parse({"flows": {"idle_timeout": 120, "active_timeout": 60}})


def test_unknown_log_level_is_refused() -> None:
    """The log level must be one of the known names."""
    with pytest.raises(config.ConfigError, match=r"log\.level"):
        config.parse({"log": {"level": "loud"}})


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    """A file that is not TOML is refused with the parser's reason."""
    bad = tmp_path / "agent.toml"
    bad.write_text("[capture\nsnaplen = 3")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A config path that does not exist is a config error, not a crash."""
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.toml")


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_capture_workers_in_range_are_accepted(workers: int) -> None:
    """capture.workers from 1 to 16 is taken as given."""
    assert config.parse({"capture": {"workers": workers}}).capture.workers == workers


@pytest.mark.parametrize("workers", [0, 17, "2", 1.5, True])
def test_capture_workers_out_of_range_or_not_an_integer_is_refused(workers: object) -> None:
    """capture.workers outside 1-16, or not an integer, is refused with its path."""
    with pytest.raises(config.ConfigError, match=r"capture\.workers"):
        config.parse({"capture": {"workers": workers}})
