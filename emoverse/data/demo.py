"""The built-in demo AMT: synthetic but learnable records for all five tasks, from a seed.

Monologues (CMU-MOSEI-like) carry sentiment and an AU caption; dialogues (MELD/ECF-like) carry
emotion, AU caption, emotion reason and emotion-cause pairs. The drawn face and the words jointly
decide the labels: half of the utterances are emotionally flat, so only the face tells the emotion,
and the sign of a surprise depends on the words. In each dialogue one turn tells an event and a
later turn reacts to it: that event turn is the cause of the reaction's emotion.

Every clip also has a short voice (`emoverse.data.demo_voice`): its pitch contour, loudness, syllable
rate and tremolo follow the emotion, the contour's slope the sentiment, so sound alone tells both.
The voices come from their own per-record generators: the words, faces and labels are the same with
or without them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from emoverse.amt.facs import EMOTION_AUS, OPENFACE_AUS, au_caption
from emoverse.data.demo_voice import demo_voice
from emoverse.data.faces import draw_face
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.data.shards import write_shards

CUES: dict[str, list[str]] = {
    "joy": ["This is the best day ever", "I am so happy about it", "That is wonderful news", "I love this"],
    "sadness": ["I miss her so much", "Everything went wrong today", "I feel so alone", "It is over now"],
    "anger": ["I cannot believe you did that", "Stop doing that right now", "This is so unfair", "Get out"],
    "surprise": ["Wait what", "No way", "Are you serious", "I did not see that coming"],
    "fear": ["I am scared", "Please do not leave me here", "What was that noise", "I think we are in danger"],
    "disgust": ["That is gross", "Ew get it away from me", "That smells awful", "How could anyone eat that"],
    "neutral": ["Okay", "I see", "We can talk about it later", "Let me check"],
}
FLAT = ["I talked to Monica about it", "We met at the coffee shop", "He called me this morning",
        "So that is what happened", "Tell me about it", "I was at work all day"]
EVENTS: dict[str, list[str]] = {
    "joy": ["I got the job", "we won the game", "my sister is having a baby"],
    "sadness": ["I lost my wallet", "my dog is sick", "they cancelled the trip"],
    "fear": ["there is someone outside the door", "the plane is shaking", "the lights just went out"],
    "anger": ["you ate my sandwich", "he lied to me again", "someone scratched your car"],
    "disgust": ["there is hair in the soup", "the fridge smells like old fish", "he licked the plate"],
    "surprise": ["Ross is getting married tomorrow", "the rent doubled overnight", "Joey can speak French"],
}
SPEAKERS = ["Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe"]
VALENCE = {"joy": 2.0, "surprise": 1.0, "neutral": 0.0, "sadness": -2.0, "anger": -2.0, "fear": -1.5, "disgust": -1.5}
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def amt_label_sets(n: int, seed: int = 0) -> list[set[str]]:
    """Task sets shaped like the real AMT, for sampler tests and benchmarks: MOSEI clips (msa, 40%
    with fer), MELD turns (mer and eri, half with fer), ECF turns (ecpe and mer), in turn."""
    rng = random.Random(seed)
    kinds = (lambda: {"msa", "fer"} if rng.random() < 0.4 else {"msa"},
             lambda: {"mer", "eri", "fer"} if rng.random() < 0.5 else {"mer", "eri"},
             lambda: {"ecpe", "mer"})
    return [kinds[i % 3]() for i in range(n)]


def corpus() -> list[str]:
    """Every phrase the demo can say (the tiny tokenizer trains on it)."""
    lines = [p for ps in CUES.values() for p in ps] + FLAT + [e for es in EVENTS.values() for e in es]
    return lines + SPEAKERS + [f"{s} feels {e} because" for s in SPEAKERS for e in EMOTIONS]


def _frames(emotion: str, rng: random.Random, n: int, size: int) -> tuple[list[Any], int]:
    """`n` frames whose expression rises to a peak and falls; returns (frames, peak index)."""
    identity, peak = rng.randrange(2**31), rng.randrange(n)
    strength = rng.uniform(0.7, 1.0)
    frames = [draw_face(emotion, max(0.0, strength * (1 - 0.35 * abs(k - peak))), random.Random(identity), size)
              for k in range(n)]
    return frames, peak


def _caption(emotion: str, rng: random.Random) -> str:
    active = {au for au in EMOTION_AUS[emotion] if rng.random() < 0.8}
    active |= {au for au in OPENFACE_AUS if rng.random() < 0.1}
    return au_caption(active, emotion)


def _voice(rid: str, emotion: str, valence: float, seed: int, seconds: float | None) -> np.ndarray | None:
    """The record's voice, from a generator of its own (None: the demo without audio)."""
    if seconds is None:
        return None
    return demo_voice(emotion, valence, random.Random(f"{seed}/voice/{rid}"), seconds)


def _monologue(i: int, split: str, rng: random.Random, n: int, size: int, seed: int,
               audio_seconds: float | None) -> AMTRecord:
    emotion = rng.choice(EMOTIONS)
    flat = rng.random() < 0.5
    text = rng.choice(FLAT) if flat else rng.choice(CUES[emotion])
    score = VALENCE[emotion]
    if emotion == "surprise" and not flat:
        good = rng.random() < 0.5
        text += ", that is great" if good else ", that is terrible"
        score = 1.0 if good else -1.0
    if rng.random() < 0.4:
        text, score = "Really. " + text, score * 1.4
    sentiment = round(max(-3.0, min(3.0, score)) * 3) / 3
    frames, peak = _frames(emotion, rng, n, size)
    rid = f"demo-mono-{i:06d}"
    return AMTRecord(id=rid, source="demo", split=split, text=text + ".",
                     labels=AMTLabels(sentiment=sentiment, au_caption=_caption(emotion, rng)),
                     frames=frames, peak_frame=peak, audio=_voice(rid, emotion, sentiment, seed, audio_seconds))


def _dialogue(d: int, split: str, rng: random.Random, n: int, size: int, seed: int,
              audio_seconds: float | None) -> list[AMTRecord]:
    turns = rng.randint(3, 6)
    emotion = rng.choice(list(EVENTS))
    event_turn = rng.randint(1, turns - 1)
    react_turn = rng.randint(event_turn + 1, turns)
    event = rng.choice(EVENTS[emotion])
    people = rng.sample(SPEAKERS, 2)
    records: list[AMTRecord] = []
    context: list[Utterance] = []
    for t in range(1, turns + 1):
        speaker = people[t % 2]
        pairs: list[tuple[int, int, str]] = []
        emo, reason = "neutral", None
        if t == event_turn:
            text = f"Guess what, {event}."
        elif t == react_turn:
            emo, text = emotion, rng.choice(CUES[emotion]) + "."
            pairs = [(t, event_turn, emo)] + ([(t, t, emo)] if rng.random() < 0.3 else [])
            reason = f"{speaker} feels {emo} because {people[event_turn % 2]} said that {event}."
        else:
            text = rng.choice(FLAT + CUES["neutral"]) + "."
        frames, peak = _frames(emo, rng, n, size)
        rid = f"demo-dia{d:05d}-t{t}"
        records.append(AMTRecord(
            id=rid, source="demo", split=split, text=text, speaker=speaker,
            dialogue_id=f"demo-dia{d:05d}", turn=t, context=list(context), frames=frames, peak_frame=peak,
            labels=AMTLabels(emotion=emo, au_caption=_caption(emo, rng), reason=reason, cause_pairs=pairs),
            audio=_voice(rid, emo, VALENCE[emo], seed, audio_seconds),
        ))
        context.append(Utterance(turn=t, speaker=speaker, text=text, emotion=emo))
    return records


def _split_of(k: int, total: int) -> str:
    edge = 0.0
    for split, share in SPLITS:
        edge += share * total
        if k < edge:
            return split
    return SPLITS[-1][0]


def make_demo_amt(
    path: str | Path,
    seed: int = 0,
    num_monologues: int = 800,
    num_dialogues: int = 160,
    num_frames: int = 4,
    image_size: int = 64,
    audio_seconds: float | None = 1.0,
) -> dict[str, Any]:
    """Write the demo AMT as webdataset shards under `path`; deterministic from `seed`.

    Args:
        path: output directory (`{path}/{split}/*.tar` and `{path}/manifest.json`).
        seed: everything (faces, words, labels, splits) derives from it.
        num_monologues: MOSEI-like records (MSA, FER).
        num_dialogues: MELD/ECF-like dialogues of 3-6 turns (MER, FER, ERI, ECPE).
        num_frames: frames per record.
        image_size: frame side in pixels.
        audio_seconds: length of each record's voice (16 kHz, stored as FLAC); None: no audio, and the
            shards hold what they held before the demo had audio.

    Returns:
        The manifest: records per split (and with audio) and labels per task.
    """
    if audio_seconds is not None and not 0.1 <= audio_seconds <= 30.0:
        raise ValueError(f"make_demo_amt: audio_seconds={audio_seconds!r}, expected None or 0.1..30 seconds")
    rng = random.Random(seed)
    by_split: dict[str, list[AMTRecord]] = {s: [] for s, _ in SPLITS}
    for i in range(num_monologues):
        split = _split_of(i, num_monologues)
        by_split[split].append(_monologue(i, split, rng, num_frames, image_size, seed, audio_seconds))
    for d in range(num_dialogues):
        split = _split_of(d, num_dialogues)
        by_split[split].extend(_dialogue(d, split, rng, num_frames, image_size, seed, audio_seconds))
    manifest: dict[str, Any] = {"name": "emoverse-demo", "seed": seed, "splits": {}}
    for split, records in by_split.items():
        write_shards(records, path, split, maxcount=400)
        labels = {f: sum(getattr(r.labels, f) is not None for r in records)
                  for f in ("sentiment", "emotion", "au_caption", "reason", "cause_pairs")}
        manifest["splits"][split] = {"records": len(records), "audio": sum(r.audio is not None for r in records),
                                     "labels": labels}
    Path(path, "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
