"""Built-in synthetic 4-class emotional speech corpus, spoken by eSpeak NG.

Why this is one module (over 500 lines): it is one recipe (speakers → prosody rules → SSML →
eSpeak → checked WAVs + manifest) read top to bottom; nothing else imports its parts.

Why: the package needs a corpus it can make itself, with no download and no licence, so that
`stlser demo`, the tests and CI can run the whole pipeline end to end. Each utterance is one of
the built-in neutral sentences (``synth_sentences.txt``) spoken with the prosody rules for
neutral, happy, sad or angry speech from the emotional-speech-synthesis literature (Murray &
Arnott 1993; Burkhardt & Sendlmeier 2000; Schröder 2001): pitch level and range, speaking rate,
loudness, clause tune, emphasis and spectral tilt (voice effort). Every parameter gets seeded
per-speaker and per-utterance jitter so that the classes overlap, then noise at a random SNR and
a random leading/trailing silence are added. See docs/synthetic_corpus.md.

It is for demos and tests only: synthetic, rule-based "emotions" say nothing about how a model
does on real emotional speech.

Engine: libespeak-ng and its data from the ``espeakng-loader`` wheel, driven through ctypes (no
system eSpeak needed). eSpeak keeps internal state between utterances (e.g. its pitch-flutter
phase), so each speaker is spoken in a fresh worker process in a fixed order; that makes the
output byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import csv
import ctypes
import io
import multiprocessing as mp
import os
import queue
import re
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from stlser.audio import SAMPLE_RATE, resample, write_wav
from stlser.utils import write_text

#: Class labels, in manifest order.
LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
MANIFEST_COLUMNS = (
    "utt_id",
    "path",
    "label",
    "speaker",
    "session",
    "gender",
    "duration",
    "corpus",
    "text",
)
CORPUS = "synth"
MIN_SECONDS = 0.5
SENTENCES_FILE = Path(__file__).with_name("synth_sentences.txt")


# ----------------------------------------------------------------------------- emotion styles
@dataclass(frozen=True)
class Style:
    """Mean prosody of one emotion, in eSpeak units.

    rate: words per minute (eSpeak default 175); pitch: espeakPITCH base level 0-100 (50);
    range: espeakRANGE intonation range 0-100 (50); volume: espeakVOLUME 0-200 (100);
    exclaim: probability of the exclamatory clause tune ("!") instead of a statement;
    emphasis: probability that one content word gets SSML <emphasis>;
    tilt: spectral tilt in dB/octave around 1 kHz (+ tense, effortful; - lax, soft).
    """

    rate: float
    pitch: float
    range: float
    volume: float
    exclaim: float
    emphasis: float
    tilt: float


#: Murray & Arnott (1993, table 1): anger slightly faster, very much higher pitch, much wider
#: range, higher intensity; happiness faster, much higher pitch, much wider range, higher
#: intensity; sadness slightly slower, slightly lower pitch, slightly narrower range, lower
#: intensity. Voice quality (tense anger, lax sadness) after Burkhardt & Sendlmeier (2000).
STYLES: dict[str, Style] = {
    "neutral": Style(
        rate=170, pitch=45, range=45, volume=100, exclaim=0.05, emphasis=0.05, tilt=0.0
    ),
    "happy": Style(rate=188, pitch=66, range=78, volume=118, exclaim=0.50, emphasis=0.15, tilt=0.5),
    "sad": Style(rate=142, pitch=34, range=28, volume=78, exclaim=0.0, emphasis=0.0, tilt=-1.5),
    "angry": Style(rate=195, pitch=70, range=70, volume=140, exclaim=0.60, emphasis=0.60, tilt=2.0),
}

#: Standard deviation of the per-utterance jitter on each parameter (rate is relative).
JITTER = {"rate": 0.09, "pitch": 8.0, "range": 12.0, "volume": 0.13, "tilt": 1.0}
#: Standard deviation of the per-speaker baseline offsets (a speaker's habitual prosody).
SPEAKER_SPREAD = {"rate": 0.07, "pitch": 6.0, "range": 8.0, "gain_db": 3.0}
SNR_DB = (15.0, 35.0)
SILENCE_S = (0.05, 0.35)

#: Voice variants (language + eSpeak voice variant from voices/!v), alternating male/female.
MALE_VOICES = (
    "en+m1",
    "en-us+m3",
    "en-gb-scotland+m4",
    "en-029+m6",
    "en-us+m2",
    "en-gb-x-rp+m7",
    "en+m8",
    "en-us+m5",
    "en+Lee",
    "en-us+Denis",
)
FEMALE_VOICES = (
    "en-us+f1",
    "en+f2",
    "en-gb-x-rp+f3",
    "en+f4",
    "en-gb-scotland+f5",
    "en-us+belinda",
    "en+steph",
    "en-us+Annie",
    "en-029+f2",
    "en-us+linda",
)


def speaker_table(speakers: int) -> list[tuple[str, str, str]]:
    """(speaker, gender, voice) for each speaker: even indices male, odd female.

    Past 20 speakers the voices repeat; the per-speaker prosody offsets still differ.
    """
    rows = []
    for i in range(speakers):
        pool = MALE_VOICES if i % 2 == 0 else FEMALE_VOICES
        rows.append((f"spk{i:02d}", "M" if i % 2 == 0 else "F", pool[(i // 2) % len(pool)]))
    return rows


def load_sentences(path: str | os.PathLike = SENTENCES_FILE) -> list[str]:
    """The built-in sentence list (comments and blank lines dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


# ------------------------------------------------------------------------------------ engine
_ESPEAK_PARAMS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 0x01
_SSML = 0x10
_POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def espeak_paths() -> tuple[Path, Path]:
    """(library, data folder) of the bundled eSpeak NG; RuntimeError saying why if unusable."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise RuntimeError(
            "eSpeak NG is not available: the Python package 'espeakng-loader' "
            f"is not installed ({e}); pip install espeakng-loader"
        ) from None
    lib = Path(espeakng_loader.get_library_path())
    if not lib.is_file():
        raise RuntimeError(f"eSpeak NG library not found at {lib} (broken espeakng-loader install)")
    try:
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError as e:
        raise RuntimeError(f"eSpeak NG data folder missing: {e}") from None
    for need in ("phontab", "phondata", "en_dict", "voices/!v"):
        if not (data / need).exists():
            raise RuntimeError(f"eSpeak NG data incomplete: {data / need} is missing")
    return lib, data


class Engine:
    """One initialised libespeak-ng in this process (the library is a process-wide singleton)."""

    def __init__(self) -> None:
        lib_path, data = espeak_paths()
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as e:
            raise RuntimeError(f"cannot load the eSpeak NG library {lib_path}: {e}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (code {rate}) with data folder {data}")
        self.lib, self.sample_rate = lib, int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav: Any, n: int, _events: Any) -> int:
            if wav and n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def set_voice(self, name: str) -> None:
        if name != self._voice:
            err = self.lib.espeak_SetVoiceByName(name.encode())
            if err != 0:
                raise RuntimeError(f"eSpeak NG has no voice {name!r} (error {err})")
            self._voice = name

    def speak(
        self, ssml: str, voice: str, *, rate: int, pitch: int, range: int, volume: int, seed: int
    ) -> np.ndarray:
        """Speak an SSML document; return float32 samples in [-1, 1] at `self.sample_rate`."""
        self.set_voice(voice)
        self.lib.espeak_ng_SetRandSeed(seed)
        for name, value in (("rate", rate), ("pitch", pitch), ("range", range), ("volume", volume)):
            err = self.lib.espeak_SetParameter(_ESPEAK_PARAMS[name], int(value), 0)
            if err != 0:
                raise RuntimeError(f"espeak_SetParameter({name}={value}) failed (error {err})")
        self._chunks = []
        text = ssml.encode("utf-8")
        err = self.lib.espeak_Synth(
            text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _SSML, None, None
        )
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed (error {err}) for {ssml!r}")
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {ssml!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


_ENGINE: Engine | None = None


def engine() -> Engine:
    """The process's eSpeak engine, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine()
    return _ENGINE


# ----------------------------------------------------------------------------- signal pieces
def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def apply_tilt(x: np.ndarray, sr: int, db_per_octave: float) -> np.ndarray:
    """Zero-phase spectral tilt around 1 kHz (capped at ±12 dB), e.g. tense vs lax voice."""
    if abs(db_per_octave) < 1e-6:
        return x
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / sr)
    octaves = np.log2(np.maximum(f, 62.5) / 1000.0)
    gain_db = np.clip(db_per_octave * octaves, -12.0, 12.0)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=x.size).astype(np.float32)


def make_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise."""
    w = rng.standard_normal(n)
    if colour == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        w = np.fft.irfft(spec / np.sqrt(f), n=n)
    w = w - w.mean()
    return (w / (np.sqrt(np.mean(w**2)) + 1e-12)).astype(np.float32)


def _ssml(sentence: str, exclaim: bool, emphasis_word: int | None) -> str:
    """The SSML that eSpeak speaks: optional <emphasis> on one word, optional "!" tune."""
    words = [escape(w) for w in sentence.split()]
    if emphasis_word is not None:
        words[emphasis_word] = f"<emphasis>{words[emphasis_word]}</emphasis>"
    body = " ".join(words)
    if exclaim:
        body = re.sub(r"\.$", "!", body)
    return f"<speak>{body}</speak>"


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    speaker_index: int
    speaker: str
    voice: str
    gender: str
    per_class: int
    sentences: tuple[str, ...]


def _speak_speaker(job: _Job) -> list[dict[str, str]]:
    """Speak all utterances of one speaker (in a fresh process); return manifest rows."""
    eng = engine()
    srng = _rng(job.seed, job.speaker_index, 1_000_003)
    order = srng.permutation(len(job.sentences))
    spk_rate = float(np.exp(srng.normal(0, SPEAKER_SPREAD["rate"])))
    spk_pitch = srng.normal(0, SPEAKER_SPREAD["pitch"])
    spk_range = srng.normal(0, SPEAKER_SPREAD["range"])
    spk_gain = 10 ** (srng.normal(0, SPEAKER_SPREAD["gain_db"]) / 20)
    rows = []
    for li, label in enumerate(LABELS):
        st = STYLES[label]
        for i in range(job.per_class):
            r = _rng(job.seed, job.speaker_index, li, i)
            sentence = job.sentences[order[i % len(order)]]
            rate = st.rate * spk_rate * np.exp(r.normal(0, JITTER["rate"]))
            pitch = st.pitch + spk_pitch + r.normal(0, JITTER["pitch"])
            prange = st.range + spk_range + r.normal(0, JITTER["range"])
            volume = st.volume * np.exp(r.normal(0, JITTER["volume"]))
            tilt = st.tilt + r.normal(0, JITTER["tilt"])
            exclaim = bool(r.random() < st.exclaim)
            words = sentence.split()
            long_words = [k for k, w in enumerate(words) if len(w.strip(".,!?")) > 3]
            emph = bool(r.random() < st.emphasis) and bool(long_words)
            emph_word = int(r.choice(long_words)) if emph else None
            snr = r.uniform(*SNR_DB)
            colour = "pink" if r.random() < 0.5 else "white"
            lead, trail = r.uniform(*SILENCE_S, size=2)
            engine_seed = int(r.integers(1, 2**31 - 1))
            noise_seed = int(r.integers(0, 2**63 - 1))

            x = eng.speak(
                _ssml(sentence, exclaim, emph_word),
                job.voice,
                rate=int(np.clip(round(rate), 80, 450)),
                pitch=int(np.clip(round(pitch), 0, 100)),
                range=int(np.clip(round(prange), 0, 100)),
                volume=int(np.clip(round(volume), 10, 200)),
                seed=engine_seed,
            )
            x = _trim(x)
            x = resample(x, eng.sample_rate, SAMPLE_RATE)
            x = apply_tilt(x, SAMPLE_RATE, tilt) * (0.35 * spk_gain)
            x = _finish(x, lead, trail, snr, colour, noise_seed)
            utt = f"{job.speaker}_{label}_{i:03d}"
            path = Path(job.out) / "wav" / job.speaker / label / f"{utt}.wav"
            write_wav(path, x, SAMPLE_RATE, subtype="PCM_16")
            rows.append(
                {
                    "utt_id": utt,
                    "path": str(path),
                    "label": label,
                    "speaker": job.speaker,
                    "session": "",
                    "gender": job.gender,
                    "duration": f"{x.size / SAMPLE_RATE:.4f}",
                    "corpus": CORPUS,
                    "text": sentence,
                }
            )
            if _PROGRESS is not None:
                _PROGRESS.put(1)
    return rows


def _trim(x: np.ndarray, thresh: float = 1e-3) -> np.ndarray:
    """Drop eSpeak's own leading/trailing silence so that ours is the only one."""
    idx = np.flatnonzero(np.abs(x) > thresh)
    return x[idx[0] : idx[-1] + 1] if idx.size else x


def _finish(
    x: np.ndarray, lead: float, trail: float, snr_db: float, colour: str, noise_seed: int
) -> np.ndarray:
    """Pad silence (to ≥ MIN_SECONDS), add noise at `snr_db` re speech power, avoid clipping."""
    power = float(np.mean(x**2)) + 1e-12
    n_lead, n_trail = int(lead * SAMPLE_RATE), int(trail * SAMPLE_RATE)
    short = max(0, int(np.ceil(MIN_SECONDS * SAMPLE_RATE)) + 1 - (x.size + n_lead + n_trail))
    n_trail += short
    y = np.concatenate([np.zeros(n_lead, np.float32), x, np.zeros(n_trail, np.float32)])
    noise = make_noise(np.random.default_rng(noise_seed), y.size, colour)
    y = y + noise * np.float32(np.sqrt(power / 10 ** (snr_db / 10)))
    peak = float(np.max(np.abs(y)))
    if peak > 0.98:
        y = y * (0.98 / peak)
    return y.astype(np.float32)


# -------------------------------------------------------------------------- worker plumbing
_PROGRESS: Any = None


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _drain(q: Any) -> int:
    n = 0
    while True:
        try:
            n += q.get_nowait()
        except queue.Empty:
            return n


def _csv(rows: list[dict[str, str]] | list[tuple], header: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([row[c] for c in header] if isinstance(row, dict) else row)
    return buf.getvalue()


_README = """\
stlser synthetic emotional speech corpus (SYNTHETIC - for demos and tests only)

Every file here was generated by `stlser synth` (eSpeak NG formant synthesis with rule-based
emotion prosody, per-utterance jitter, added noise). The "emotions" are prosody rules, not
human emotional speech: results on this corpus say nothing about real speech emotion
recognition and must not be reported as a benchmark.

parameters: speakers={speakers} per_class={per_class} seed={seed}
classes: {labels}
files: {n} WAVs, 16 kHz mono 16-bit, in wav/<speaker>/<label>/<speaker>_<label>_<NNN>.wav
manifest.csv: utt_id,path,label,speaker,session,gender,duration,corpus,text
speakers.csv: speaker,gender,voice (eSpeak NG voice variant)
See docs/synthetic_corpus.md in the stlser source for the prosody rules and their sources.
"""


def generate(
    out: str | os.PathLike,
    speakers: int = 8,
    per_class: int = 40,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the synthetic corpus under `out`; return the path of its manifest.csv.

    `per_class` is utterances per class per speaker; `workers` defaults to the CPU count.
    The same arguments give byte-identical WAVs (and manifest, up to the absolute paths).
    """
    if speakers < 1 or per_class < 1:
        raise ValueError(f"speakers and per_class must be >= 1 (got {speakers}, {per_class})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    espeak_paths()  # fail early, in this process, with a clear message
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = tuple(load_sentences())
    table = speaker_table(speakers)
    jobs = [
        _Job(str(out_dir), seed, k, spk, voice, gender, per_class, sentences)
        for k, (spk, gender, voice) in enumerate(table)
    ]
    total = speakers * len(LABELS) * per_class
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))

    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    ticks = ctx.Queue()
    rows: list[dict[str, str]] = []
    with (
        tqdm(total=total, desc="synth", unit="utt", disable=not progress) as bar,
        ProcessPoolExecutor(
            n_workers,
            mp_context=ctx,
            max_tasks_per_child=1,
            initializer=_init_worker,
            initargs=(ticks,),
        ) as pool,
    ):
        pending = {pool.submit(_speak_speaker, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            bar.update(_drain(ticks))
            for fut in done:
                rows.extend(fut.result())
        bar.update(total - bar.n)
    ticks.close()

    rows.sort(key=lambda r: r["utt_id"])
    _remove_stale(out_dir, {r["path"] for r in rows})
    write_text(out_dir / "speakers.csv", _csv(table, ("speaker", "gender", "voice")))
    write_text(
        out_dir / "README.txt",
        _README.format(
            speakers=speakers, per_class=per_class, seed=seed, labels=", ".join(LABELS), n=len(rows)
        ),
    )
    manifest = out_dir / "manifest.csv"
    write_text(manifest, _csv(rows, MANIFEST_COLUMNS))
    return manifest


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete WAVs of an earlier, larger run in the same folder (only files named like ours)."""
    pattern = re.compile(r"spk\d+_(" + "|".join(LABELS) + r")_\d+\.wav")
    for p in (out_dir / "wav").glob("spk*/*/*.wav"):
        if pattern.fullmatch(p.name) and str(p) not in keep:
            p.unlink()
