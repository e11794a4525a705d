"""The recognizer core shared by `stlser.inference` (torch) and `stlser.onnx_runtime`: result
types, input decoding, batching, and :class:`BaseRecognizer`, which implements
``predict``/``predict_batch``/``segments``/``stream`` on top of one method a runtime provides:
``_run(wave[B, N] float32, lengths[B] int64) -> probs[B, C]``.

Imports only numpy and stlser's numpy modules (`audio`, `vad`, `adapt`), so the ONNX runtime
stays torch-free.

Why this is one module: every runtime (torch, onnxruntime) gets clips, batches, recordings,
streams and speaker adaptation from the one base class here; split, each piece would reach
back into the others' private helpers (decoding, padding, windowing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stlser import audio, calibration
from stlser.adapt import NOT_ADAPTABLE, RunningStats, SpeakerStats, adapted, stats_of
from stlser.audio import AudioError, _Resampler, iter_array_blocks, iter_blocks, to_float
from stlser.locate import (  # noqa: F401  (part of this module's API)
    BASE,
    describe_model,
    is_shipped_name,
    resolve_init_path,
    resolve_model_path,
    shipped_model,
)
from stlser.safety import ModelRunError
from stlser.vad import SampleBuffer, VADConfig, iter_speech_windows

SAMPLE_RATE = audio.SAMPLE_RATE
#: The network's CNN pools time by 16: clips are zero-padded (lengths unchanged) to this width.
MIN_BATCH_SAMPLES = int(audio.MIN_SECONDS * SAMPLE_RATE)
#: Batches are padded to a multiple of this many samples (0.5 s); see `pad_batch`.
PAD_QUANTUM = SAMPLE_RATE // 2


# ------------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """The emotion of one clip: top label, every label's probability, clip length (s);
    `unsure`: the top probability is below `stlser.calibration.UNSURE_BELOW`."""

    label: str
    probabilities: dict[str, float]
    duration: float
    unsure: bool = False

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Segment:
    """The emotion of one stretch [start, end) of a longer recording (seconds)."""

    start: float
    end: float
    label: str
    probabilities: dict[str, float]
    unsure: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ decoding
def is_source(x: object) -> bool:
    """True for what `stlser.audio.load` decodes: a path, bytes or a binary file object."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or hasattr(x, "read")


def decode(
    x: Any, sample_rate: int | None = None, max_seconds: float | None = audio.MAX_CLIP_SECONDS
) -> np.ndarray:
    """Any accepted input → validated 16 kHz mono float32 (raises AudioError for bad audio).

    Paths, bytes and binary file objects are decoded at their own rate (`sample_rate` is then
    ignored); arrays (``samples`` or ``samples × channels``, float or integer PCM) need it.
    Files and arrays get the same limits, checked before decoding or resampling: a sample rate
    of at least `audio.MIN_SAMPLE_RATE` and at most `max_seconds` of audio (default
    `audio.MAX_CLIP_SECONDS`; longer recordings go through `segments`, which streams).
    """
    if is_source(x):
        return audio.load(x, max_seconds=max_seconds)
    if sample_rate is None:
        raise ValueError(
            "sample_rate is required when passing an array of samples "
            "(e.g. recognizer.predict(x, sample_rate=44100))"
        )
    return audio.from_array(np.asarray(x), sample_rate, max_seconds=max_seconds)


# ----------------------------------------------------------------------------- batching
def _rewind(x: Any) -> None:
    """Ready a source for a second pass: paths, bytes and arrays are read anew; a file object
    must be seekable."""
    if hasattr(x, "read"):
        if not (hasattr(x, "seek") and getattr(x, "seekable", lambda: True)()):
            raise ValueError("adapting to a recording reads it twice: give a seekable file")
        x.seek(0)


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    waves: Sequence[np.ndarray], quantum: int = PAD_QUANTUM
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D float32 waves → (wave[B, N] float32, lengths[B] int64).

    N is at least 0.25 s and rounded up to a multiple of `quantum` samples: the network is
    exact under padding, and few distinct shapes keep the runtimes' per-shape caches (oneDNN
    primitives, allocator arenas) small — memory stays flat over hours of audio.
    """
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    n = max(int(lengths.max(initial=0)), MIN_BATCH_SAMPLES)
    if quantum > 1:
        n = -(-n // quantum) * quantum
    out = np.zeros((len(waves), n), np.float32)
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lengths


class BaseRecognizer:
    """Everything but the network call; subclasses set `labels` and implement `_run`.

    Models over functionals can be adapted to a speaker (`adapt`): `_run` then normalises the
    functionals with `speaker` (that speaker's statistics) instead of the training set's."""

    labels: list[str]
    sample_rate: int = SAMPLE_RATE
    #: model output columns kept by `restrict` (None: all)
    _keep: list[int] | None = None
    #: the speaker statistics every prediction uses (set by `adapt`); None: global statistics
    speaker: SpeakerStats | None = None
    #: what the last `adapt` was given (usable or not), for reports
    adaptation: SpeakerStats | None = None
    #: a model over functionals: the sets and their number of values (None: not adaptable)
    functional_sets: list[str] | None = None
    functionals_dim: int = 0
    #: the training set's functional mean and std, the normalisation without a speaker (and
    #: the prior speaker statistics are shrunk toward, `stlser.adapt.shrunk`)
    global_stats: tuple[np.ndarray, np.ndarray] | None = None
    #: answer settings (`stlser.calibration`): temperature per normalisation, default labels
    temperature: dict[str, float] = {"global": 1.0, "speaker": 1.0}  # noqa: RUF012
    default_labels: list[str] | None = None

    def _answer_with(self, meta: dict[str, Any]) -> None:
        """Take the model's answer settings from its metadata and answer with its default
        labels (a runtime calls this once its `labels` are set)."""
        self.temperature, self.default_labels = calibration.settings(meta)
        if self.default_labels and not set(self.default_labels) <= set(self.labels):
            raise ValueError(f"default labels {self.default_labels} not among {self.labels}")
        self.restrict(None)

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """wave[B, N] float32, lengths[B] int64 → probabilities[B, C] float (numpy)."""
        raise NotImplementedError

    def _functionals(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """wave[B, N], lengths[B] → the model's functionals [B, D] (adaptable models only)."""
        raise ValueError(NOT_ADAPTABLE)

    def _functionals_of(self, waves: list[np.ndarray]) -> np.ndarray:
        return self._functionals(*pad_batch(waves))

    # --- speaker adaptation
    @property
    def adaptable(self) -> bool:
        return self.functional_sets is not None

    def speaker_stats(
        self,
        clips: Iterable[Any],
        sample_rate: int | None = None,
        speaker: str = "",
        batch_size: int = 16,
    ) -> SpeakerStats:
        """The statistics of one speaker's clips (paths, bytes, arrays with `sample_rate`),
        computed as crossval computes a test speaker's (`stlser.adapt`); clips are decoded a
        batch at a time, so any number fits in memory. A bad clip raises its AudioError."""
        if not self.adaptable:
            raise ValueError(NOT_ADAPTABLE)
        waves = (decode(x, sample_rate) for x in clips)
        got = stats_of(waves, self._functionals_of, self.functional_sets or [], speaker, batch_size)
        if got is None:
            raise ValueError("speaker statistics need at least one clip")
        return got

    def adapt(
        self, speaker: SpeakerStats | Iterable[Any], sample_rate: int | None = None
    ) -> BaseRecognizer:
        """A recognizer for one speaker: its functionals normalised with that speaker's own
        statistics (`SpeakerStats`, or computed here from the speaker's unlabeled clips), shrunk
        toward the global ones (`stlser.adapt.shrunk`: a few clips count little, many clips
        give crossval's normalisation). Too few clips or too little audio
        (`stlser.adapt.MIN_CLIPS`, `MIN_SECONDS`): the global statistics stay, with a warning
        (`adaptation` records what was given). This recognizer is not changed."""
        if not isinstance(speaker, SpeakerStats):
            speaker = self.speaker_stats(speaker, sample_rate)
        return adapted(self, speaker)

    @property
    def all_labels(self) -> list[str]:
        """Every label the model knows (`labels`: those it answers with now)."""
        return list(getattr(self, "_all_labels", None) or self.labels)

    def restrict(self, labels: Sequence[str] | None) -> BaseRecognizer:
        """Answer with these labels only: the model's probabilities of them, renormalised to
        sum to 1 (e.g. the 4 IEMOCAP classes of a model that knows 8). None: the model's
        default labels (`default_labels`, else all); ``["all"]`` or ``all_labels``: every label."""
        full = self.all_labels
        self._all_labels = full
        labels = labels or self.default_labels
        if list(labels or []) == ["all"] and "all" not in full:
            labels = full
        if not labels or list(labels) == full:
            self._keep, self.labels = None, list(full)
            return self
        wanted = [str(x).strip() for x in labels]
        unknown = [x for x in wanted if x not in full]
        if unknown or len(set(wanted)) != len(wanted):
            raise ValueError(
                f"labels {unknown or wanted} not usable: the model knows {', '.join(full)} "
                "(each at most once)"
            )
        self._keep = [full.index(x) for x in wanted]
        self.labels = wanted
        return self

    def probabilities(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities [B, C] of already decoded 16 kHz mono clips, as one padded batch."""
        if not waves:
            return np.zeros((0, len(self.labels)), np.float32)
        wave, lengths = pad_batch(waves)
        try:
            p = np.asarray(self._run(wave, lengths), dtype=np.float64)
        except (AudioError, ModelRunError):
            raise
        except (RuntimeError, MemoryError) as e:  # torch/onnxruntime failures, allocation
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            source = (getattr(self, "meta", None) or {}).get("source") or type(self).__name__
            raise ModelRunError(source, f"{type(e).__name__}: {first}") from None
        p = calibration.apply(p, self.temperature["global" if self.speaker is None else "speaker"])
        if self._keep is not None:
            p = p[:, self._keep]
            p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        return p

    def _probs_dict(self, p: np.ndarray) -> dict[str, float]:
        return {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}

    def _answer(self, p: np.ndarray) -> tuple[str, dict[str, float], bool]:
        """(top label, every label's probability, unsure) of one row of probabilities."""
        top = self.labels[int(np.argmax(p))]
        return top, self._probs_dict(p), bool(p.max() < calibration.UNSURE_BELOW)

    def _prediction(self, p: np.ndarray, n_samples: int) -> Prediction:
        label, probs, unsure = self._answer(p)
        return Prediction(label, probs, n_samples / SAMPLE_RATE, unsure)

    def _segment(self, p: np.ndarray, a: int, b: int) -> Segment:
        label, probs, unsure = self._answer(p)
        return Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, label, probs, unsure)

    # --- clips
    def predict(
        self, x: Any, sample_rate: int | None = None, speaker: SpeakerStats | None = None
    ) -> Prediction:
        """Emotion of one clip: a path, bytes, a binary file object, or an array (then
        `sample_rate` is required); with `speaker`, normalised with that speaker's statistics
        (`adapt`). Bad audio raises `stlser.audio.AudioError`."""
        if speaker is not None:
            return self.adapt(speaker).predict(x, sample_rate)
        wave = decode(x, sample_rate)
        return self._prediction(self.probabilities([wave])[0], len(wave))

    def predict_windows(
        self,
        x: Any,
        window: float = 20.0,
        max_seconds: float | None = None,
        block_seconds: float = 5.0,
    ) -> Prediction:
        """Emotion of one long recording with bounded memory: the source (path, bytes, file
        object) is decoded block by block and cut into the fewest equal consecutive windows of
        at most `window` seconds; each window is classified as soon as it is complete and the
        probabilities are averaged, weighted by window length. Memory: one window and its
        forward pass, whatever the length. Audio of at most `window` seconds is one window, so
        the result equals `predict`. Bad audio raises AudioError (as `predict`)."""
        if not is_source(x):
            raise TypeError("predict_windows decodes a path, bytes or a binary file object")
        meta = audio.info(x)
        audio.check_limits(meta, x, max_seconds)
        wmax = max(MIN_BATCH_SAMPLES, int(round(window * SAMPLE_RATE)))
        expected = int(round(meta.frames * SAMPLE_RATE / max(meta.sample_rate, 1)))
        n_win = max(1, -(-expected // wmax))
        size = max(MIN_BATCH_SAMPLES, -(-expected // n_win))  # equal windows of <= wmax
        buf = SampleBuffer()
        total, peak = 0, 0.0
        acc = np.zeros(len(self.labels), np.float64)
        start = 0
        for block in iter_blocks(x, block_seconds, max_seconds):
            buf.append(block)
            total += block.size
            peak = max(peak, float(np.max(np.abs(block))) if block.size else 0.0)
            while buf.end - start >= size and buf.end - start > 0:
                acc += size * self.probabilities([buf.get(start, start + size)])[0]
                start += size
                buf.drop_before(start)
        rest = buf.end - start
        if rest > 0:
            wave = buf.get(start, buf.end)
            if rest < MIN_BATCH_SAMPLES and start > 0:  # a sliver: fold into the average
                wave = np.pad(wave, (0, MIN_BATCH_SAMPLES - rest))
            acc += rest * self.probabilities([wave])[0]
        if total < int(audio.MIN_SECONDS * SAMPLE_RATE):
            raise AudioError(
                x, f"too short ({total / SAMPLE_RATE:.3f} s < minimum {audio.MIN_SECONDS} s)"
            )
        if peak < audio.SILENCE_PEAK:
            raise AudioError(x, "silent (peak amplitude below 1e-4)")
        p = acc / max(acc.sum(), 1e-12)
        return self._prediction(p, total)

    def iter_predict(
        self,
        inputs: Iterable[Any],
        batch_size: int = 16,
        sample_rate: int | None = None,
        group: int = 8,
    ) -> Iterator[tuple[int, Prediction | AudioError]]:
        """(index, Prediction or the AudioError) for each input, in input order.

        Inputs are decoded `batch_size * group` at a time, sorted by length within that group
        and batched, so memory stays bounded for any number of files.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        it = iter(enumerate(inputs))
        while True:
            chunk = []
            for _ in range(batch_size * max(1, group)):
                try:
                    chunk.append(next(it))
                except StopIteration:
                    break
            if not chunk:
                return
            results: dict[int, Prediction | AudioError] = {}
            waves: list[np.ndarray] = []
            where: list[int] = []
            for i, x in chunk:
                try:
                    waves.append(decode(x, sample_rate))
                    where.append(i)
                except AudioError as e:
                    results[i] = e
            for batch in _batches_by_length([len(w) for w in waves], batch_size):
                probs = self.probabilities([waves[j] for j in batch])
                for j, p in zip(batch, probs, strict=True):
                    results[where[j]] = self._prediction(p, len(waves[j]))
            for i, _ in chunk:
                yield i, results[i]

    def predict_batch(
        self,
        inputs: Iterable[Any],
        batch_size: int = 16,
        sample_rate: int | None = None,
        speaker: SpeakerStats | None = None,
    ) -> list[Prediction]:
        """Predictions for many clips, batching clips of similar length; equal to calling
        `predict` on each (with `speaker`: adapted to that speaker). The first bad input
        raises its AudioError."""
        if speaker is not None:
            return self.adapt(speaker).predict_batch(inputs, batch_size, sample_rate)
        out = []
        for _, r in self.iter_predict(inputs, batch_size, sample_rate):
            if isinstance(r, AudioError):
                raise r
            out.append(r)
        return out

    # --- long recordings
    def _speech_windows(
        self,
        x: Any,
        sample_rate: int | None = None,
        max_window: float = 6.0,
        min_speech: float = 0.3,
        min_silence: float = 0.3,
        threshold_db: float = 10.0,
        pad: float = 0.1,
        block_seconds: float = 10.0,
        max_seconds: float | None = None,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, end, samples) of every speech window of a recording, decoded block by block."""
        if is_source(x):
            blocks: Iterable[np.ndarray] = iter_blocks(x, block_seconds, max_seconds)
        else:
            if sample_rate is None:
                raise ValueError("sample_rate is required when passing an array of samples")
            n, ch = audio.array_shape(x)
            rate = audio.check_array(n, sample_rate, ch, max_seconds)
            arr = audio.resample(to_float(x), rate)  # silence is allowed here
            if arr.size == 0:
                raise AudioError("<array>", "no audio samples")
            blocks = iter_array_blocks(arr, max(1, int(block_seconds * SAMPLE_RATE)))
        cfg = VADConfig(min_speech=min_speech, min_silence=min_silence, threshold_db=threshold_db)
        yield from iter_speech_windows(blocks, max_window, pad, cfg)

    def iter_segments(
        self,
        x: Any,
        sample_rate: int | None = None,
        max_window: float = 6.0,
        min_speech: float = 0.3,
        min_silence: float = 0.3,
        threshold_db: float = 10.0,
        pad: float = 0.1,
        batch_size: int = 8,
        block_seconds: float = 10.0,
        max_seconds: float | None = None,
        adapt: bool = False,
    ) -> Iterator[Segment]:
        """Like `segments`, yielding segments as they are found (constant memory)."""
        kw = {
            "max_window": max_window,
            "min_speech": min_speech,
            "min_silence": min_silence,
            "threshold_db": threshold_db,
            "pad": pad,
            "block_seconds": block_seconds,
            "max_seconds": max_seconds,
        }
        if adapt:  # the recording as its own speaker: a first pass for its statistics
            stats = self.recording_stats(x, sample_rate, batch_size=batch_size, **kw)
            if stats is None:
                return
            _rewind(x)
            yield from self.adapt(stats).iter_segments(x, sample_rate, batch_size=batch_size, **kw)
            return
        pending: list[tuple[int, int, np.ndarray]] = []
        for win in self._speech_windows(x, sample_rate, **kw):
            pending.append(win)
            if len(pending) >= batch_size:
                yield from self._classify_windows(pending)
                pending = []
        yield from self._classify_windows(pending)

    def recording_stats(
        self, x: Any, sample_rate: int | None = None, batch_size: int = 8, **kw: Any
    ) -> SpeakerStats | None:
        """The statistics of a recording's speech windows (the recording as one speaker; keywords
        as `segments`); None if it has no speech. One pass, decoded block by block."""
        if not self.adaptable:
            raise ValueError(NOT_ADAPTABLE)
        wins = (w for _, _, w in self._speech_windows(x, sample_rate, **kw))
        name = str(x) if isinstance(x, str | os.PathLike) else "<recording>"
        return stats_of(wins, self._functionals_of, self.functional_sets or [], name, batch_size)

    def _classify_windows(self, wins: list[tuple[int, int, np.ndarray]]) -> Iterator[Segment]:
        probs = self.probabilities([w for _, _, w in wins])
        for (a, b, _), p in zip(wins, probs, strict=True):
            yield self._segment(p, a, b)

    def segments(
        self,
        x: Any,
        sample_rate: int | None = None,
        max_window: float = 6.0,
        min_speech: float = 0.3,
        **kw: Any,
    ) -> list[Segment]:
        """One prediction per speech window of a long recording.

        Energy VAD finds speech regions (module docstring); each is cut into windows of at most
        `max_window` s and classified. Paths, bytes and file objects are decoded block by block,
        so memory does not grow with the recording's length. Other keywords: `min_silence`,
        `threshold_db`, `pad`, `batch_size`, `block_seconds`, `max_seconds` (refuse longer
        audio, `stlser.audio.check_limits`), `adapt` (models over functionals: the recording is
        one speaker, its windows' statistics normalise them, `recording_stats` and `adapt`; two
        passes over the audio, so a file object must be seekable). No speech → [].
        """
        return list(self.iter_segments(x, sample_rate, max_window, min_speech, **kw))

    # --- live audio
    def stream(
        self,
        chunks: Iterable[Any],
        sample_rate: int,
        window: float = 3.0,
        hop: float = 1.0,
        adapt: bool = False,
    ) -> Iterator[Segment]:
        """Rolling predictions over live audio.

        `chunks` are arrays of any size at `sample_rate`. Every `hop` seconds of audio (at
        t = hop, 2·hop, ...) yields a Segment for the last `window` seconds [max(0, t - window),
        t); at the end of the stream one more for the last window if audio arrived since. The
        output depends only on the samples, not on how they were chunked.

        `adapt` (models over functionals): the stream is one speaker; every window's
        functionals join running statistics (`stlser.adapt.RunningStats`, the new audio of each
        window counted once), and from the adaptation minimum on (`stlser.adapt.MIN_CLIPS`
        windows and `MIN_SECONDS` of audio) each window is normalised with them, shrunk toward
        the global statistics (`stlser.adapt.shrunk`); before that, with the global statistics.
        """
        if window <= 0 or hop <= 0:
            raise ValueError("window and hop must be > 0")
        if adapt and not self.adaptable:
            raise ValueError(NOT_ADAPTABLE)
        sets = list(self.functional_sets or [])
        running = RunningStats(self.functionals_dim, sets, "<stream>") if adapt else None
        seen = [0]  # samples already counted in the running statistics
        rate = audio.check_array(0, sample_rate, source="<stream>")  # >= MIN_SAMPLE_RATE
        resample = _Resampler(rate)
        guard = audio.PeakGuard("<stream>")  # running peak: chunks above 1.0 are scaled down
        win_n = max(1, int(round(window * SAMPLE_RATE)))
        hop_n = max(1, int(round(hop * SAMPLE_RATE)))
        buf = SampleBuffer()
        due = hop_n
        last_end = 0

        def emit(t: int) -> Segment:
            a = max(0, t - win_n)
            wave, who = buf.get(a, t), self
            if running is not None:
                running.add(self._functionals_of([wave]), (t - seen[0]) / SAMPLE_RATE)
                seen[0] = t
                stats = running.stats()
                who = adapted(self, stats) if stats.usable else self
            return self._segment(who.probabilities([wave])[0], a, t)

        for chunk in chunks:
            buf.append(resample(guard(to_float(chunk, "<stream>", fit=False))))
            while buf.end >= due:
                yield emit(due)
                last_end = due
                due += hop_n
                buf.drop_before(last_end - win_n)  # the final window may start there
        tail = resample(np.zeros(0, np.float32), last=True)
        buf.append(tail)
        while buf.end >= due:
            yield emit(due)
            last_end = due
            due += hop_n
            buf.drop_before(last_end - win_n)
        if buf.end > last_end and buf.end >= MIN_BATCH_SAMPLES:
            yield emit(buf.end)
