"""Corpus readers on miniature trees in each corpus's release layout (synthetic sine WAVs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from stlser import corpora, testing
from stlser.corpora import CorpusError, build_manifest, read_manifest, summarize, write_manifest


def tone(
    path: Path, secs: float = 0.4, sr: int = 16_000, channels: int = 1, f0: float = 220.0
) -> Path:
    """Write a short sine (a different pitch per file keeps files distinct)."""
    x = testing.tone(secs, sr, f0, amp=0.3)
    if channels > 1:
        x = np.stack([x, 0.5 * x], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return path


def junk(path: Path) -> Path:
    """A file named .wav that holds text (corrupt audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not audio\n" * 20)
    return path


def by_id(df: pd.DataFrame) -> dict[str, dict]:
    return {r["utt_id"]: r for r in df.to_dict("records")}


# --------------------------------------------------------------------------------- EmoDB
def make_emodb(root: Path) -> Path:
    for i, name in enumerate(["03a01Fa", "03a01Wa", "08b10Td", "10a02Lb", "16a04Nc", "09b03Ea"]):
        tone(root / "wav" / f"{name}.wav", 0.3 + 0.04 * i, f0=200 + 20 * i)
    junk(root / "wav" / "11a05Ab.wav")
    (root / "erkennung.txt").write_text("not audio, not scanned")
    return root


def test_emodb_labels_speakers_gender_and_skipped(tmp_path: Path) -> None:
    root = make_emodb(tmp_path / "emodb")
    df, skipped = build_manifest("emodb", root)
    assert list(df.columns[:8]) == corpora.COLUMNS
    assert df["utt_id"].tolist() == [
        "03a01Fa",
        "03a01Wa",
        "08b10Td",
        "09b03Ea",
        "10a02Lb",
        "16a04Nc",
    ]
    rows = by_id(df)
    assert {u: r["label"] for u, r in rows.items()} == {
        "03a01Fa": "happy",
        "03a01Wa": "angry",
        "08b10Td": "sad",
        "09b03Ea": "disgust",
        "10a02Lb": "boredom",
        "16a04Nc": "neutral",
    }
    assert {u: r["speaker"] for u, r in rows.items()}["08b10Td"] == "08"
    assert {u: r["gender"] for u, r in rows.items()} == {
        "03a01Fa": "M",
        "03a01Wa": "M",
        "08b10Td": "F",
        "09b03Ea": "F",
        "10a02Lb": "M",
        "16a04Nc": "F",
    }
    assert rows["03a01Fa"]["text"] == "Der Lappen liegt auf dem Eisschrank."
    assert rows["03a01Fa"]["duration"] == pytest.approx(0.3, abs=1e-3)
    assert rows["16a04Nc"]["duration"] == pytest.approx(0.46, abs=1e-3)
    assert all(Path(p).is_absolute() for p in df["path"])
    assert set(df["corpus"]) == {"emodb"} and set(df["session"]) == {""}
    assert len(skipped) == 1 and skipped[0][0].endswith("11a05Ab.wav")
    assert "not readable as audio" in skipped[0][1]


def test_emodb_four_class(tmp_path: Path) -> None:
    df, skipped = build_manifest("emodb", make_emodb(tmp_path / "emodb"), labels="4class")
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "03a01Fa": "happy",
        "03a01Wa": "angry",
        "08b10Td": "sad",
        "16a04Nc": "neutral",
    }
    assert skipped == []  # the corrupt file is a fear (A) utterance, never decoded for 4class


def test_write_and_read_manifest(tmp_path: Path) -> None:
    df, skipped = build_manifest("emodb", make_emodb(tmp_path / "emodb"))
    out = write_manifest(df, skipped, tmp_path / "out" / "manifest.csv")
    assert out == tmp_path / "out" / "manifest.csv"
    sk = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert list(sk.columns) == ["path", "reason"] and len(sk) == 1
    assert sk["path"][0].endswith("11a05Ab.wav")
    back = read_manifest(out)
    assert back["speaker"].tolist() == df["speaker"].tolist()  # "03" keeps its zero
    assert back["session"].tolist() == [""] * len(df)
    assert back["duration"].dtype == float
    assert np.allclose(back["duration"], df["duration"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.csv", "skipped.csv"]
    # no skipped files → skipped.csv still written, header only
    assert write_manifest(df, [], tmp_path / "out2") == tmp_path / "out2" / "manifest.csv"
    assert (tmp_path / "out2" / "skipped.csv").read_text().strip() == "path,reason"


def test_read_manifest_relative_paths_and_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("utt_id,path,label\na,audio/a.wav,happy\n")
    df = read_manifest(tmp_path / "m.csv")
    assert df["path"][0] == str(tmp_path / "audio" / "a.wav")
    assert df["speaker"][0] == "" and df["gender"][0] == ""
    (tmp_path / "bad.csv").write_text("utt_id,file\na,b\n")
    with pytest.raises(CorpusError, match="path"):
        read_manifest(tmp_path / "bad.csv")


def test_emodb_count_check_reports_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "emodb"
    for i, spk in enumerate(["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]):
        tone(root / "wav" / f"{spk}a01Wa.wav", f0=200 + 10 * i)
    df, skipped = build_manifest("emodb", root)
    err = capsys.readouterr().err
    assert "expected 535, found 10" in err
    assert df.attrs["warnings"] and not df.attrs["verified"]
    text = summarize(df, skipped)
    assert "WARNING count check: emodb: utterances total: expected 535, found 10" in text
    assert "label angry: expected 127, found 10" in text


def test_emodb_incomplete_tree_not_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    df, _ = build_manifest("emodb", make_emodb(tmp_path / "emodb"))
    assert df.attrs["warnings"] == [] and "warning" not in capsys.readouterr().err


def test_emodb_broken_layouts(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        build_manifest("emodb", tmp_path / "nowhere")
    (tmp_path / "empty" / "wav").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"no audio files found.*wav/03a01Fa\.wav"):
        build_manifest("emodb", tmp_path / "empty")
    tone(tmp_path / "bad" / "wav" / "03a01Xa.wav")
    with pytest.raises(CorpusError, match=r"unknown label code 'X' in .*03a01Xa\.wav"):
        build_manifest("emodb", tmp_path / "bad")


def test_registry_and_argument_errors(tmp_path: Path) -> None:
    assert set(corpora.READERS) == {
        "iemocap",
        "emodb",
        "ravdess",
        "cremad",
        "tess",
        "savee",
        "casia",
        "nemo",
        "emobox",
        "folder",
        "csv",
        "synth",
    }
    root = make_emodb(tmp_path / "emodb")
    with pytest.raises(CorpusError, match="unknown corpus 'nope'"):
        build_manifest("nope", root)
    with pytest.raises(CorpusError, match="labels must be"):
        build_manifest("emodb", root, labels="7class")
    with pytest.raises(CorpusError, match="speaker regex"):
        build_manifest("emodb", root, speaker_regex=r"(\d\d)")
    assert issubclass(CorpusError, ValueError)


# --------------------------------------------------------------------------------- CASIA
def test_casia(tmp_path: Path) -> None:
    root = tmp_path / "casia"
    for spk in ("liuchanhg", "wangzhe"):
        for emo in ("angry", "surprise", "neutral"):
            for n in (201, 202):
                tone(root / spk / emo / f"{n}.wav", f0=180 + n % 7)
    df, skipped = build_manifest("casia", root)
    assert len(df) == 12 and skipped == []
    assert set(df["speaker"]) == {"liuchanhg", "wangzhe"}
    assert df["label"].value_counts().to_dict() == {"angry": 4, "neutral": 4, "surprise": 4}
    assert "wangzhe_surprise_202" in set(df["utt_id"])
    assert set(df["gender"]) == {""}
    df4, _ = build_manifest("casia", root, labels="4class")
    assert sorted(set(df4["label"])) == ["angry", "neutral"] and len(df4) == 8
    tone(root / "wangzhe" / "bored" / "201.wav")
    with pytest.raises(CorpusError, match="unknown label code 'bored'"):
        build_manifest("casia", root)


# ------------------------------------------------------------------------------- RAVDESS
def test_ravdess_speech_song_stereo_48k(tmp_path: Path) -> None:
    root = tmp_path / "ravdess"
    sp = root / "Audio_Speech_Actors_01-24"
    so = root / "Audio_Song_Actors_01-24"
    tone(sp / "Actor_01" / "03-01-02-01-01-01-01.wav", sr=48_000)  # calm, speech, male
    tone(sp / "Actor_01" / "03-01-08-02-02-01-01.wav", sr=48_000, channels=2)  # surprised, stereo
    tone(sp / "Actor_02" / "03-01-05-01-01-02-02.wav", sr=48_000, secs=0.5)  # angry, female
    tone(so / "Actor_02" / "03-02-06-01-02-01-02.wav", sr=48_000)  # fearful, song
    tone(so / "Actor_01" / "03-02-03-02-01-01-01.wav", sr=48_000)  # happy, song
    df, skipped = build_manifest("ravdess", root)
    assert skipped == []
    rows = by_id(df)
    assert {u: r["label"] for u, r in rows.items()} == {
        "03-01-02-01-01-01-01": "calm",
        "03-01-08-02-02-01-01": "surprise",
        "03-01-05-01-01-02-02": "angry",
        "03-02-06-01-02-01-02": "fear",
        "03-02-03-02-01-01-01": "happy",
    }
    assert rows["03-01-05-01-01-02-02"]["speaker"] == "Actor_02"
    assert rows["03-01-05-01-01-02-02"]["gender"] == "F"
    assert rows["03-01-08-02-02-01-01"]["gender"] == "M"
    assert rows["03-01-05-01-01-02-02"]["duration"] == pytest.approx(0.5, abs=1e-3)
    assert rows["03-01-08-02-02-01-01"]["text"] == "Dogs are sitting by the door."
    df4, _ = build_manifest("ravdess", root, labels="4class")
    assert dict(zip(df4["utt_id"], df4["label"], strict=True)) == {
        "03-01-05-01-01-02-02": "angry",
        "03-02-03-02-01-01-01": "happy",
    }
    tone(sp / "Actor_03" / "03-01-09-01-01-01-03.wav", sr=48_000)
    with pytest.raises(CorpusError, match="unknown label code '09'"):
        build_manifest("ravdess", root)


def test_ravdess_no_actor_folders(tmp_path: Path) -> None:
    tone(tmp_path / "r" / "speech" / "03-01-02-01-01-01-01.wav")
    with pytest.raises(CorpusError, match=r"no audio files found.*Actor_NN"):
        build_manifest("ravdess", tmp_path / "r")


# -------------------------------------------------------------------------------- CREMA-D
def test_cremad_with_and_without_demographics(tmp_path: Path) -> None:
    root = tmp_path / "crema"
    tone(root / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    tone(root / "AudioWAV" / "1002_IEO_HAP_HI.wav")
    tone(root / "AudioWAV" / "1002_TIE_DIS_LO.wav")
    df, _ = build_manifest("cremad", root)
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "1001_DFA_ANG_XX": "angry",
        "1002_IEO_HAP_HI": "happy",
        "1002_TIE_DIS_LO": "disgust",
    }
    assert df["speaker"].tolist() == ["1001", "1002", "1002"]
    assert set(df["gender"]) == {""}
    assert df["text"][0] == "Don't forget a jacket."
    (root / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n"
    )
    df, _ = build_manifest("cremad", root)
    assert df["gender"].tolist() == ["M", "F", "F"]
    tone(root / "AudioWAV" / "1003_DFA_BOR_XX.wav")
    with pytest.raises(CorpusError, match="unknown label code 'BOR'"):
        build_manifest("cremad", root)


# ----------------------------------------------------------------------------------- TESS
def test_tess_case_variants(tmp_path: Path) -> None:
    root = tmp_path / "TESS Toronto emotional speech set data"
    tone(root / "OAF_Fear" / "OAF_back_fear.wav")
    tone(root / "OAF_Pleasant_surprise" / "OAF_bar_ps.wav")
    tone(root / "YAF_pleasant_surprised" / "YAF_bath_pleasant_surprised.wav")
    tone(root / "yaf_angry" / "YAF_youth_Angry.wav")
    tone(root / "YAF_sad" / "yaf_dog_sad.wav")
    tone(root / "OAF_neutral" / "OAF_chalk_neutral.wav")
    df, _ = build_manifest("tess", root)
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "OAF_back_fear": "fear",
        "OAF_bar_ps": "surprise",
        "OAF_chalk_neutral": "neutral",
        "YAF_bath_pleasant_surprised": "surprise",
        "YAF_dog_sad": "sad",
        "YAF_youth_angry": "angry",
    }
    assert df["speaker"].tolist() == ["OAF", "OAF", "OAF", "YAF", "YAF", "YAF"]
    assert set(df["gender"]) == {"F"}
    assert by_id(df)["YAF_dog_sad"]["text"] == "Say the word dog."
    df4, _ = build_manifest("tess", root, labels="4class")
    assert sorted(df4["label"]) == ["angry", "neutral", "sad"]


def test_tess_unknown_code_and_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "tess"
    tone(root / "OAF_Fear" / "OAF_back_fear.wav")
    tone(root / "copy" / "oaf_fear" / "OAF_back_Fear.wav")
    with pytest.raises(CorpusError, match="two files give the utterance id 'OAF_back_fear'"):
        build_manifest("tess", root)
    root2 = tmp_path / "tess2"
    tone(root2 / "OAF_calm" / "OAF_back_calm.wav")
    with pytest.raises(CorpusError, match=r"unknown label code 'calm' in .*OAF_back_calm\.wav"):
        build_manifest("tess", root2)


# ---------------------------------------------------------------------------------- SAVEE
def test_savee_speaker_folders(tmp_path: Path) -> None:
    root = tmp_path / "AudioData"
    for rel in (
        "DC/sa01.wav",
        "DC/su02.wav",
        "DC/a03.wav",
        "JK/n01.wav",
        "KL/d15.wav",
        "JE/f07.wav",
        "JE/h02.wav",
    ):
        tone(root / rel)
    df, _ = build_manifest("savee", root)
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "DC_a03": "angry",
        "DC_sa01": "sad",
        "DC_su02": "surprise",
        "JE_f07": "fear",
        "JE_h02": "happy",
        "JK_n01": "neutral",
        "KL_d15": "disgust",
    }
    assert set(df["gender"]) == {"M"}
    assert by_id(df)["KL_d15"]["speaker"] == "KL"


def test_savee_flat_layout_and_unknown_code(tmp_path: Path) -> None:
    root = tmp_path / "savee"
    for name in ("DC_sa01", "KL_su05", "JE_h02", "JK_a11"):
        tone(root / "ALL" / f"{name}.wav")
    df, _ = build_manifest("savee", root)
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "DC_sa01": "sad",
        "JE_h02": "happy",
        "JK_a11": "angry",
        "KL_su05": "surprise",
    }
    assert df["speaker"].tolist() == ["DC", "JE", "JK", "KL"]
    tone(root / "ALL" / "DC_x01.wav")
    with pytest.raises(CorpusError, match=r"unknown label code 'x' in .*DC_x01\.wav"):
        build_manifest("savee", root)


# -------------------------------------------------------------------------------- IEMOCAP
EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _block(start: float, utt: str, code: str) -> str:
    return (
        f"[{start:.4f} - {start + 2:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 3.5000]\n"
        f"C-E2:\tNeutral state;\t()\nC-E3:\tFrustration;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n"
        f"A-F1:\tval 2; act 3; dom  3;\t()\n\n"
    )


def make_iemocap(root: Path, missing: str | None = None) -> Path:
    dialogs = {
        "Session1": {
            "Ses01F_impro01": [
                ("Ses01F_impro01_F000", "neu"),
                ("Ses01F_impro01_M003", "fru"),
                ("Ses01F_impro01_M004", "xxx"),
            ],
            "Ses01F_script01_1": [
                ("Ses01F_script01_1_F012", "exc"),
                ("Ses01F_script01_1_M001", "ang"),
            ],
        },
        "Session2": {
            "Ses02M_impro05a": [
                ("Ses02M_impro05a_M010", "sad"),
                ("Ses02M_impro05a_F002", "hap"),
                ("Ses02M_impro05a_F003", "sur"),
            ],
        },
    }
    for session, ds in dialogs.items():
        sdir = root / "IEMOCAP_full_release" / session
        ev = sdir / "dialog" / "EmoEvaluation"
        for i, (dialog, utts) in enumerate(ds.items()):
            text = EVAL_HEADER + "".join(_block(3.0 * j, u, c) for j, (u, c) in enumerate(utts))
            ev.mkdir(parents=True, exist_ok=True)
            (ev / f"{dialog}.txt").write_text(text)
            for j, (u, _) in enumerate(utts):
                if u != missing:
                    tone(sdir / "sentences" / "wav" / dialog / f"{u}.wav", f0=150 + 10 * i + j)
        for sub in ("Categorical", "Attribute", "Self-evaluation"):
            (ev / sub).mkdir(parents=True, exist_ok=True)
            (ev / sub / "ignored.txt").write_text(
                "[1 - 2]\tSes01F_impro01_F000\tbogus\t[1, 2, 3]\n"
            )
        (ev / "._hidden.txt").write_text("mac resource fork")
    tr = root / "IEMOCAP_full_release" / "Session1" / "dialog" / "transcriptions"
    tr.mkdir(parents=True)
    (tr / "Ses01F_impro01.txt").write_text(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "Ses01F_impro01_M003 [010.0000-012.0000]: Do you have your forms?\n"
    )
    return root


def test_iemocap_native(tmp_path: Path) -> None:
    df, skipped = build_manifest("iemocap", make_iemocap(tmp_path / "iemo"))
    rows = by_id(df)
    assert {u: r["label"] for u, r in rows.items()} == {
        "Ses01F_impro01_F000": "neutral",
        "Ses01F_impro01_M003": "frustrated",
        "Ses01F_script01_1_F012": "excited",
        "Ses01F_script01_1_M001": "angry",
        "Ses02M_impro05a_F002": "happy",
        "Ses02M_impro05a_F003": "surprise",
        "Ses02M_impro05a_M010": "sad",
    }  # xxx dropped
    assert rows["Ses01F_impro01_M003"]["speaker"] == "Ses01M"
    assert rows["Ses01F_impro01_F000"]["speaker"] == "Ses01F"
    assert rows["Ses02M_impro05a_F002"]["speaker"] == "Ses02F"
    assert rows["Ses02M_impro05a_F002"]["gender"] == "F"
    assert rows["Ses02M_impro05a_M010"]["session"] == "Session2"
    assert rows["Ses01F_impro01_F000"]["text"] == "Excuse me."
    assert rows["Ses02M_impro05a_M010"]["text"] == ""
    assert Path(rows["Ses01F_script01_1_F012"]["path"]).parts[-3:] == (
        "wav",
        "Ses01F_script01_1",
        "Ses01F_script01_1_F012.wav",
    )
    assert skipped == []


def test_iemocap_four_class_and_missing_wav(tmp_path: Path) -> None:
    root = make_iemocap(tmp_path / "iemo", missing="Ses02M_impro05a_M010")
    df, skipped = build_manifest("iemocap", root, labels="4class")
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "Ses01F_impro01_F000": "neutral",
        "Ses01F_script01_1_F012": "happy",  # exc → happy
        "Ses01F_script01_1_M001": "angry",
        "Ses02M_impro05a_F002": "happy",
    }
    assert len(skipped) == 1 and skipped[0][0].endswith("Ses02M_impro05a_M010.wav")
    assert skipped[0][1] == "no such file"


def test_iemocap_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no Session<n> folders.*EmoEvaluation"):
        build_manifest("iemocap", tmp_path / "empty")
    root = make_iemocap(tmp_path / "iemo")
    ev = (
        root
        / "IEMOCAP_full_release"
        / "Session2"
        / "dialog"
        / "EmoEvaluation"
        / "Ses02M_impro05a.txt"
    )
    ev.write_text(ev.read_text().replace("\tsur\t", "\tzzz\t"))
    with pytest.raises(CorpusError, match=r"unknown label code 'zzz' in .*Ses02M_impro05a\.txt"):
        build_manifest("iemocap", root)


def test_iemocap_count_check_on_complete_release(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "iemo"
    for n in range(1, 6):
        s = root / f"Session{n}"
        utt = f"Ses0{n}F_impro01_F000"
        (s / "dialog" / "EmoEvaluation").mkdir(parents=True)
        (s / "dialog" / "EmoEvaluation" / f"Ses0{n}F_impro01.txt").write_text(
            EVAL_HEADER + _block(1, utt, "neu")
        )
        tone(s / "sentences" / "wav" / f"Ses0{n}F_impro01" / f"{utt}.wav")
    df, skipped = build_manifest("iemocap", root)
    assert "four-class utterances total: expected 5,531, found 5" in capsys.readouterr().err
    text = summarize(df, skipped)
    assert "four-class neutral: expected 1,708, found 5" in text
    assert "four-class Session3: expected 1,151, found 1" in text
    assert "four-class scripted: expected 2,588, found 0" in text


# ------------------------------------------------------------------------ folder and csv
def test_folder_reader_with_speaker_regex(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    tone(root / "Angry" / "spk1_a.wav")
    tone(root / "happy" / "spk2_b.wav")
    tone(root / "sub" / "whisper" / "spk1_c.wav")
    junk(root / "happy" / "spk3_bad.wav")
    df, skipped = build_manifest("folder", root, speaker_regex=r"(spk\d+)_")
    assert dict(zip(df["utt_id"], df["label"], strict=True)) == {
        "Angry__spk1_a": "angry",
        "happy__spk2_b": "happy",
        "sub__whisper__spk1_c": "whisper",
    }
    assert df["speaker"].tolist() == ["spk1", "spk2", "spk1"]
    assert [Path(p).name for p, _ in skipped] == ["spk3_bad.wav"]
    df_nospk, _ = build_manifest("folder", root)
    assert set(df_nospk["speaker"]) == {""}
    with pytest.raises(CorpusError, match=r"speaker regex .* does not match"):
        build_manifest("folder", root, speaker_regex=r"(speaker\d+)")
    tone(root / "loose.wav")
    with pytest.raises(CorpusError, match="no label folder"):
        build_manifest("folder", root)
    (tmp_path / "none").mkdir()
    with pytest.raises(CorpusError, match="no audio files found"):
        build_manifest("folder", tmp_path / "none")


def test_csv_reader(tmp_path: Path) -> None:
    tone(tmp_path / "data" / "clips" / "a.wav")
    tone(tmp_path / "data" / "clips" / "b.wav", secs=0.5)
    table = tmp_path / "data" / "table.csv"
    table.write_text(
        "path,label,speaker,gender\nclips/a.wav,Anger,s1,F\n"
        f"{tmp_path / 'data' / 'clips' / 'b.wav'},calm,s2,M\nclips/missing.wav,sad,s3,F\n"
    )
    df, skipped = build_manifest("csv", table)
    assert df["label"].tolist() == ["angry", "calm"]
    assert df["speaker"].tolist() == ["s1", "s2"] and df["gender"].tolist() == ["F", "M"]
    assert df["path"][0] == str((tmp_path / "data" / "clips" / "a.wav").resolve())
    assert len(skipped) == 1 and skipped[0][1] == "no such file"
    assert df["duration"].tolist() == pytest.approx([0.4, 0.5], abs=1e-3)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,emotion\nx.wav,sad\n")
    with pytest.raises(CorpusError, match="lacks column"):
        build_manifest("csv", bad)


def test_synth_layout(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    for spk in ("spk00", "spk01"):
        for lab in ("neutral", "angry"):
            tone(root / "wav" / spk / lab / f"{spk}_{lab}_000.wav")
    df, _ = build_manifest("synth", root)
    assert len(df) == 4 and set(df["gender"]) == {""}
    assert df["utt_id"].tolist() == sorted(df["utt_id"])
    (root / "speakers.csv").write_text("speaker,gender\nspk00,F\nspk01,M\n")
    df, _ = build_manifest("synth", root)
    assert dict(zip(df["speaker"], df["gender"], strict=False)) == {"spk00": "F", "spk01": "M"}
    assert set(df["label"]) == {"neutral", "angry"}
    tone(root / "wav" / "spk00" / "happy" / "spk01_happy_000.wav")
    with pytest.raises(CorpusError, match="does not follow"):
        build_manifest("synth", root)


def test_summarize_lists_labels_speakers_and_skipped(tmp_path: Path) -> None:
    df, skipped = build_manifest("emodb", make_emodb(tmp_path / "emodb"))
    text = summarize(df, skipped)
    assert text.splitlines()[0].startswith("emodb (native): 6 utterances")
    assert "1 skipped" in text and "11a05Ab.wav" in text
    assert "labels: angry 1, boredom 1, disgust 1, happy 1, neutral 1, sad 1" in text
    spk_line = next(line for line in text.splitlines() if line.startswith("03 "))
    assert spk_line.split() == ["03", "M", "1", "0", "0", "1", "0", "0", "2"]


# ---------------------------------------------------------------------------------- nEMO
def test_nemo_wav_or_ogg_with_data_tsv(tmp_path: Path) -> None:
    root = tmp_path / "nemo"
    rows = ["file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage"]
    for i, (spk, emo, g) in enumerate(
        [("EB0", "anger", "female"), ("EB0", "surprised", "female"), ("WR0", "sadness", "male")]
    ):
        tone(root / "samples" / f"{spk}_{emo}_{i}.wav", f0=200 + 10 * i)
        rows.append(f"{spk}_{emo}_{i}.wav\t{emo}\tZdanie {i}.\tzdanie {i}\t        {spk}\t{g}\t23")
    (root / "data.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    df, skipped = build_manifest("nemo", root)
    assert skipped == [] and len(df) == 3
    assert df.set_index("utt_id")["label"].to_dict() == {
        "EB0_anger_0": "angry",
        "EB0_surprised_1": "surprise",
        "WR0_sadness_2": "sad",
    }
    assert set(df["speaker"]) == {"EB0", "WR0"}
    assert df.set_index("utt_id").loc["WR0_sadness_2", "gender"] == "M"
    assert df.set_index("utt_id").loc["EB0_anger_0", "text"] == "Zdanie 0."
    # a re-encoded copy (Ogg Vorbis, another rate) reads the same; data.tsv still names .wav
    x = testing.tone(0.5, 24_000, 300.0, amp=0.3)
    (root / "samples" / "WR0_sadness_2.wav").unlink()
    sf.write(str(root / "samples" / "WR0_sadness_2.ogg"), x, 24_000, format="OGG", subtype="VORBIS")
    df2, _ = build_manifest("nemo", root)
    assert df2.set_index("utt_id").loc["WR0_sadness_2", "gender"] == "M"
    assert df2["path"].str.endswith(".ogg").sum() == 1
    # incomplete tree: no count check; a foreign file name is an error naming the layout
    assert df2.attrs["verified"] == ""
    tone(root / "samples" / "EB0_bored_9.wav")
    with pytest.raises(CorpusError, match="unknown emotion 'bored'"):
        build_manifest("nemo", root)
