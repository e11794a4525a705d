"""The expert-feature recognizer (`model.kind: expert`, stlser.kinds.expert and stlser.heads): fitting, crossval, artefact, predict, ONNX,
service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stlser import config, heads, testing
from stlser.kinds import expert, functionals


def test_fit_head_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 20)) + 3.0 * np.eye(3, 20)[y]
    a = heads.fit_head(heads.Head(20, 3), X, y, l2=1e-2)
    b = heads.fit_head(heads.Head(20, 3), X, y, l2=1e-2)
    with torch.no_grad():
        lp = a(torch.as_tensor(X, dtype=torch.float32))
        assert torch.equal(lp, b(torch.as_tensor(X, dtype=torch.float32)))
    assert (lp.argmax(1).numpy() == y).mean() > 0.95
    # a stronger L2 shrinks the weights
    c = heads.fit_head(heads.Head(20, 3), X, y, l2=10.0)
    assert c.linear.weight.norm() < a.linear.weight.norm()


def test_rows_times_is_z_at_v_with_its_gradient():
    """fit_head's product (both layouts of the rows) equals Z @ V, and its gradient is exact."""
    Z = torch.randn(7, 5, dtype=torch.float64)
    V = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    Zt = Z.T.contiguous()
    assert torch.allclose(heads._RowsTimes.apply(V, Z, Zt), Z @ V)
    assert torch.autograd.gradcheck(lambda v: heads._RowsTimes.apply(v, Z, Zt), (V,))


def test_row_weights_balance_classes_by_their_weighted_mass():
    """Uniform weights give the unweighted fit; a row weighted 0 only moves the standardisation
    (its loss term vanishes), and down-weighting one class's rows is undone by the balancing."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    X = rng.normal(size=(90, 8)) + 2.0 * np.eye(3, 8)[y]
    plain = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2)
    # float32 L-BFGS stops within ~2e-4 of the optimum (weights ~1.6); a wrong weighting
    # moves them by ~0.25 (the `odd` fit below)
    same = dict(atol=1e-3, rtol=1e-3)
    ones = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2, weight=np.full(90, 3.0))
    torch.testing.assert_close(ones.linear.weight, plain.linear.weight, **same)
    w = np.where(y == 0, 0.25, 1.0)  # class 0 is lighter, but balancing restores its mass
    scaled = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2, weight=w)
    torch.testing.assert_close(scaled.linear.weight, plain.linear.weight, **same)
    w = np.where(np.arange(90) % 2 == 0, 1.0, 0.05)  # half the rows nearly ignored
    odd = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2, weight=w)
    assert not torch.allclose(odd.linear.weight, plain.linear.weight, atol=1e-3)


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("rows", ["distinct", "duplicated", "shared"])
def test_row_space_fit_equals_the_full_fit(with_prior, rows):
    """More features than rows: the fit in the span of the rows reaches the same head (around a
    zero centre or a pretrained one), at a fraction of the cost — also when rows repeat (a Gram
    matrix of lower rank), and with one design shared by several fits (a grid)."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 6)
    d = 40 if rows == "shared" else 80
    X = rng.normal(size=(18, d)) + 1.5 * np.eye(3, d)[y]
    if rows == "duplicated":
        X[5] = X[4]
    prior = None
    if with_prior:
        base = heads.fit_head(heads.Head(d, 3), rng.normal(size=(60, d)), np.arange(60) % 3, 1.0)
        prior = heads.Prior(base, [0, 1, 2])
    design = heads.Design(X, fits=4 if rows == "shared" else 1)
    # the rank: 18 rows, centred (one dependency), one of them repeated (another)
    assert design.L.shape[1] == (16 if rows == "duplicated" else 17)
    assert heads.Design(X).L is None if rows == "shared" else True  # one fit: not worth it
    kw = dict(l2=0.3, prior=prior, max_iter=500)
    full = heads.fit_head(heads.Head(d, 3), X, y, row_space=False, **kw)
    fit = heads.fit_head(heads.Head(d, 3), X, y, design=design, **kw)
    torch.testing.assert_close(fit.linear.weight, full.linear.weight, atol=2e-4, rtol=1e-3)
    # the bias is not penalised and converges least tightly: the two fits stop up to 3.6e-4
    # apart on an AVX-512 host (the weights within 2e-5)
    torch.testing.assert_close(fit.linear.bias, full.linear.bias, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fit.center, full.center)


def test_balance_gives_each_class_its_share_and_keeps_rows_distributions():
    lp = torch.log_softmax(torch.randn(30, 4), -1)
    share = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = heads.balance(lp, share).exp()
    torch.testing.assert_close(out.sum(1), torch.ones(30))
    torch.testing.assert_close(out.sum(0), 30 * share, atol=1e-3, rtol=1e-3)


def test_heads_average_log_probabilities():
    torch.manual_seed(0)
    m = heads.LogisticHeads([4, 6], 3).eval()
    z = torch.randn(5, 10)
    lp = m.log_probs(z)
    want = (m.heads[0](z[:, :4]) + m.heads[1](z[:, 4:])) / 2
    assert torch.allclose(lp, want)
    # forward applies the stored global normalisation, then normalises the average
    m.mean.fill_(1.0)
    m.std.fill_(2.0)
    x = torch.randn(5, 10)
    assert torch.allclose(m(x), torch.softmax(m.log_probs((x - 1.0) / 2.0), -1))
    assert torch.allclose(m(x).sum(1), torch.ones(5))


@pytest.mark.parametrize("with_prior", [False, True])
def test_average_mode_heads_are_the_mean_of_every_l2_fit(with_prior):
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    Z = rng.normal(size=(60, 9)) + np.eye(3, 9)[y]
    train, val, grid = np.arange(0, 40), np.arange(40, 60), [0.01, 1.0]
    prior = heads.fit_head(heads.Head(4, 3), Z[:, 5:], y, 0.1) if with_prior else None
    priors = [None, heads.Prior(prior, [0, 1, 2])] if with_prior else None
    model, sel = heads.fit_heads(Z, y, [5, 4], 3, train, val, grid, priors, mode="average")
    assert sel["val_ua"] is None and sel["l2"] == [grid, grid] and sel["l2_mode"] == "average"
    rows = np.concatenate([train, val])  # the validation rows are fitted too: nothing is chosen
    for i, sl in enumerate([slice(0, 5), slice(5, 9)]):
        cands = [(l2, None) for l2 in grid]
        if with_prior and i == 1:
            cands += [(l2, priors[1]) for l2 in grid]
            assert sel["l2_centre"] == ["zero", "zero+pretrained"]
        fits = [
            heads.fit_head(heads.Head(Z[:, sl].shape[1], 3), Z[rows, sl], y[rows], l2, prior=p)
            for l2, p in cands
        ]
        want = torch.stack([f.linear.weight for f in fits]).mean(0)
        assert torch.allclose(model.heads[i].linear.weight, want, atol=1e-6)
    # the merged head is exact: its log-probabilities are the log-softmax of the fits' mean logits
    fits = [heads.fit_head(heads.Head(5, 3), Z[rows, :5], y[rows], l2) for l2 in grid]
    z = torch.as_tensor(Z[:, :5], dtype=torch.float32)
    with torch.no_grad():
        logits = torch.stack([f.linear((z - f.center) / f.scale) for f in fits]).mean(0)
        assert torch.allclose(model.heads[0](z), torch.log_softmax(logits, -1), atol=1e-5)


@pytest.mark.parametrize("mode", ["average", "select"])
def test_speed_copies_join_the_fits_of_the_rows_they_copy(mode):
    rng = np.random.default_rng(4)
    y = np.tile(np.repeat(np.arange(3), 20), 2)  # rows 60-119: the copies of rows 0-59
    Z = rng.normal(size=(120, 6)) + np.eye(3, 6)[y]
    tr, va, grid = np.arange(0, 40), np.arange(40, 60), [0.01, 1.0]
    got, sel = heads.fit_heads(Z, y, [6], 3, tr, va, grid, mode=mode, copies=(tr + 60, va + 60))
    if mode == "average":  # the same as fitting the copies as rows of their own
        rows = np.r_[tr, va, tr + 60, va + 60]
        want, _ = heads.fit_heads(Z, y, [6], 3, rows, va[:0], grid, mode=mode)
        want = want.heads[0].linear.weight
    else:  # candidates fit train + its copies and are scored on the original val rows only
        _, ref = heads.fit_heads(Z, y, [6], 3, np.r_[tr, tr + 60], va, grid, mode=mode)
        assert sel["l2"] == ref["l2"] and sel["val_ua"] == ref["val_ua"]
        rows = np.r_[tr, va, tr + 60, va + 60]  # the refit: every row and every copy
        h = heads.fit_head(heads.Head(6, 3), Z[rows], y[rows], sel["l2"][0])
        want = h.linear.weight
    assert torch.allclose(got.heads[0].linear.weight, want, atol=1e-5)


def test_speed_copies_are_cached_apart_and_perturbed(tmp_path):
    from stlser import audio, smile
    from stlser.config import FeatureConfig
    from stlser.features import FeatureCache

    t = np.arange(16_000) / 16_000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.3 * t))).astype(np.float32)
    path = tmp_path / "a.wav"
    audio.write_wav(path, wave)
    cfg = FeatureConfig(kind="egemaps")
    plain, fast = (FeatureCache(tmp_path, cfg, "functionals", v) for v in (1.0, 1.1))
    assert plain.key(path) != fast.key(path) and plain.root != fast.root
    want = smile.functionals(audio.speed_perturb(audio.load(path), 1.1), 16_000, "egemaps")
    assert np.allclose(fast.get_or_compute(path), want)
    assert not np.allclose(plain.get_or_compute(path), want)
    with pytest.raises(ValueError, match="functionals only"):
        FeatureCache(tmp_path, cfg, "frames", 1.1)
    with pytest.raises(ValueError, match="model.speeds"):
        config.load(None, ["model.speeds=[1.0, 1.1]"])


def test_average_heads_refuses_heads_of_other_rows():
    a, b = heads.Head(2, 2), heads.Head(2, 2)
    b.center.fill_(1.0)
    with pytest.raises(ValueError, match="different rows"):
        heads.average_heads([a, b])


def test_unknown_functional_set_is_refused():
    with pytest.raises(ValueError, match="model.functionals"):
        functionals.set_dims(["egemaps", "mfcc"])
    with pytest.raises(ValueError, match="model.kind"):
        config.load(None, ["model.kind=svn"])
    with pytest.raises(ValueError, match="model.functionals"):
        config.load(None, ["model.kind=expert", "model.functionals=[egemaps, mfcc]"])


@pytest.fixture(scope="module")
def expert_run(synth_corpus, tmp_path_factory):
    from stlser import driver

    out = tmp_path_factory.mktemp("expert")
    cfg = config.load(
        "recommended.yaml",
        [
            "data.corpus=synth",
            f"data.root={synth_corpus}",
            "split.val_speakers=1",
            f"cache_dir={out / 'cache'}",
            "train.progress=false",
        ],
    )
    return driver.crossval(cfg, out / "run")


def _on_synth(expert_run, synth_corpus, *extra: str) -> list[str]:
    """Overrides of recommended.yaml for the synthetic corpus, on the fixture's feature cache."""
    return [
        "data.corpus=synth",
        f"data.root={synth_corpus}",
        "split.val_speakers=1",
        f"cache_dir={expert_run.parent / 'cache'}",
        "train.progress=false",
        *extra,
    ]


def test_crossval_writes_report_and_artefacts(expert_run):
    from stlser.results import RunReport

    rep = RunReport.load(expert_run / "report.json")
    assert len(rep.folds) == 4 and rep.speaker_independent
    assert rep.extra["system"] == expert.SYSTEM and rep.extra["speed_copies"] == [0.9, 1.1]
    assert rep.ua > 0.5  # 4 classes of strongly different synthetic prosody; chance 0.25
    fold = json.loads((expert_run / "fold_00" / "fold.json").read_text())
    assert len(fold["l2"]) == 2 and fold["val_speakers"]
    model, art = expert.from_artefact(expert_run / "fold_00" / "model.pt")
    assert art["format"] == expert.FORMAT and model.dims == [96, 4282]


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_crossval_in_one_process_matches_two(expert_run, tmp_path, synth_corpus):
    import pandas as pd

    from stlser import driver

    cfg = config.load(
        "recommended.yaml",
        [
            "data.corpus=synth",
            f"data.root={synth_corpus}",
            "split.val_speakers=1",
            f"cache_dir={expert_run.parent / 'cache'}",
            "train.progress=false",
            "train.jobs=1",
            "train.num_threads=1",  # as each of the two processes has: J alone differs
        ],
    )
    # the fixture's run (recommended.yaml as shipped) fitted its folds in two processes
    assert config.load("recommended.yaml").train.jobs == 2
    run = driver.crossval(cfg, tmp_path / "one")
    two = pd.read_csv(expert_run / "predictions.csv")
    one = pd.read_csv(run / "predictions.csv")
    assert list(one["utt_id"]) == list(two["utt_id"])  # folds reassembled in their order
    probs = [c for c in one.columns if c.startswith("prob_")]
    assert probs and np.abs(one[probs].to_numpy() - two[probs].to_numpy()).max() < 1e-4
    assert sorted(p.name for p in run.glob("fold_*")) == sorted(
        p.name for p in expert_run.glob("fold_*")
    )


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_crossval_with_speed_copies(expert_run, tmp_path, synth_corpus):
    import pandas as pd

    from stlser import driver
    from stlser.results import RunReport

    over = _on_synth(expert_run, synth_corpus, "model.init=null", "model.functionals=[compact]")
    runs = {
        v: driver.crossval(
            config.load("recommended.yaml", [*over, f"model.speeds={v}"]), tmp_path / str(i)
        )
        for i, v in enumerate(["[]", "[0.9,1.1]"])
    }
    rep = RunReport.load(runs["[0.9,1.1]"] / "report.json")
    assert rep.extra["speed_copies"] == [0.9, 1.1] and rep.ua > 0.5
    base = RunReport.load(runs["[]"] / "report.json")
    assert [f.n for f in rep.folds] == [f.n for f in base.folds]  # the originals tested
    fold = json.loads((runs["[0.9,1.1]"] / "fold_00" / "fold.json").read_text())
    assert (
        fold["n_train"] == json.loads((runs["[]"] / "fold_00" / "fold.json").read_text())["n_train"]
    )
    a, b = (pd.read_csv(r / "predictions.csv") for r in runs.values())
    probs = [c for c in a.columns if c.startswith("prob_")]
    assert np.abs(a[probs].to_numpy() - b[probs].to_numpy()).max() > 1e-3  # the copies count


def test_level_drop_fits_zero_weights_on_the_values_a_gain_moves(
    expert_run, tmp_path, synth_corpus
):
    """`model.level: drop`: the heads' weights on the level columns are exactly 0 (elsewhere
    not), and the recognizer answers a clip with digital-silence pauses and its copies 20 and
    40 dB quieter alike (the functionals are relative to the clip's level)."""
    from stlser import driver
    from stlser.inference import Recognizer

    over = _on_synth(
        expert_run, synth_corpus, "split.folds=[0]", "model.speeds=[]", "model.level=drop"
    )
    run = driver.crossval(config.load("recommended.yaml", over), tmp_path / "drop")
    model, _ = expert.from_artefact(run / "fold_00" / "model.pt")
    w = torch.cat([h.linear.weight.detach() for h in model.heads], dim=1).abs().amax(0).numpy()
    mask = expert.dropped_columns(config.load("recommended.yaml", over).model)
    assert mask.sum() > 300 and (w[mask] == 0).all() and (w[~mask] > 0).mean() > 0.9
    rec = Recognizer.load(run / "fold_00" / "model.pt")
    kept = Recognizer.load(expert_run / "fold_00" / "model.pt")
    tone = testing.tone(0.8, freq=210, harmonics=4, am_hz=4, noise=0.01)
    clip = np.concatenate([tone, np.zeros(4000, np.float32), tone[::2], np.zeros(2000, np.float32)])

    def change(r, gain: float) -> float:
        a, b = r.predict(clip, 16000), r.predict(gain * clip, 16000)
        return max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities)

    for gain in (0.1, 0.01):
        assert change(rec, gain) < 0.005 and change(kept, gain) > 0.02, gain


def _tones() -> list[np.ndarray]:
    return [testing.tone(s, freq=f, harmonics=4, am_hz=4) for s, f in ((1.2, 180), (2.3, 260))]


def test_recognizer_and_service_agree(expert_run):
    from fastapi.testclient import TestClient

    from stlser.inference import Recognizer
    from stlser.kinds.functionals import FunctionalsRecognizer as ExpertRecognizer
    from stlser.service import create_app

    model = expert_run / "fold_00" / "model.pt"
    rec = Recognizer.load(model)
    assert isinstance(rec, ExpertRecognizer)
    clips = _tones()
    p1 = rec.predict_batch(clips, sample_rate=16000)
    p2 = rec.predict_batch(clips, sample_rate=16000)
    assert [a.probabilities for a in p1] == [b.probabilities for b in p2]  # deterministic
    alone = rec.predict(clips[0], sample_rate=16000)  # batched = one at a time
    assert (
        max(abs(alone.probabilities[k] - p1[0].probabilities[k]) for k in alone.probabilities)
        < 1e-4
    )
    segs = rec.segments(np.concatenate([clips[1], np.zeros(16000, np.float32), clips[1]]), 16000)
    assert segs and all(s.label in rec.labels for s in segs)
    with TestClient(create_app(str(model)), base_url="http://127.0.0.1") as c:
        r = c.post("/predict", files={"file": ("a.wav", testing.wav_bytes(clips[0]), "audio/wav")})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == p1[0].label


@pytest.mark.slow
def test_recognizer_and_onnx_agree_on_test_tones(expert_run, tmp_path):
    from stlser.export import export_onnx
    from stlser.inference import Recognizer

    rec = Recognizer.load(expert_run / "fold_00" / "model.pt")
    clips = _tones()
    p1 = rec.predict_batch(clips, sample_rate=16000)
    orec = Recognizer.load(export_onnx(expert_run / "fold_00" / "model.pt", tmp_path / "m.onnx"))
    # the graph carries the global statistics a speaker's are shrunk toward when adapting
    assert all(
        np.array_equal(a, b) for a, b in zip(orec.global_stats, rec.global_stats, strict=True)
    )
    # Exactly periodic test tones tie many frame values, so the step functionals (positions of
    # the extremes, rise / fall and up-level times) can flip between torch and onnxruntime on
    # rounding (measured 0.012 here; < 1e-4 on speech-like clips: tests/test_own_sets.py).
    for a, b in zip(p1, orec.predict_batch(clips, sample_rate=16000), strict=True):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.03


def test_label_mask_keeps_each_row_to_its_corpus_labels():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    X = rng.normal(size=(90, 8)) + 2.0 * np.eye(3, 8)[y]
    mask = np.ones((90, 3), bool)
    mask[:60, 2] = False  # the first corpus has no label 2 (its rows are labels 0 and 1)
    h = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2, mask=mask)
    free = heads.fit_head(heads.Head(8, 3), X, y, l2=1e-2)
    assert not torch.equal(h.linear.weight, free.linear.weight)  # the mask changes the fit
    with torch.no_grad():
        lp = h(torch.as_tensor(X, dtype=torch.float32))
    # predicted within each row's own labels (as the leave-one-corpus-out scoring does)
    pred = lp.masked_fill(~torch.as_tensor(mask), -1e9).argmax(1).numpy()
    assert (pred == y).mean() > 0.9


def test_restrict_renormalises_and_refuses_unknown_labels(expert_run):
    from stlser.inference import Recognizer

    rec = Recognizer.load(expert_run / "fold_00" / "model.pt")
    clip = testing.tone(1.5, freq=220, harmonics=4, am_hz=4)
    full = rec.predict(clip, 16000).probabilities
    keep = rec.labels[:2]
    part = rec.restrict(keep).predict(clip, 16000).probabilities
    assert list(part) == keep and abs(sum(part.values()) - 1) < 1e-9
    total = sum(full[k] for k in keep)
    for k in keep:
        assert abs(part[k] - full[k] / total) < 1e-6
    with pytest.raises(ValueError, match="the model knows"):
        rec.restrict(["calm"])
    assert rec.restrict(None).labels == list(full)


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_pretrain_pools_corpora_and_scores_each_left_out(synth_corpus, tmp_path, monkeypatch):
    from stlser import pretrain
    from stlser.inference import Recognizer

    root = tmp_path / "pool"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).symlink_to(synth_corpus, target_is_directory=True)
    cfg = config.load(
        "pretrain.yaml",
        [
            f"data.root={root}",
            "data.pool=[synth=a, synth=b]",
            "model.functionals=[egemaps]",
            "model.level=keep",
            f"cache_dir={tmp_path / 'cache'}",
            "train.progress=false",
        ],
    )
    path = pretrain.pretrain(cfg, tmp_path / "out")
    rec = Recognizer.load(path)
    assert rec.labels == [v for v in pretrain.VOCAB if v in rec.labels] and len(rec.labels) == 4
    onnx_rec = Recognizer.load(tmp_path / "out" / "model.onnx")
    clip = testing.tone(1.0, freq=200, harmonics=3, am_hz=3)
    a, b = rec.predict(clip, 16000), onnx_rec.predict(clip, 16000)
    assert a.label == b.label
    res = pretrain.leave_one_corpus_out(cfg, tmp_path / "out")
    assert (tmp_path / "out" / "without-a" / "model.pt").exists()  # kept for fine-tuning
    # fitted from the pooled rows it was handed: the same model pretrain makes on its own
    alone = pretrain.pretrain(config.with_value(cfg, "data.pool", ["synth=b"]), tmp_path / "b")
    for got, want in zip(
        expert.from_artefact(tmp_path / "out" / "without-a" / "model.pt")[0].state_dict().values(),
        expert.from_artefact(alone)[0].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(got, want)

    def no_fit(*a, **k):
        raise AssertionError("a finished model of the same recipe must be reused")

    monkeypatch.setattr(pretrain, "fit_pool", no_fit)
    assert pretrain.pretrain(cfg, tmp_path / "out") == path  # idempotent
    again = pretrain.leave_one_corpus_out(cfg, tmp_path / "out")
    assert again["a"]["speaker_norm"] == res["a"]["speaker_norm"]
    other = config.with_value(cfg, "seed", 1)  # another recipe is refit
    with pytest.raises(AssertionError, match="reused"):
        pretrain.pretrain(other, tmp_path / "out")
    assert set(res) == {"a", "b"} and res["a"]["train"] == ["b"]
    assert 0 <= res["a"]["speaker_norm"]["ua"] <= 1 and "svm" in res["a"]
    loco_md = (tmp_path / "out" / "loco.md").read_text()
    assert "| a | b |" in loco_md and "Confusion, a" in loco_md
    assert np.sum(res["a"]["speaker_norm"]["confusion"]) == res["a"]["speaker_norm"]["n"]
    # answer settings fitted on the held-out predictions, in both of the model's files
    temps = expert.from_artefact(path)[1]["meta"]["temperature"]
    assert set(temps) == {"global", "speaker"}
    assert Recognizer.load(path).temperature == temps
    assert Recognizer.load(tmp_path / "out" / "model.onnx").temperature == temps
    assert "Every clip" in loco_md and "Answers given" in loco_md
    rel = res["a"]["reliability_global"]
    assert 0 <= rel["ece_after"] <= 1 and rel["temperature"] > 0
    assert abs(sum(res["a"]["every_label_global"]["answered"].values()) - 1) < 1e-9


def test_prior_reexpresses_the_pretrained_head_exactly():
    """Before any step, a head started from a Prior gives the pretrained logits, whatever the
    new fit's standardisation; labels the pretrained head lacks start at zero."""
    torch.manual_seed(0)
    old = heads.Head(5, 3)
    old.center.copy_(torch.randn(5))
    old.scale.copy_(torch.rand(5) + 0.5)
    prior = heads.Prior(old, [2, 0, -1])  # new labels: old 2, old 0, one new label
    center, scale = torch.randn(5), torch.rand(5) + 0.5
    W0, b0 = prior.weights(center, scale)
    x = torch.randn(7, 5)
    new_logits = ((x - center) / scale) @ W0 + b0
    old_logits = old.linear((x - old.center) / old.scale)
    assert torch.allclose(new_logits[:, :2], old_logits[:, [2, 0]], atol=1e-5)
    assert torch.equal(W0[:, 2], torch.zeros(5)) and b0[2] == 0


def test_fit_head_with_prior_is_pulled_toward_it():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 30)
    X = rng.normal(size=(60, 8)) + 1.5 * np.eye(2, 8)[y]
    base = heads.fit_head(heads.Head(8, 2), X, y, l2=1e-2)
    flipped = heads.Head(8, 2)  # a "pretrained" head that predicts the opposite
    flipped.center.copy_(base.center)
    flipped.scale.copy_(base.scale)
    with torch.no_grad():
        flipped.linear.weight.copy_(base.linear.weight.flip(0))
    strong = heads.fit_head(heads.Head(8, 2), X, y, l2=1e3, prior=heads.Prior(flipped, [0, 1]))
    weak = heads.fit_head(heads.Head(8, 2), X, y, l2=1e-4, prior=heads.Prior(flipped, [0, 1]))
    w = flipped.linear.weight
    assert (strong.linear.weight - w).norm() < 0.05 * w.norm()  # held at the prior
    with torch.no_grad():
        acc = (weak(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy() == y).mean()
    assert acc > 0.9  # little pull: the data wins


def test_model_init_warns_when_the_model_heard_this_corpus(expert_run, caplog):
    init = str(expert_run / "fold_00" / "model.pt")  # trained on the synthetic corpus
    sets, labels = ["compact", "large"], ["angry", "happy"]
    with caplog.at_level("WARNING", logger="stlser.kinds.expert"):
        expert.init_priors(init, sets, labels, corpus="csv")
    assert "not speaker-independent" not in caplog.text
    with caplog.at_level("WARNING", logger="stlser.kinds.expert"):
        expert.init_priors(init, sets, labels, corpus="synth")
    assert "trained on synth itself" in caplog.text


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_model_init_fine_tunes_from_a_pretrained_model(expert_run, synth_corpus, tmp_path):
    from stlser import driver
    from stlser.results import RunReport

    init = expert_run / "fold_00" / "model.pt"
    overrides = _on_synth(expert_run, synth_corpus, "split.folds=[0]", f"model.init={init}")
    run = driver.crossval(config.load("recommended.yaml", overrides), tmp_path / "ft")
    assert RunReport.load(run / "report.json").ua > 0.5
    fold = json.loads((run / "fold_00" / "fold.json").read_text())
    assert fold["l2_centre"] == ["zero+pretrained"] * 2  # recommended: l2_mode average
    overrides.append("model.l2_mode=select")
    run = driver.crossval(config.load("recommended.yaml", overrides), tmp_path / "sel")
    fold = json.loads((run / "fold_00" / "fold.json").read_text())
    assert set(fold["l2_centre"]) <= {"zero", "pretrained"} and len(fold["l2_centre"]) == 2
    # a huge L2 toward zero predicts chance, toward the pretrained heads keeps them: validation
    # picks the pretrained centre, and the heads equal the pretrained ones
    pinned = config.load("recommended.yaml", [*overrides, "model.l2_grid=[1e6]"])
    run = driver.crossval(pinned, tmp_path / "pinned")
    src, _ = expert.from_artefact(init)
    got, _ = expert.from_artefact(run / "fold_00" / "model.pt")
    assert (
        json.loads((run / "fold_00" / "fold.json").read_text())["l2_centre"] == ["pretrained"] * 2
    )
    z = torch.randn(4, sum(src.dims))
    with torch.no_grad():
        assert torch.allclose(got.log_probs(z), src.log_probs(z), atol=1e-3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"functionals": ["egemaps"]}, "model.functionals"),
        ({"labels": ["x", "y"]}, "no label in common"),
        ({"network": True}, "not an expert model"),
        ({"missing": True}, "not found"),
    ],
)
def test_model_init_refuses_incompatible_models(expert_run, tmp_path, change, match):
    init = expert_run / "fold_00" / "model.pt"
    labels = change.get("labels", ["angry", "happy"])
    sets = change.get("functionals", ["compact", "large"])
    if change.get("network"):
        init = testing.make_artefact(tmp_path / "net.pt")
    if change.get("missing"):
        init = tmp_path / "nothing.pt"
    exc = FileNotFoundError if change.get("missing") else ValueError
    with pytest.raises(exc, match=match):
        expert.init_priors(str(init), sets, labels)


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_pretrain_fits_speed_copies_as_speakers_of_their_own(synth_corpus, tmp_path):
    """model.speeds in pretraining: each row's copies join the pooled fit, their (speaker,
    factor) normalised apart; the model's global statistics stay those of the originals; the
    recipe digest changes (a model made without copies is refit), and off, the key leaves the
    digest as it is without the key."""
    import dataclasses
    import hashlib

    from stlser import pretrain

    root = tmp_path / "pool"
    root.mkdir()
    (root / "a").symlink_to(synth_corpus, target_is_directory=True)
    over = [
        f"data.root={root}",
        "data.pool=[synth=a]",
        "model.functionals=[egemaps]",
        "model.level=keep",
        f"cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
    ]
    plain = config.load("pretrain.yaml", over)
    fast = config.load("pretrain.yaml", [*over, "model.speeds=[0.9,1.1]"])
    assert pretrain.recipe_digest(fast) != pretrain.recipe_digest(plain)
    a = pretrain.pretrain(plain, tmp_path / "plain")
    b = pretrain.pretrain(fast, tmp_path / "fast")
    info = json.loads((tmp_path / "fast" / "pretrain.json").read_text())
    before = json.loads((tmp_path / "plain" / "pretrain.json").read_text())
    assert info["speed_copies"] == [0.9, 1.1] and before["speed_copies"] == []
    assert info["n"] == before["n"]  # utterances, not rows
    ma, mb = expert.from_artefact(a)[0], expert.from_artefact(b)[0]
    assert torch.equal(ma.mean, mb.mean) and torch.equal(ma.std, mb.std)  # originals only
    assert not torch.allclose(ma.heads[0].linear.weight, mb.heads[0].linear.weight, atol=1e-3)
    # the copies are the perturbed clips' own functionals, 2 × the rows
    df = pretrain.pool_manifest(root, ["synth=a"])
    copies = pretrain._copies(df, fast)
    assert len(copies) == 2 and all(c.shape == (len(df), 88) for c in copies)
    both, _ = pretrain.with_copies(df, pretrain._features(df, fast), copies, [0.9, 1.1])
    assert len(both) == 3 * len(df) and both["speaker"].str.endswith("@1.1").sum() == len(df)
    model = {k: v for k, v in dataclasses.asdict(plain.model).items() if k != "speeds"}
    what = {"pool": sorted(plain.data.pool), "seed": plain.seed, "model": model}
    what["features"] = dataclasses.asdict(plain.features)
    old = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    # models made with each corpus's own softmax (before D17) are refit; speeds off leaves the
    # digest as it is without the key
    assert pretrain.recipe_digest(plain) != old
    what["softmax"] = "vocabulary"
    now = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    assert pretrain.recipe_digest(plain) == now


def test_answer_settings_apply_in_the_recognizer(expert_run, tmp_path):
    """A model's temperature and default labels (stlser.calibration) change what predict says
    exactly as documented; restrict(all_labels) answers with every label again."""
    import shutil

    from stlser import calibration, pretrain
    from stlser.inference import Recognizer

    shutil.copy(expert_run / "fold_00" / "model.pt", tmp_path / "model.pt")
    raw = Recognizer.load(tmp_path / "model.pt")
    clip = testing.tone(1.5, freq=220, harmonics=4, am_hz=4)
    p_raw = np.array(list(raw.predict(clip, 16000).probabilities.values()))
    keep = raw.labels[:3]
    pretrain.set_answer_settings(tmp_path, {"global": 2.5, "speaker": 1.5}, keep)
    rec = Recognizer.load(tmp_path / "model.pt")
    assert rec.labels == keep and rec.all_labels == raw.labels
    got = rec.predict(clip, 16000)
    want = calibration.apply(p_raw[None, :3] / p_raw[:3].sum(), 2.5)[0]
    assert np.allclose(list(got.probabilities.values()), want, atol=1e-6)
    assert got.unsure == (want.max() < calibration.UNSURE_BELOW)
    assert rec.restrict(rec.all_labels).labels == raw.labels
    assert rec.restrict(None).labels == keep  # back to the default labels
    clips = [testing.tone(2.0, freq=150 + 20 * i, harmonics=3, am_hz=3) for i in range(6)]
    stats = rec.speaker_stats(clips, 16000)
    assert stats.usable
    with_spk = rec.predict(clip, 16000, speaker=stats)  # the speaker temperature
    p_spk = np.array(list(raw.predict(clip, 16000, speaker=stats).probabilities.values()))
    want = calibration.apply(p_spk[None, :3] / p_spk[:3].sum(), 1.5)[0]
    assert np.allclose(list(with_spk.probabilities.values()), want, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        pretrain.set_answer_settings(tmp_path, {"global": 100.0})
