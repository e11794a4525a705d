"""Config loading: allowed values are checked at load, before any work; overrides copy."""

from __future__ import annotations

import pytest

from stlser import config
from stlser.cli import main


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.monitor=val_uaa", "val_acc | val_ua | val_loss"),
        ("split.protocol=lososo", "loso | loso-session"),
        ("features.normalize=speakers", "none | global | speaker | utterance"),
        ("model.aggregation=max", "conv1d"),
        ("train.lr=-0.1", "outside"),
        ("train.batch_size=0", "outside"),
        ("model.stl_dropout=1.5", "outside"),
        ("train.jobs=two", "must be a number"),
        ("model.l2_mode=best", "select | average"),
    ],
)
def test_bad_values_fail_at_load(override, words):
    with pytest.raises(ValueError, match="config ") as e:
        config.load(None, [override])
    assert words in str(e.value) and override.split("=")[0] in str(e.value)


def test_packaged_configs_load():
    for name in (
        "demo.yaml",
        "recommended.yaml",
        "emodb_loso.yaml",
        "casia_loso.yaml",
        "nemo_loso.yaml",
        "paper_emodb_loso.yaml",
        "paper_casia_loso.yaml",
        "paper_nemo_loso.yaml",
        "paper_iemocap.yaml",
    ):
        assert config.load(name).name


def test_cli_rejects_bad_value_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["crossval", "--set", "train.monitor=val_uaa", "-o", str(out)])
    assert rc == 2 and "val_uaa" in capsys.readouterr().err
    assert not out.exists()  # nothing was prepared


def test_overrides_and_with_value_do_not_mutate():
    base = {"train": {"lr": 0.1}}
    d = config.apply_overrides(base, ["train.lr=0.2", "model.d_lstm=8"])
    assert base == {"train": {"lr": 0.1}} and d["train"]["lr"] == 0.2
    cfg = config.load(None)
    other = config.with_value(cfg, "model.stl_layers", 2)
    assert cfg.model.stl_layers == 5 and other.model.stl_layers == 2
    assert config.parse_value("1e-3") == 0.001 and config.parse_value("[1,2]") == [1, 2]
