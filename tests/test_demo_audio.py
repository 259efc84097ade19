"""The demo AMT's voices: deterministic, independent of the other modalities, and telling sentiment and emotion.

Learnability is checked without a model: seven prosodic features measured from the decoded shards
(level, pitch, pitch slope, final rise, syllable rate, pitch jitter, brightness) and a 7-nearest-neighbour
vote, trained on the train split and scored on val + test, must beat the majority class by a margin.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emoverse.data.audio import AUDIO_KEY, SAMPLE_RATE, rms_dbfs
from emoverse.data.demo import make_demo_amt
from emoverse.data.demo_voice import FLAT_VOICE, PROSODY, SLOPE_SEMITONES, demo_voice
from emoverse.data.shards import ShardIndex


def records(root: Path, split: str, audio: bool = True) -> list:
    index = ShardIndex(root, split)
    return [index.record(i, with_audio=audio) for i in range(len(index))]


def test_voices_are_deterministic_and_leave_words_faces_and_labels_as_they_were(tmp_path: Path) -> None:
    a = make_demo_amt(tmp_path / "a", seed=3, num_monologues=20, num_dialogues=5)
    b = make_demo_amt(tmp_path / "b", seed=3, num_monologues=20, num_dialogues=5)
    plain = make_demo_amt(tmp_path / "plain", seed=3, num_monologues=20, num_dialogues=5, audio_seconds=None)
    assert a == b and a["splits"]["train"]["audio"] == a["splits"]["train"]["records"] > 0
    assert plain["splits"]["train"]["audio"] == 0
    for split in ("train", "val", "test"):
        ra, rb, rp = records(tmp_path / "a", split), records(tmp_path / "b", split), records(tmp_path / "plain", split)
        ia, ip = ShardIndex(tmp_path / "a", split), ShardIndex(tmp_path / "plain", split)
        for k, (x, y, z) in enumerate(zip(ra, rb, rp)):
            assert ia.audio_bytes(k) == ShardIndex(tmp_path / "b", split).audio_bytes(k)  # same seed, same FLAC
            assert len(x.audio) == SAMPLE_RATE and np.array_equal(x.audio, y.audio)
            assert z.audio is None and ip.audio_bytes(k) is None
            meta = x.metadata()
            assert meta.pop("audio") == AUDIO_KEY and meta == z.metadata()  # words, labels: as without audio
            assert [f.tobytes() for f in x.frames] == [f.tobytes() for f in z.frames]
    with pytest.raises(ValueError, match="audio_seconds=0.01"):
        make_demo_amt(tmp_path / "c", audio_seconds=0.01)


def _features(w: np.ndarray) -> np.ndarray:
    n, hop = 1024, 512
    frames = np.lib.stride_tricks.sliding_window_view(w, n)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f0 = np.log2(np.maximum(freqs[np.argmax(np.where((freqs > 70) & (freqs < 700), spec, 0), axis=1)], 1.0))
    energy = (frames**2).mean(axis=1)
    voiced = energy > energy.max() * 0.05
    u = (np.arange(len(frames)) * hop + n / 2) / len(w)
    early, late, middle = voiced & (u < 0.6), voiced & (u > 0.8), voiced & (u > 0.3) & (u < 0.6)
    slope = np.polyfit(u[early], f0[early], 1)[0] if early.sum() > 2 else 0.0
    rise = np.median(f0[late]) - np.median(f0[middle]) if late.any() and middle.any() else 0.0
    env = np.sqrt(np.lib.stride_tricks.sliding_window_view(w**2, 160)[::160].mean(axis=1))
    env_spec, env_freqs = np.abs(np.fft.rfft(env - env.mean())), np.fft.rfftfreq(len(env), 0.01)
    rate = env_freqs[np.argmax(np.where((env_freqs > 1.5) & (env_freqs < 9), env_spec, 0))]
    centroid = (spec * freqs).sum(1) / (spec.sum(1) + 1e-9)
    return np.array([rms_dbfs(w), np.median(f0[voiced]), slope, rise, rate, np.std(np.diff(f0[voiced])),
                     np.median(np.log2(centroid[voiced] + 1) - f0[voiced])])


def _knn_accuracy(train: list, test: list, label) -> tuple[float, float]:
    """(7-NN accuracy from the audio features, the majority class's accuracy) on `test`."""
    xa, xb = np.stack([_features(r.audio) for r in train]), np.stack([_features(r.audio) for r in test])
    mu, sd = xa.mean(0), xa.std(0) + 1e-9
    za, zb = (xa - mu) / sd, (xb - mu) / sd
    ya, yb = [label(r) for r in train], [label(r) for r in test]
    near = np.argsort(((zb[:, None] - za[None]) ** 2).sum(-1), axis=1)[:, :7]
    pred = [Counter(ya[j] for j in row).most_common(1)[0][0] for row in near]
    majority = Counter(ya).most_common(1)[0][0]
    return float(np.mean([p == y for p, y in zip(pred, yb)])), float(np.mean([y == majority for y in yb]))


def test_sound_alone_tells_sentiment_and_emotion_above_the_majority_class(tmp_path: Path) -> None:
    make_demo_amt(tmp_path, seed=0, num_monologues=500, num_dialogues=120, num_frames=1, image_size=16)
    train = records(tmp_path, "train")
    held = records(tmp_path, "val") + records(tmp_path, "test")
    for field, label in (("sentiment", lambda r: r.labels.sentiment >= 0), ("emotion", lambda r: r.labels.emotion)):
        acc, majority = _knn_accuracy([r for r in train if getattr(r.labels, field) is not None],
                                      [r for r in held if getattr(r.labels, field) is not None], label)
        assert acc >= majority + 0.08, (field, acc, majority)


def test_prosody_follows_valence_and_emotion() -> None:
    def mean_feature(emotion: str, valence: float, k: int) -> float:
        values = [_features(demo_voice(emotion, valence, random.Random(f"{emotion}{valence}{i}")))[k]
                  for i in range(30)]
        return float(np.median(values))  # flat voices (a third) cannot move the median

    assert FLAT_VOICE < 0.5
    rising, falling = mean_feature("joy", 3.0, 2), mean_feature("joy", -3.0, 2)
    assert rising > 0 > falling  # log2-pitch slope over the clip's first 60 %
    assert abs(rising - falling) == pytest.approx(2 * SLOPE_SEMITONES / 12, rel=0.35)
    levels = {e: mean_feature(e, 0.0, 0) for e in PROSODY}
    assert levels["anger"] > levels["joy"] > levels["neutral"] > levels["sadness"]
    assert mean_feature("fear", 0.0, 5) > 2 * mean_feature("neutral", 0.0, 5)  # tremolo: frame-to-frame pitch jitter
    # the final rise: late pitch above the middle's, in octaves (7 semitones at the very end, ~3 over the last 20 %)
    assert mean_feature("surprise", 0.0, 3) > 0.15 > abs(mean_feature("neutral", 0.0, 3))
