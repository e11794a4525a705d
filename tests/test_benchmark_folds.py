"""Official benchmark folds: the EmoBox fold lists → a manifest with a ``fold`` column → the
``predefined`` protocol; and byte-identical files listed at manifest time, dropped on request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from stlser import config, corpora, runs, splits, testing
from stlser.cli import main
from stlser.corpora import CorpusError, build_manifest, read_manifest, write_manifest
from stlser.corpora import emobox as eb
from stlser.splits import LeakError, check_folds, make_folds

EMO = ["ANG", "HAP", "NEU", "SAD"]


def tone(path: Path, f0: float, secs: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), testing.tone(secs, 16_000, f0, amp=0.3), 16_000, subtype="PCM_16")
    return path


def emobox_tree(
    tmp: Path, tests: dict[int, list[str]], train_only: list[str] = (), corpus: str = "cremad"
) -> tuple[Path, Path]:
    """EmoBox's data/<corpus> with fold_<k> lists and the audio in another folder.

    `tests` maps fold k → speakers whose clips (one per emotion) are in its test list; the
    train list of fold k holds every other clip (the clips of `train_only` speakers are in no
    test list). Clip of speaker s, emotion e: ``<s>_DFA_<e>_XX`` (CREMA-D naming)."""
    root = tmp / "EmoBox" / "data" / corpus
    audio = tmp / "audio"
    clips: dict[str, list[dict]] = {}
    n = 0
    for spk in sorted({s for v in tests.values() for s in v} | set(train_only)):
        for e in EMO:
            stem = f"{spk}_DFA_{e}_XX"
            n += 1
            tone(audio / "AudioWAV" / f"{stem}.wav", 150 + 7 * n)
            clips.setdefault(spk, []).append(
                {
                    "key": f"{corpus}-{stem.replace('_', '-')}",
                    "dataset": corpus,
                    "wav": f"downloads/{corpus}/AudioWAV/{stem}.wav",
                    "type": "raw",
                    "sample_rate": 16000,
                    "length": 0.3,
                    "emo": e,
                    "channel": 1,
                }
            )
    for k, test_spk in tests.items():
        d = root / f"fold_{k}"
        d.mkdir(parents=True, exist_ok=True)
        test = [c for s in test_spk for c in clips[s]]
        train = [c for s in clips if s not in test_spk for c in clips[s]]
        for part, recs in (("test", test), ("train", train)):
            (d / f"{corpus}_{part}_fold_{k}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in recs)
            )
    (root / "label_map.json").write_text(
        json.dumps({"ANG": "Angry", "HAP": "Happy", "NEU": "Neutral", "SAD": "Sad"})
    )
    return root, audio


# ------------------------------------------------------------------------- EmoBox reader
def test_emobox_reader_fold_column_speakers_labels(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001", "1002"], 2: ["1003", "1004"]}, ["1005"])
    df, skipped = build_manifest("emobox", root, audio=audio)
    assert skipped == []
    assert len(df) == 20 and list(df.columns)[-1] == "fold"
    row = df.set_index("utt_id").loc["cremad-1003-DFA-ANG-XX"]
    assert row["fold"] == "2" and row["speaker"] == "1003" and row["label"] == "angry"
    assert Path(row["path"]) == audio / "AudioWAV" / "1003_DFA_ANG_XX.wav"  # prefix stripped
    assert set(df["label"]) == {"angry", "happy", "neutral", "sad"}
    per_fold = df.groupby("fold")["speaker"].agg(lambda s: sorted(set(s))).to_dict()
    assert per_fold == {"1": ["1001", "1002"], "2": ["1003", "1004"], eb.TRAIN_ONLY: ["1005"]}
    # the column survives the manifest file
    back = read_manifest(write_manifest(df, skipped, tmp_path / "m"))
    assert back["fold"].tolist() == df["fold"].tolist()


def test_emobox_path_rule_and_missing_files(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001"], 2: ["1002"]})
    # the full relative path wins over a stripped one when it exists
    full = tone(audio / "downloads" / "cremad" / "AudioWAV" / "1001_DFA_HAP_XX.wav", 999)
    (audio / "AudioWAV" / "1002_DFA_SAD_XX.wav").unlink()
    df, skipped = build_manifest("emobox", root, audio=audio)
    paths = dict(zip(df["utt_id"], df["path"], strict=True))
    assert paths["cremad-1001-DFA-HAP-XX"] == str(full)
    assert len(df) == 7 and [Path(p).name for p, _ in skipped] == ["1002_DFA_SAD_XX.wav"]
    with pytest.raises(CorpusError, match="none of the 8 audio files.*--audio"):
        build_manifest("emobox", root, audio=tmp_path / "EmoBox")
    with pytest.raises(CorpusError, match="no test fold lists"):
        build_manifest("emobox", audio, audio=audio)
    with pytest.raises(CorpusError, match="only to the emobox reader"):
        build_manifest("cremad", audio, audio=audio)


def test_emobox_speaker_regex_and_unknown_naming(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001"], 2: ["1002"]}, corpus="mycorpus")
    df, _ = build_manifest("emobox", root, audio=audio)
    assert (df["speaker"] == "").all()  # no known key naming for this corpus
    df, _ = build_manifest("emobox", root, audio=audio, speaker_regex=r"-(\d{4})-")
    assert sorted(set(df["speaker"])) == ["1001", "1002"]


def test_emobox_casia_lists_lowercase_folders_and_key_speakers(tmp_path: Path) -> None:
    """EmoBox's CASIA lists write the speaker folder ZhaoZuoxiang as ``zhaozuoxiang``: the file
    is found ignoring letter case (when unambiguous) and the speaker comes from the key."""
    audio = tmp_path / "casia"
    for spk in ("ZhaoZuoxiang", "wangzhe"):
        for emo in ("angry", "sad"):
            tone(audio / spk / emo / "201.wav", 200 if emo == "angry" else 120)
    root = tmp_path / "EmoBox" / "data" / "casia"
    for k, spk in ((1, "wangzhe"), (2, "zhaozuoxiang")):
        recs = [
            {
                "key": f"casia-201-{spk}-{emo}",
                "wav": f"downloads/casia/{spk}/{emo}/201.wav",
                "emo": emo,
            }  # fmt: skip
            for emo in ("angry", "sad")
        ]
        (root / f"fold_{k}").mkdir(parents=True)
        (root / f"fold_{k}" / f"casia_test_fold_{k}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in recs)
        )
    df, skipped = build_manifest("emobox", root, audio=audio)
    assert skipped == []
    row = df.set_index("utt_id").loc["casia-201-zhaozuoxiang-sad"]
    assert Path(row["path"]) == audio / "ZhaoZuoxiang" / "sad" / "201.wav"
    assert row["speaker"] == "zhaozuoxiang" and row["fold"] == "2"
    assert df.groupby("fold")["speaker"].agg(set).to_dict() == {
        "1": {"wangzhe"},
        "2": {"zhaozuoxiang"},
    }
    # two folders that differ only in case: ambiguous, not guessed
    tone(audio / "zhaoZUOxiang" / "sad" / "201.wav", 300)
    path, found = eb.resolve("downloads/casia/zhaozuoxiang/sad/201.wav", audio)
    assert not found and path == audio / "downloads" / "casia" / "zhaozuoxiang" / "sad" / "201.wav"


def test_emobox_inconsistent_lists_refused(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001"], 2: ["1002"]})
    lst = root / "fold_2" / "cremad_test_fold_2.jsonl"
    lines = lst.read_text().splitlines()
    twice = json.loads((root / "fold_1" / "cremad_test_fold_1.jsonl").read_text().split("\n")[0])
    lst.write_text("\n".join([*lines, json.dumps(twice)]) + "\n")
    with pytest.raises(CorpusError, match="test lists of folds 1 and 2"):
        build_manifest("emobox", root, audio=audio)
    lst.write_text("\n".join([*lines, '{"key": "x"}']) + "\n")
    with pytest.raises(CorpusError, match="line 5: needs string fields"):
        build_manifest("emobox", root, audio=audio)


# ------------------------------------------------------------------ predefined protocol
def test_predefined_folds_speaker_independent(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001", "1002"], 2: ["1003", "1004"]}, ["1005"])
    df, _ = build_manifest("emobox", root, audio=audio)
    folds = splits.from_config(df, config.SplitConfig(protocol="predefined", val_speakers=1), 0)
    assert [f.name for f in folds] == ["fold-1", "fold-2"]
    spk = dict(zip(df["utt_id"], df["speaker"], strict=True))
    for f, test_spk, train_pool in zip(
        folds,
        [["1001", "1002"], ["1003", "1004"]],
        [{"1003", "1004", "1005"}, {"1001", "1002", "1005"}],
        strict=True,
    ):
        assert f.speaker_independent and f.protocol == "predefined"
        assert f.test_speakers == test_spk == sorted({spk[u] for u in f.test})
        assert len(f.val_speakers) == 1 and set(f.val_speakers) <= train_pool
        assert {spk[u] for u in f.val} == set(f.val_speakers)
        assert {spk[u] for u in f.train} == train_pool - set(f.val_speakers)
    assert folds == splits.from_config(df, config.SplitConfig(protocol="predefined"), 0)
    assert "speaker-independent" in splits.summarize(folds, df)


def test_predefined_folds_sharing_speakers_are_speaker_dependent(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001", "1002"], 2: ["1003", "1004"]}, ["1005"])
    df, _ = build_manifest("emobox", root, audio=audio)
    df.loc[df["utt_id"] == "cremad-1001-DFA-SAD-XX", "fold"] = "2"  # 1001 now in both folds
    folds = splits.from_config(df, config.SplitConfig(protocol="predefined"), 0)  # not refused
    assert [f.speaker_independent for f in folds] == [False, False]
    assert all("1001" not in f.val_speakers for f in folds)  # val prefers non-test speakers
    text = splits.summarize(folds, df)
    assert "speaker-dependent" in text and "speaker-independent" not in text
    assert "fold-1: speaker-dependent: the benchmark's folds share 1 speaker(s) " in text
    assert "fold-2: speaker-dependent: the benchmark's folds share 1 speaker(s) " in text
    assert "(1001)" in text
    # the same file in training and test is still refused
    dup = df[df["utt_id"] == "cremad-1003-DFA-ANG-XX"].copy()
    dup["utt_id"], dup["fold"] = "copy", "1"
    with pytest.raises(LeakError, match="same file"):
        splits.from_config(pd.concat([df, dup]), config.SplitConfig(protocol="predefined"), 0)


def test_predefined_without_speakers_random_validation(tmp_path: Path) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001", "1002"], 2: ["1003", "1004"]}, corpus="x")
    df, _ = build_manifest("emobox", root, audio=audio)
    folds = make_folds(df, "predefined", seed=3, val_fraction=0.25)
    check_folds(folds, df)
    for f in folds:
        assert not f.speaker_independent and f.test_speakers == [] and len(f.val) == 4
        assert not set(f.val) & set(f.test) and len(f.train) == 4
    assert "does not name every speaker" in splits.summarize(folds, df)


def test_predefined_refusals() -> None:
    df = pd.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(8)],
            "label": ["a", "b"] * 4,
            "speaker": ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"],
        }
    )
    with pytest.raises(ValueError, match="needs a 'fold' column"):
        make_folds(df, "predefined")
    with pytest.raises(ValueError, match="needs two test folds"):
        make_folds(df.assign(fold="1"), "predefined")
    with pytest.raises(ValueError, match="2 utterance\\(s\\) have no fold"):
        make_folds(df.assign(fold=["1", "2", "1", "2", "1", "2", "", ""]), "predefined")
    folds = make_folds(df.assign(fold=["1"] * 2 + ["none"] * 6), "predefined")  # one test fold
    assert [f.test_speakers for f in folds] == [["s1"]]


def test_cli_manifest_and_predefined_splits(tmp_path: Path, capsys) -> None:
    root, audio = emobox_tree(tmp_path, {1: ["1001", "1002"], 2: ["1003", "1004"]}, ["1005"])
    out = tmp_path / "out"
    argv = ["manifest", "--corpus", "emobox", "--root", str(root), "--audio", str(audio)]
    assert main([*argv, "-o", str(out)]) == 0
    assert read_manifest(out / "manifest.csv")["fold"].nunique() == 3
    argv = ["splits", "--manifest", str(out / "manifest.csv"), "--protocol", "predefined"]
    assert main([*argv, "-o", str(tmp_path / "s.json")]) == 0
    assert [f.name for f in splits.load(tmp_path / "s.json")] == ["fold-1", "fold-2"]
    assert "duplicates: none" in capsys.readouterr().out


def test_csv_reader_keeps_fold(tmp_path: Path) -> None:
    for i in range(2):
        tone(tmp_path / f"a{i}.wav", 200 + 10 * i)
    (tmp_path / "t.csv").write_text("path,label,speaker,fold\na0.wav,angry,s1,1\na1.wav,sad,s2,2\n")
    df, _ = build_manifest("csv", tmp_path / "t.csv")
    assert df["fold"].tolist() == ["1", "2"]


# ---------------------------------------------------------------------------- duplicates
def dup_corpus(tmp: Path) -> Path:
    """a = b = b2 (same label), c = d (labels differ), e and f distinct; speakers differ."""
    for name, f0 in (("a", 200), ("c", 300), ("e", 400), ("f", 500)):
        tone(tmp / f"{name}.wav", f0)
    shutil.copy(tmp / "a.wav", tmp / "b.wav")
    shutil.copy(tmp / "a.wav", tmp / "b2.wav")
    shutil.copy(tmp / "c.wav", tmp / "d.wav")
    rows = [
        ("a", "angry", "s1"),
        ("b", "angry", "s2"),
        ("b2", "angry", "s1"),
        ("c", "sad", "s3"),
        ("d", "happy", "s4"),
        ("e", "happy", "s2"),
        ("f", "sad", "s3"),
    ]
    text = "utt_id,path,label,speaker\n" + "".join(f"{u},{u}.wav,{lab},{s}\n" for u, lab, s in rows)
    (tmp / "t.csv").write_text(text)
    return tmp / "t.csv"


def test_duplicates_listed_and_kept_by_default(tmp_path: Path) -> None:
    df, skipped = build_manifest("csv", dup_corpus(tmp_path))
    assert len(df) == 7 and skipped == []
    table = pd.DataFrame(df.attrs["duplicates"])
    groups = table.groupby("group")["utt_id"].apply(list).tolist()
    assert groups == [["a", "b", "b2"], ["c", "d"]]
    assert set(table["action"]) == {"kept"}
    text = corpora.duplicates.describe(table, "error")
    assert "2 group(s)" in text and "data.duplicates=drop" in text


def test_duplicates_drop_keeps_first_and_drops_conflicts(tmp_path: Path) -> None:
    df, skipped = build_manifest("csv", dup_corpus(tmp_path), duplicates="drop")
    assert df["utt_id"].tolist() == ["a", "e", "f"]
    reasons = {Path(p).stem: r for p, r in skipped}
    assert reasons == {
        "b": "duplicate of a",
        "b2": "duplicate of a",
        "c": "duplicate with conflicting labels",
        "d": "duplicate with conflicting labels",
    }
    with pytest.raises(CorpusError, match="duplicates must be one of"):
        build_manifest("csv", tmp_path / "t.csv", duplicates="keep")


def test_cli_writes_complete_list_and_skipped(tmp_path: Path, capsys) -> None:
    table = dup_corpus(tmp_path / "c")
    out = tmp_path / "out"
    argv = ["manifest", "--corpus", "csv", "--root", str(table), "-o", str(out)]
    assert main([*argv, "--duplicates", "drop"]) == 0
    printed = capsys.readouterr().out
    assert "2 group(s) of byte-identical files (5 utterances; 2 group(s) under two" in printed
    dup = pd.read_csv(out / "duplicates.csv", dtype=str)
    assert dup["utt_id"].tolist() == ["a", "b", "b2", "c", "d"]
    assert dup["action"].tolist()[:2] == ["kept", "duplicate of a"]
    skipped = pd.read_csv(out / "skipped.csv", dtype=str)
    assert (
        sorted(skipped["reason"])
        == ["duplicate of a"] * 2 + ["duplicate with conflicting labels"] * 2
    )
    assert read_manifest(out / "manifest.csv")["utt_id"].tolist() == ["a", "e", "f"]


def test_describe_caps_the_terminal_list() -> None:
    rows = [
        {"group": g, "utt_id": f"{g}{x}", "path": "", "label": "a", "speaker": "", "action": "kept"}
        for g in range(1, 31)
        for x in "xy"
    ]
    text = corpora.duplicates.describe(pd.DataFrame(rows), "drop", limit=5)
    assert "30 group(s)" in text and "… 25 more group(s) in duplicates.csv" in text
    assert len(text.splitlines()) == 1 + 5 + 2


def test_leak_refusal_lists_every_group_and_the_remedy(tmp_path: Path) -> None:
    df, _ = build_manifest("csv", dup_corpus(tmp_path))
    df["fold"] = ["1", "2", "1", "1", "2", "2", "1"]  # a|b and c|d across train and test
    with pytest.raises(LeakError) as e:
        splits.from_config(df, config.SplitConfig(protocol="predefined"), 0)
    msg = str(e.value)
    assert "2 group(s)" in msg and "'b'" in msg and "'d'" in msg
    assert "--set data.duplicates=drop" in msg


def test_prepare_drops_duplicates_of_a_manifest(tmp_path: Path) -> None:
    df, _ = build_manifest("csv", dup_corpus(tmp_path))
    m = write_manifest(df, [], tmp_path / "m")
    base = [f"data.manifest={m}", "split.protocol=loso"]
    with pytest.raises(LeakError, match="--set data.duplicates=drop"):
        runs.prepare(config.load(None, base))
    with pytest.raises(config.ConfigError):
        config.load(None, [*base, "data.duplicates=keep"])
    kept, folds, labels, skipped = runs.prepare(config.load(None, [*base, "data.duplicates=drop"]))
    assert kept["utt_id"].tolist() == ["a", "e", "f"] and len(folds) == 3
    assert labels == ["angry", "happy", "sad"]
    assert (
        sorted(r for _, r in skipped)
        == ["duplicate of a"] * 2 + ["duplicate with conflicting labels"] * 2
    )
