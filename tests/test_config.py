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
        ("train.lr=-0.1", "> 0"),
        ("train.batch_size=0", ">= 1"),
        ("model.stl_dropout=1.5", "[0, 0.99]"),
        ("train.jobs=two", "an integer"),
        ("seed=abc", "an integer"),
        ("split.k=2.5", "an integer"),
        ("train.max_epochs=inf", "an integer"),
        ("train.lr=nan", "finite"),
        ("train.batch_size=1.5", "an integer"),
        ("train.precision=bogus", "32-true"),
        ("model.stl_heads=5", "divide"),
        ("features.win_ms=0", "> 0"),
        ("train.class_weights=maybe", "true or false"),
        ("features.degenerate_share=nan", "finite"),
        ("train=5", "mapping"),
        ("train.strategy=fsdp", "auto | ddp | ddp_spawn"),
        ("train.num_nodes=0", ">= 1"),
        ("train.devices=-2", ">= 1"),
    ],
)
def test_bad_values_fail_at_load(override, words):
    with pytest.raises(ValueError, match="config") as e:
        config.load(None, [override])
    assert words in str(e.value) and override.split("=")[0] in str(e.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.kind=expert", "model.l2_grid=[.nan]"], "model.l2_grid"),
        (["model.kind=expert", "model.functionals=[foo]"], "model.functionals"),
        (["model.kind=expert", "model.l2_mode=best"], "select | average"),
        (["model.kind=expert", "model.level=quiet"], "keep | drop"),
        (["model.kind=expert", "model.functionals=[egemaps]", "model.level=drop"], "model.level"),
        (["model.kind=svm", "model.c_grid=[0]"], "model.c_grid"),
        (["model.kind=svm", "model.init=base"], "model.init"),
        (["train.strategy=ddp_spawn", "train.num_nodes=2"], "train.num_nodes=2"),
        (["train.devices=2", "train.jobs=2"], "train.jobs=2"),
    ],
)
def test_bad_values_of_a_kind_fail_at_load(overrides, words):
    with pytest.raises(ValueError, match="config") as e:
        config.load(None, overrides)
    assert words in str(e.value)


@pytest.mark.parametrize(
    "text, words",
    [
        ("!!python/object/apply:os.system ['true']", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("train: {lr: [1, 2\n", "not valid YAML (line"),
        ("model: 3\n", "model must be a mapping"),
    ],
)
def test_bad_config_files_are_refused_with_the_reason(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text.replace("\\n", "\n"))
    with pytest.raises(ValueError, match="config") as e:
        config.load(p)
    assert words in str(e.value)


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


def test_cli_refuses_several_machines_without_a_launcher(tmp_path, capsys, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    rc = main(["crossval", "--set", "train.num_nodes=2", "-o", str(out)])
    assert rc == 2 and "train.num_nodes=2" in capsys.readouterr().err
    assert not out.exists()


def test_overrides_and_with_value_do_not_mutate():
    base = {"train": {"lr": 0.1}}
    d = config.apply_overrides(base, ["train.lr=0.2", "model.d_lstm=8"])
    assert base == {"train": {"lr": 0.1}} and d["train"]["lr"] == 0.2
    cfg = config.load(None)
    other = config.with_value(cfg, "model.stl_layers", 2)
    assert cfg.model.stl_layers == 5 and other.model.stl_layers == 2
    assert config.parse_value("1e-3") == 0.001 and config.parse_value("[1,2]") == [1, 2]
