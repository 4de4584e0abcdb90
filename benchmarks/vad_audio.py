"""Speech-like audio made here, and streaming voice-activity detection as silero-vad runs it: the
data and task metric for the corpus's silero-vad models (benchmarks/realworld.py).

There is no recorded speech in this repository or its wheels; the audio is a source-filter
imitation of voiced speech (Fant 1960): glottal pulse trains at 90-250 Hz with jitter, through three
formant resonators whose frequencies change per syllable, about four syllables a second, with pauses
and a noise floor. silero-vad's FP32 model calls 10-20% of its 32 ms chunks speech (p > 0.5) and
spreads its probabilities over the whole range, so agreement on the decisions is a metric that can
fail. silero-vad runs in streaming mode: 512 new samples at 16 kHz plus the last 64 of the previous
chunk, the LSTM state carried from chunk to chunk, `sr` = 16000 — as its own Python wrapper does.
"""
from __future__ import annotations

import numpy as np

RATE = 16000
CHUNK = 512
CONTEXT = 64


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Mono float32 audio in [-1, 1] (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    t = 0
    while t < n:
        if rng.random() < 0.3:  # a pause between syllables
            t += int(rng.uniform(0.15, 0.6) * RATE)
            continue
        length = int(rng.uniform(0.12, 0.35) * RATE)
        pitch = rng.uniform(90, 250)
        phase = np.cumsum(np.full(length, pitch / RATE) * (1 + 0.02 * rng.standard_normal(length)))
        signal = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
        for centre, bandwidth in zip((rng.uniform(300, 900), rng.uniform(900, 2300), rng.uniform(2300, 3200)),
                                     (80, 120, 160)):
            r = np.exp(-np.pi * bandwidth / RATE)
            signal = _resonator(signal, 2 * r * np.cos(2 * np.pi * centre / RATE), -r * r)
        signal *= np.sin(np.pi * np.arange(length) / length) ** 0.5
        signal /= np.abs(signal).max() + 1e-9
        end = min(n, t + length)
        out[t:end] += signal[:end - t] * rng.uniform(0.2, 0.8)
        t = end
    out += rng.standard_normal(n) * 0.005
    return out.astype(np.float32)


def _resonator(x: np.ndarray, a1: float, a2: float) -> np.ndarray:
    """y[i] = x[i] + a1 y[i-1] + a2 y[i-2]: one formant (a plain loop; scipy is not a dependency)."""
    y = np.zeros(len(x))
    y1 = y2 = 0.0
    for i, v in enumerate(x.tolist()):
        y1, y2 = v + a1 * y1 + a2 * y2, y1
        y[i] = y1
    return y


def stream(model_bytes: bytes, audio: np.ndarray, threads: int = 1) -> tuple[np.ndarray, list[dict]]:
    """Speech probability per chunk, and the feed of every chunk (input with context, the state
    carried in, sr): the feeds are what a deployed model sees, so they calibrate and verify."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, CONTEXT), np.float32)
    probs, feeds = [], []
    for start in range(0, len(audio) - CHUNK + 1, CHUNK):
        chunk = audio[start:start + CHUNK][None]
        feed = {"input": np.concatenate([context, chunk], axis=1), "state": state, "sr": np.array(RATE, np.int64)}
        feed = {k: v for k, v in feed.items() if k in names}
        prob, state = session.run(None, feed)
        context = chunk[:, -CONTEXT:]
        feeds.append(feed)
        probs.append(float(np.asarray(prob).ravel()[0]))
    return np.array(probs), feeds


def decisions_agree(reference: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> float:
    """Share of chunks where the speech/non-speech decision is FP32's."""
    return float(np.mean((reference > threshold) == (got > threshold)))


def to_npz(feeds: list[dict], path) -> None:
    """Feeds as an onnxopt data file: `input` by sample, `state` and `sr` whole per run (one more
    axis than the input), so `onnxopt bench --data` and `--calib` take them as they are."""
    arrays = {"input": np.concatenate([f["input"] for f in feeds])}
    for name in ("state", "sr"):
        if name in feeds[0]:
            arrays[name] = np.stack([f[name] for f in feeds])
    np.savez(path, **arrays)
