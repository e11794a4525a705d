"""Issue 11: a hostile but fair user — crafted model files, resumed runs with other settings,
costly uploads, stalled service, leaking splits, degenerate speakers, killed writes.

Each test fails on the code before the fix it covers (named in its docstring).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from stlser import audio, testing
from stlser.cli import main
from stlser.safety import ModelLoadError
from stlser.testing import SR, wav_bytes


def tone(seconds: float, sr: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 220 Hz tone at 0.3 with a little noise (speech-like energy for the VAD)."""
    return testing.tone(seconds, sr, freq=220.0, amp=0.3, noise=0.01, seed=seed, channels=channels)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return testing.make_artefact(
        tmp_path_factory.mktemp("hostile_model") / "model.pt", jitter=False
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("hostile_clip") / "clip.wav"
    sf.write(p, tone(1.0), SR)
    return p


# ------------------------------------------------------------- 1. no code runs from a model
class _Evil:
    """Unpickling this calls open(target, "w"): it creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _crafted(path: Path, target: Path, fmt: str = "stlser-model/1") -> Path:
    torch.save({"format": fmt, "payload": _Evil(target)}, path)
    return path


def test_crafted_model_file_runs_no_code(tmp_path, clip, capsys):
    """Must fix 1: predict / serve / export / load_artefact / checkpoints refuse a model.pt whose
    pickle would create a file, with a clear message, and the file is never created."""
    from stlser.checkpoint_io import load_checkpoint
    from stlser.model import load_artefact

    target = tmp_path / "pwned.txt"
    bad = _crafted(tmp_path / "model.pt", target)
    with pytest.raises(ModelLoadError, match="refused to load") as e:
        load_artefact(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(ModelLoadError, match="refused"):
        load_checkpoint(_crafted(tmp_path / "last.ckpt", target))
    assert main(["predict", "--model", str(bad), str(clip)]) == 2
    assert main(["export", "--model", str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and str(bad) in err and "Traceback" not in err
    from stlser.service import create_app

    with pytest.raises(ModelLoadError):
        create_app(bad)
    assert not target.exists()


def test_old_numpy_artefact_still_loads(tmp_path, model_path):
    """Artefacts written before this fix hold numpy arrays and no checksum: they still load
    (numpy array types are allow-listed), with the same weights."""
    from stlser.model import load_artefact

    art = torch.load(model_path, weights_only=True)
    art.pop("weights_sha256")
    art["normalizer"] = {
        "mode": "global",
        "mean": np.full(40, -5, np.float32),
        "std": np.full(40, 2, np.float32),
    }
    old = tmp_path / "old.pt"
    torch.save(art, old)
    model, loaded = load_artefact(old)
    assert np.allclose(np.asarray(loaded["normalizer"]["mean"]), -5)
    new = load_artefact(model_path)[1]
    assert isinstance(new["normalizer"]["mean"], list)  # new artefacts: plain lists
    assert len(new["weights_sha256"]) == 64


def test_corrupted_weights_are_detected(tmp_path, model_path):
    """Also fix: a model file whose weights changed after saving no longer loads silently."""
    from stlser.model import load_artefact

    art = torch.load(model_path, weights_only=True)
    name = sorted(art["state_dict"])[3]
    art["state_dict"][name] = art["state_dict"][name] + 1e-3
    bad = tmp_path / "corrupt.pt"
    torch.save(art, bad)
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        load_artefact(bad)
    # bytes flipped inside the tensor data of the zip: refused one way or another
    raw = bytearray(model_path.read_bytes())
    with zipfile.ZipFile(model_path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(16):
        raw[start + 1000 + k] ^= 0xFF
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError):
        load_artefact(flipped)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"hello, not a model", "not a readable"),
        (b'{"format": "stlser-model/1"}', "not a readable"),
        (b"", "empty file"),
    ],
)
def test_model_errors_name_the_file_and_exit_2(tmp_path, clip, content, what, capsys):
    """Also fix: model-loading errors are one clear line naming the file, exit code 2."""
    p = tmp_path / "model.pt"
    p.write_bytes(content)
    assert main(["predict", "--model", str(p), str(clip)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and what in err[0]


def test_truncated_and_incomplete_artefacts(tmp_path, model_path):
    from stlser.model import load_artefact

    half = tmp_path / "half.pt"
    half.write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=str(half)):
        load_artefact(half)
    art = torch.load(model_path, weights_only=True)
    del art["model_config"]
    p = tmp_path / "nocfg.pt"
    torch.save(art, p)
    with pytest.raises(ModelLoadError, match="lacks 'model_config'"):
        load_artefact(p)
    art = torch.load(model_path, weights_only=True)
    art["labels"] = art["labels"][:3]
    art["weights_sha256"] = None
    p = tmp_path / "labels.pt"
    torch.save(art, p)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_artefact(p)


def test_onnx_garbage_is_a_model_load_error(tmp_path):
    pytest.importorskip("onnxruntime")
    from stlser.onnx_runtime import OnnxRecognizer

    p = tmp_path / "model.onnx"
    p.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match="model.onnx"):
        OnnxRecognizer(p)


# ------------------------------------------------------- 2. resume never mixes configs
def _fake_training(monkeypatch):
    """crossval without features or training: each unit writes fold.json and uniform probs."""
    from stlser import driver, features, runs

    calls: list[str] = []

    def load_features(df, fc, cache_dir):
        return {u: np.zeros((50, 40), np.float32) for u in df["utt_id"]}

    def train_unit(unit):
        from stlser.kinds import FoldOutput

        labels = runs.WORKER["data"]["labels"]
        calls.append(str(unit.dir))
        unit.dir.mkdir(parents=True, exist_ok=True)
        info = {"best_epoch": 1, "epochs_run": 1, "n_params": 1, "seconds": 0.0}
        (unit.dir / "fold.json").write_text(json.dumps(info))
        probs = np.full((len(unit.fold.test), len(labels)), 1 / len(labels))
        return FoldOutput(probs, info, {"best_epoch": 1})

    monkeypatch.setattr(features, "load_features", load_features)
    monkeypatch.setattr(driver, "_fit_unit", train_unit)
    return calls


def _synth_cfg(corpus, tmp_path, *extra):
    from stlser import config

    return config.load(
        None,
        [
            f"data.root={corpus}",
            "data.corpus=synth",
            f"cache_dir={tmp_path / 'cache'}",
            "split.protocol=group-kfold",
            "split.k=2",
            "train.progress=false",
            *extra,
        ],
    )


def test_resume_with_other_settings_is_refused(synth_corpus, tmp_path, monkeypatch):
    """Must fix 2: --resume with another seed / model / split refuses, names the differing keys,
    and writes nothing; the same settings (or only jobs/threads changed) resume; --force
    resumes and records what differed."""
    from stlser import driver
    from stlser.fingerprint import ResumeMismatch

    calls = _fake_training(monkeypatch)
    run = tmp_path / "run"
    driver.crossval(_synth_cfg(synth_corpus, tmp_path), run)
    assert len(calls) == 2 and (run / "fingerprint.json").exists()
    before = {p: p.read_bytes() for p in (run / "config.yaml", run / "splits.json")}
    for extra, key in [
        (["seed=1"], "seed"),
        (["model.stl_layers=2"], "model.stl_layers"),
        (["split.protocol=loso"], "split.protocol"),
    ]:
        with pytest.raises(ResumeMismatch, match=key):
            driver.crossval(_synth_cfg(synth_corpus, tmp_path, *extra), run, resume=True)
        assert {p: p.read_bytes() for p in before} == before  # nothing rewritten
    assert len(calls) == 2
    # unchanged results-wise: everything reused, nothing retrained
    driver.crossval(
        _synth_cfg(synth_corpus, tmp_path, "train.jobs=3", "train.num_threads=1"), run, resume=True
    )
    assert len(calls) == 2
    driver.crossval(_synth_cfg(synth_corpus, tmp_path, "seed=5"), run, resume=True, force=True)
    fp = json.loads((run / "fingerprint.json").read_text())
    assert any(d.startswith("seed") for d in fp["forced_over"])
    assert main(["crossval", "--set", "seed=7", "-o", str(run), "--resume"]) == 2


def test_resume_refuses_a_changed_manifest(tmp_path, synth_corpus, monkeypatch):
    from stlser import corpora, driver
    from stlser.fingerprint import ResumeMismatch

    _fake_training(monkeypatch)
    df = corpora.read_manifest(synth_corpus / "manifest.csv")
    m = tmp_path / "manifest.csv"
    df.to_csv(m, index=False)
    cfg = _synth_cfg(synth_corpus, tmp_path, f"data.manifest={m}")
    driver.crossval(cfg, tmp_path / "run")
    df.loc[0, "label"] = "sad" if df.loc[0, "label"] != "sad" else "happy"
    df.to_csv(m, index=False)
    with pytest.raises(ResumeMismatch, match="manifest content"):
        driver.crossval(cfg, tmp_path / "run", resume=True)


# --------------------------------------------------------------- 3. decoding is bounded
def test_decoding_budget_is_checked_before_decoding():
    """Must fix 3: 96 kHz x 8 channels x 599 s passes the duration limit but not the decoding
    budget; a 1 Hz header is refused whatever its length."""
    big = audio.AudioInfo(96_000, 8, 96_000 * 599)
    with pytest.raises(audio.AudioTooLarge, match="too large to decode"):
        audio.check_limits(big, "x.flac", 600.0)
    audio.check_limits(audio.AudioInfo(48_000, 2, 48_000 * 599), "ok.wav", 600.0)
    with pytest.raises(audio.AudioError, match="below the minimum"):
        audio.check_limits(audio.AudioInfo(1, 1, 600), "slow.wav", 600.0)


def test_one_hz_wav_is_refused_everywhere(tmp_path, model_path):
    from stlser.inference import Recognizer

    x = (0.3 * np.sin(np.arange(60))).astype(np.float32)
    p = tmp_path / "slow.wav"
    sf.write(p, x, 1)  # 60 s at 1 Hz: 60 bytes buying 60 s of 16 kHz audio
    with pytest.raises(audio.AudioError, match="below the minimum"):
        audio.load(p)
    rec = Recognizer.load(model_path)
    with pytest.raises(audio.AudioError, match="below the minimum"):
        rec.segments(p)


def test_multichannel_decode_is_blockwise(tmp_path):
    """audio.load mixes to mono block by block: peak memory stays well below the full
    multichannel buffer, and the result equals decoding everything at once."""
    import soxr

    x = tone(20.0, 48_000, channels=8)
    p = tmp_path / "multi.wav"
    sf.write(p, x, 48_000, subtype="FLOAT")
    full_bytes = x.nbytes
    tracemalloc.start()
    try:
        y = audio.load(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * full_bytes, (peak, full_bytes)
    ref = soxr.resample(sf.read(p, dtype="float32")[0].mean(axis=1), 48_000, SR, quality="HQ")
    np.testing.assert_array_equal(y, ref.astype(np.float32))


# ------------------------------------------------------------------ 4. service hardening
@pytest.fixture(scope="module")
def app_factory(model_path):
    pytest.importorskip("fastapi")
    from stlser.service import create_app

    return lambda **kw: create_app(model_path, **kw)


def _client(app, host="127.0.0.1"):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=f"http://{host}")


def test_service_refuses_costly_uploads(app_factory):
    """Must fix 3 (service): decoding budget → 413; 1 Hz header → 422."""
    with _client(app_factory(max_seconds=1.0)) as c:
        multi = wav_bytes(tone(0.9, 48_000, channels=8), 48_000)  # 0.9 s, 8 ch: over budget
        r = c.post("/predict", content=multi)
        assert r.status_code == 413 and "too large to decode" in r.json()["error"]
        slow = wav_bytes((0.3 * np.sin(np.arange(60))).astype(np.float32), 1)
        r = c.post("/predict", content=slow)
        assert r.status_code == 422 and "below the minimum" in r.json()["error"]
        assert c.post("/predict", content=wav_bytes(tone(0.9))).status_code == 200


def _post_parts(app, names: list[str]):
    boundary = "XyZ"
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\nv\r\n' for n in names
    )
    with _client(app) as c:
        return c.post(
            "/predict",
            content=(body + f"--{boundary}--\r\n").encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )


def test_many_multipart_parts_are_cut_short(app_factory):
    """Must fix 4: a body of thousands of tiny parts stops at the part limit with a short
    error that does not echo every field name."""
    r = _post_parts(app_factory(), [f"field{i:05d}" for i in range(5000)])
    assert r.status_code == 400
    assert "too many parts" in r.json()["error"] and len(r.text) < 400


def test_wrong_field_error_is_short(app_factory):
    r = _post_parts(app_factory(), [f"{'n' * 500}{i}" for i in range(7)])
    assert r.status_code == 400 and len(r.json()["error"]) <= 300


def test_uploads_in_flight_are_bounded_and_health_answers(app_factory):
    """Must fix 4: with one upload stalled mid-body, another gets 503 + Retry-After, /health
    still answers, and a body that never completes is cut off (408)."""
    import httpx

    app = app_factory(max_uploads=1, read_timeout=2.0)

    async def scenario():
        release = asyncio.Event()

        async def slow_body():
            yield b"RIFF"
            await release.wait()
            yield b"x" * 10

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            stalled = asyncio.create_task(c.post("/predict", content=slow_body()))
            for _ in range(5):  # let the stalled request start reading (same event loop)
                await asyncio.sleep(0.01)
            second = await c.post("/predict", content=b"RIFF")
            health = await c.get("/health")
            first = await stalled
            release.set()
        return first, second, health

    first, second, health = asyncio.run(scenario())
    assert second.status_code == 503 and second.headers.get("retry-after")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert first.status_code == 408 and "too slow" in first.json()["error"]


def test_multipart_parsing_runs_off_the_event_loop(app_factory, monkeypatch):
    from stlser.service import uploads as app_mod

    seen = []
    real = app_mod._parse_multipart

    def spy(*a, **kw):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real(*a, **kw)

    monkeypatch.setattr(app_mod, "_parse_multipart", spy)
    with _client(app_factory()) as c:
        r = c.post("/predict", files={"file": ("a.wav", wav_bytes(tone(0.5)))})
    assert r.status_code == 200 and seen == [False]


def test_host_and_origin_allow_list(app_factory):
    """Also fix: Host must be allowed (default loopback); cross-origin POSTs are refused;
    both configurable."""
    clip = wav_bytes(tone(0.5))
    with _client(app_factory(), host="evil.example") as c:
        assert c.get("/health").status_code == 400
    with _client(app_factory()) as c:
        r = c.post("/predict", content=clip, headers={"origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.post("/predict", content=clip, headers={"origin": "http://127.0.0.1"})
        assert r.status_code == 200
        assert c.get("/health", headers={"origin": "http://evil.example"}).status_code == 200
    app = app_factory(allowed_hosts=["ser.example.org"], allowed_origins=["https://app.example"])
    with _client(app, host="ser.example.org") as c:
        r = c.post("/predict", content=clip, headers={"origin": "https://app.example"})
        assert r.status_code == 200
    with _client(app) as c:  # loopback is not implied once hosts are configured
        assert c.get("/health").status_code == 400


# ------------------------------------------------------------------- also-fix: CLI edges
def test_predict_output_folder_is_refused_before_work(tmp_path, model_path, clip, monkeypatch):
    from stlser import inference

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(inference.Recognizer, "load", boom)
    assert main(["predict", "--model", str(model_path), str(clip), "-o", str(tmp_path)]) == 2
    out = tmp_path / "x.csv"
    out.mkdir()
    assert main(["predict", "--model", str(model_path), str(clip), "-o", str(out)]) == 2


def test_predict_segments_without_speech_gets_a_row(tmp_path, model_path, clip, capsys):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(SR * 2, np.float32), SR)
    out = tmp_path / "out.csv"
    assert (
        main(["predict", "--model", str(model_path), "--segments", str(quiet), "-o", str(out)]) == 1
    )
    rows = pd.read_csv(out, keep_default_na=False)
    assert rows["path"].tolist() == [str(quiet)] and rows["error"].tolist() == [
        "no speech detected"
    ]
    assert "0/1 files classified" in capsys.readouterr().err
    speech = tmp_path / "speech.wav"
    sf.write(speech, np.concatenate([np.zeros(SR), tone(1.0), np.zeros(SR)]).astype(np.float32), SR)
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_path),
                "--segments",
                str(quiet),
                str(speech),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "1/2 files classified" in capsys.readouterr().err


# ---------------------------------------------------------------- also-fix: temp files
def test_checkpoint_writes_are_atomic_beside_the_target(tmp_path, monkeypatch):
    """A write killed half-way leaves no partial checkpoint and nothing in the temp folder;
    temp files left by a SIGKILL are removed by the next run."""
    from stlser import checkpoint_io
    from stlser.utils import clean_stale_temps

    tmpd = tmp_path / "systmp"
    tmpd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpd))
    target = tmp_path / "ckpt" / "last.ckpt"

    def dying_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"a": 1}, target)
    assert not target.exists() and list(tmpd.iterdir()) == []
    stale = target.parent / ".last.ckpt.ab12cd_9.tmp"
    stale.write_bytes(b"partial")
    keep = target.parent / "notes.tmp"
    keep.write_bytes(b"mine")
    assert clean_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and keep.exists()


def test_next_run_removes_stale_temp_files(synth_corpus, tmp_path, monkeypatch):
    from stlser import driver

    _fake_training(monkeypatch)
    run = tmp_path / "run"
    driver.crossval(_synth_cfg(synth_corpus, tmp_path), run)
    stale = run / "fold_00" / "checkpoints" / ".last.ckpt.k3j4h5g6.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")
    driver.crossval(_synth_cfg(synth_corpus, tmp_path), run, resume=True)
    assert not stale.exists()


def test_pickle_module_is_not_needed_for_new_artefacts(model_path):
    """New artefacts load with the plain weights-only unpickler (no allow-list needed)."""
    art = torch.load(model_path, weights_only=True)
    assert art["format"] == "stlser-model/1"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(
            _crafted(model_path.parent / "evil.pt", model_path.parent / "x"), weights_only=True
        )
    assert not (model_path.parent / "x").exists()


# ------------------------------------------------------------- 5. leaks by file and speaker
def _manifest_df(synth_corpus) -> pd.DataFrame:
    from stlser import corpora

    return corpora.read_manifest(synth_corpus / "manifest.csv")


def test_same_file_under_two_ids_is_a_leak(synth_corpus, tmp_path):
    """Must fix 5: one file listed twice (other utt_id, other speaker) → `splits` refuses."""
    df = _manifest_df(synth_corpus)
    spk0 = sorted(df["speaker"].unique())[0]
    dup = df[df["speaker"] == spk0].copy()
    dup["utt_id"] = "copy_" + dup["utt_id"]
    dup["speaker"] = "zed"
    m = tmp_path / "manifest.csv"
    pd.concat([df, dup]).to_csv(m, index=False)
    assert (
        main(["splits", "--manifest", str(m), "--protocol", "loso", "-o", str(tmp_path / "s.json")])
        == 2
    )
    assert not (tmp_path / "s.json").exists()


def test_identical_content_under_another_path_is_a_leak(synth_corpus, tmp_path):
    import shutil

    from stlser import splits
    from stlser.config import SplitConfig

    df = _manifest_df(synth_corpus)
    row = df.iloc[0].copy()
    copy = tmp_path / "copy.wav"
    shutil.copy(row["path"], copy)
    row["utt_id"], row["path"], row["speaker"] = "copied", str(copy), "zed"
    df2 = pd.concat([df, row.to_frame().T], ignore_index=True)
    with pytest.raises(splits.LeakError, match="identical content"):
        splits.from_config(df2, SplitConfig(protocol="loso"), 0)


def test_speakers_compare_stripped_and_case_insensitively(synth_corpus, tmp_path):
    from stlser import corpora, splits

    df = _manifest_df(synth_corpus)
    spk0 = sorted(df["speaker"].unique())[0]
    rows = df.index[df["speaker"] == spk0]
    df.loc[rows[::2], "speaker"] = f" {spk0.upper()} "
    df.loc[rows[:3], "label"] = [f" {x.upper()}" for x in df.loc[rows[:3], "label"]]
    m = tmp_path / "manifest.csv"
    df.to_csv(m, index=False)
    back = corpora.read_manifest(m)
    assert back["speaker"].nunique() == 4 and set(back["label"]) == set(
        _manifest_df(synth_corpus)["label"]
    )
    folds = splits.make_folds(back, "loso")
    assert len(folds) == 4
    # a fold built by hand that splits one speaker by case is a leak
    bad = splits.Fold(
        "x",
        [u for u in df["utt_id"] if u not in set(df.loc[rows, "utt_id"])]
        + list(df.loc[rows[1::2], "utt_id"]),
        [],
        list(df.loc[rows[::2], "utt_id"]),
        [f" {spk0.upper()} "],
        [],
        0,
        True,
    )
    odd = df.copy()
    other = sorted(set(odd["speaker"]) - {spk0, f" {spk0.upper()} "})[0]
    val_ids = odd.loc[odd["speaker"] == other, "utt_id"].tolist()
    bad.train = [u for u in bad.train if u not in val_ids]
    bad.val, bad.val_speakers = val_ids, [other]
    with pytest.raises(splits.LeakError, match="in both"):
        splits.check_folds([bad], odd)


# --------------------------------------------------------------- 6. degenerate speakers
def _degenerate_df(synth_corpus) -> pd.DataFrame:
    df = _manifest_df(synth_corpus)
    spk = sorted(df["speaker"].unique())
    df.loc[df["speaker"] == spk[0], "label"] = "angry"  # one speaker speaks one emotion
    return df


def test_degenerate_speakers_are_found_and_fall_back_to_global(synth_corpus):
    """Must fix 6: a one-emotion speaker is detected; speaker normalisation uses global
    statistics for them (network and baseline), per-speaker statistics for the others."""
    from stlser import degenerate, features
    from stlser.config import FeatureConfig
    from stlser.features import normalize_functionals

    df = _degenerate_df(synth_corpus)
    spk0 = sorted(df["speaker"].unique())[0]
    found = degenerate.find(df)
    assert list(found) == [spk0] and "100 % angry" in found[spk0]
    assert degenerate.global_speakers(df, FeatureConfig()) == {spk0}
    assert degenerate.global_speakers(df, FeatureConfig(speaker_fallback="off")) == set()
    rng = np.random.default_rng(0)
    feats = {
        u: rng.normal(3.0 if s == spk0 else 0.0, 1.0, (20, 4)).astype(np.float32)
        for u, s in zip(df["utt_id"], df["speaker"], strict=True)
    }
    train = df.loc[df["speaker"] != spk0, "utt_id"].tolist()
    normed, _ = features.normalize_all(feats, df, "speaker", train, global_speakers={spk0})
    own = np.concatenate([normed[u] for u in df.loc[df["speaker"] == spk0, "utt_id"]])
    assert own.mean() > 2.0  # global stats keep what distinguishes this speaker's emotion
    normed2, _ = features.normalize_all(feats, df, "speaker", train)
    own2 = np.concatenate([normed2[u] for u in df.loc[df["speaker"] == spk0, "utt_id"]])
    assert abs(own2.mean()) < 1e-4  # what plain speaker normalisation does
    X = np.stack([feats[u].mean(0) for u in df["utt_id"]]).astype(np.float64)
    fit = np.flatnonzero(df["speaker"] != spk0)
    Xs, _ = normalize_functionals(X, df["speaker"], "speaker", fit, [spk0])
    assert Xs[df["speaker"].to_numpy() == spk0].mean() > 2.0


def test_degenerate_speakers_are_warned_and_recorded(
    synth_corpus, tmp_path, monkeypatch, capsys, caplog
):
    from stlser import driver
    from stlser.results import RunReport

    _fake_training(monkeypatch)
    monkeypatch.setattr(logging.getLogger("stlser"), "propagate", True)  # main() turns it off
    df = _degenerate_df(synth_corpus)
    m = tmp_path / "manifest.csv"
    df.to_csv(m, index=False)
    run = driver.crossval(
        _synth_cfg(synth_corpus, tmp_path, f"data.manifest={m}"), tmp_path / "run"
    )
    rep = json.loads((run / "report.json").read_text())
    spk0 = sorted(df["speaker"].unique())[0]
    assert list(rep["speaker_normalisation"]["degenerate_speakers"]) == [spk0]
    assert rep["speaker_normalisation"]["speaker_fallback"] == "global"
    assert "degenerate speaker" in (run / "report.md").read_text()
    assert "WARNING" in caplog.text  # the library logs it; the CLI shows it on stderr
    sn = RunReport.load(run).speaker_normalisation
    assert sn is not None and list(sn.degenerate_speakers) == [spk0]
    assert sn.speaker_fallback == "global"
    capsys.readouterr()
    assert main(["splits", "--manifest", str(m), "-o", str(tmp_path / "s.json")]) == 0
    assert "speak (nearly) one emotion" in capsys.readouterr().err


def test_fold_data_applies_the_fallback(synth_corpus):
    from stlser import config, splits
    from stlser.kinds import network

    df = _degenerate_df(synth_corpus)
    spk0 = sorted(df["speaker"].unique())[0]
    cfg = config.load(None, ["split.protocol=group-kfold", "split.k=2"])
    fold = next(f for f in splits.from_config(df, cfg.split, 0) if spk0 in f.test_speakers)
    rng = np.random.default_rng(1)
    feats = {
        u: rng.normal(3.0 if s == spk0 else 0.0, 1.0, (20, 40)).astype(np.float32)
        for u, s in zip(df["utt_id"], df["speaker"], strict=True)
    }
    labels = sorted(df["label"].unique())
    data = network.fold_data(cfg, df, feats, fold, labels)
    every = dict(
        zip(
            fold.train + fold.val + fold.test,
            data.train[0] + data.val[0] + data.test[0],
            strict=True,
        )
    )
    own = np.concatenate([every[u] for u in df.loc[df["speaker"] == spk0, "utt_id"]])
    assert abs(own.mean()) > 0.5


# ------------------------------------------------------------------- also-fix: manifest
def test_manifest_of_only_missing_files_exits_non_zero(tmp_path, capsys):
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,speaker\nnope1.wav,angry,a\nnope2.wav,sad,b\n")
    assert main(["manifest", "--corpus", "csv", "--root", str(csv), "-o", str(tmp_path / "m")]) != 0
    assert "no usable utterance" in capsys.readouterr().err


def test_fingerprint_of_an_older_run_without_a_new_key_counts_it_as_default():
    """A key added after a run was made (a new lever) is its default there: equal to a run
    that leaves it at the default, different from one that turns it on."""
    from stlser import config, fingerprint

    new = {"config": {"train.label_smoothing": 0.0, "seed": 0}}
    old = {"config": {"seed": 0}}
    assert fingerprint.differences(old, new) == []
    on = {"config": {"train.label_smoothing": 0.1, "seed": 0}}
    assert fingerprint.differences(old, on) == ["train.label_smoothing: 0.0 → 0.1"]
    assert config.ExperimentConfig().train.label_smoothing == 0.0
