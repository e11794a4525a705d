"""benchmarks/bench_emobox.py on a miniature CASIA tree and EmoBox fold lists: the fold check
against stlser's leave-one-speaker-out folds, the default recognizer on the predefined folds
scored both ways, and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks import bench_emobox, benchlib
from stlser import corpora
from stlser.results import RunReport
from tests.test_benchmarks import tables

SPEAKERS = ("ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin")
EMOTIONS = ("angry", "neutral", "sad")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mini_casia(tmp: Path) -> tuple[Path, Path]:
    """CASIA's layout (4 speakers x 3 emotions x 3 clips of speech-like noise whose loudness
    says the emotion) and EmoBox's lists for it: fold k tests speaker k, the wav paths spelt in
    lower case as EmoBox's are."""
    rng = np.random.default_rng(0)
    audio, root = tmp / "casia", tmp / "EmoBox" / "data" / "casia"
    lines: dict[str, list[str]] = {}
    for spk in SPEAKERS:
        for i, emo in enumerate(EMOTIONS):
            (audio / spk / emo).mkdir(parents=True)
            for n in (201, 202, 203):
                x = benchlib.speechlike(float(rng.uniform(0.6, 0.9)), rng) * (0.3 + 0.6 * i)
                sf.write(str(audio / spk / emo / f"{n}.wav"), x, benchlib.SR, subtype="PCM_16")
                low = spk.lower()
                rec = {"key": f"casia-{n}-{low}-{emo}", "wav": f"downloads/casia/{low}/{emo}/"
                       f"{n}.wav", "emo": emo, "length": float(len(x) / benchlib.SR)}  # fmt: skip
                lines.setdefault(spk, []).append(json.dumps(rec) + "\n")
    for k, spk in enumerate(SPEAKERS, start=1):
        d = root / f"fold_{k}"
        d.mkdir(parents=True)
        (d / f"casia_test_fold_{k}.jsonl").write_text("".join(lines[spk]))
        train = [ln for s in SPEAKERS if s != spk for ln in lines[s]]
        (d / f"casia_train_fold_{k}.jsonl").write_text("".join(train))
    return root, audio


@pytest.mark.slow  # 10 s on idle cores, 40 s on a busy 2-core machine: make slow-checks
def test_bench_emobox_folds_both_ways_and_report(tmp_path):
    root, audio = mini_casia(tmp_path)
    out = tmp_path / "emobox_casia.md"
    argv = ["--emobox", str(root), "--audio", str(audio), "--runs", str(tmp_path / "runs")]
    argv += ["--init", "none", "--systems", "finetuned", "--out", str(out)]
    for s in ("model.functionals=[compact]", "model.speeds=[]", "train.jobs=1"):
        argv += ["--set", s]
    argv += ["--set", f"cache_dir={tmp_path / 'cache'}"]
    (tmp_path / "note.md").write_text("The lists came from a miniature tree.\n")
    md = bench_emobox.main([*argv, "--note", str(tmp_path / "note.md")])
    assert md.rstrip().endswith("### About this run\n\nThe lists came from a miniature tree.")
    assert out.read_text().strip() == md.strip()
    t = tables(md)
    agree = next(v for k, v in t.items() if k[0] == "EmoBox fold")
    assert [r[0] for r in agree] == ["1", "2", "3", "4"]
    for r, spk in zip(agree, SPEAKERS, strict=True):
        assert r[1] == spk.lower() and r[3] == spk and r[-1] == "same files"
    board = next(v for k, v in t.items() if k[0] == "model (frozen)")
    assert ["Whisper-large-v3", "59.58"] == board[0][:2]
    ours = next(v for k, v in t.items() if k[0] == "system")
    assert [r[2] for r in ours] == ["no (uses test-speaker statistics)", "**yes**"]
    # (a) is crossval's own report on EmoBox's folds
    rep = RunReport.load(tmp_path / "runs" / "casia" / "finetuned" / "seed0" / "report.json")
    assert rep.extra["protocol"] == "predefined" and len(rep.folds) == 4
    assert ours[0][4] == f"{100 * rep.ua:.1f}" and ours[0][3] == f"{100 * rep.wa:.1f}"
    for r in ours:
        assert all(re.fullmatch(r"\d+\.\d", c) for c in (r[3], r[4], r[6], r[7]))
    assert "default recognizer: one clip at a time, up to " in md
    per_fold = next(v for k, v in t.items() if k[2:] == tuple(f"UA fold-{i}" for i in range(1, 5)))
    top = next(v for k, v in t.items() if k[2:3] == ("top answer fold-1",))
    assert len(per_fold) == len(top) == 2
    for r in top:
        assert all(re.fullmatch(r"(angry|neutral|sad) \d+ %", c) for c in r[2:])


def test_fold_agreement_names_files_that_differ(tmp_path):
    root, audio = mini_casia(tmp_path)
    df, _ = corpora.build_manifest("emobox", root, audio=audio)
    moved = df["utt_id"] == "casia-201-wangzhe-sad"
    df.loc[moved, "fold"] = "1"  # one of wangzhe's clips tested with ZhaoZuoxiang
    rows = {r[0]: r for r in bench_emobox.fold_agreement(df, audio)}
    assert rows["1"][1] == "wangzhe, zhaozuoxiang" and rows["1"][-1] == "1 / 0 differ"
    assert rows["3"][-1] == "0 / 1 differ" and rows["2"][-1] == "same files"
