"""Demo video clips: an mp4 of a drawn face whose expression rises to a peak, with the demo AMT's voice.

What `emoverse analyze` and `emoverse demo` are tried on without a real video: H.264 frames of
`emoverse.data.faces.draw_face` (resting most of the clip, the expression peaking once, as an utterance's
face does) and an AAC track of `emoverse.data.demo_voice` (prosody following the emotion and sentiment).
Deterministic from the seed; written with PyAV, no download.
"""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
from PIL import Image

from emoverse.data.demo import VALENCE
from emoverse.data.demo_voice import demo_voice
from emoverse.data.faces import draw_face
from emoverse.data.record import EMOTIONS

FPS = 10


def demo_clip_frames(emotion: str, seed: int = 0, seconds: float = 2.0, size: int = 128) -> tuple[list, int]:
    """The clip's frames (PIL, `size` px) and the index of its peak: the face rests, peaks at a random frame
    in the middle half of the clip, and rests again (intensity falls by 0.35 a frame around the peak)."""
    rng = random.Random(f"demo-clip/{seed}/{emotion}")
    n = max(1, round(seconds * FPS))
    peak = rng.randrange(n // 4, max(n // 4 + 1, 3 * n // 4))
    identity = rng.randrange(2**31)
    frames = [draw_face(emotion, max(0.0, 1.0 - 0.35 * abs(k - peak)), random.Random(identity), 64).resize((size, size))
              for k in range(n)]
    return frames, peak


def write_demo_clip(path: str | Path, emotion: str = "joy", seed: int = 0, seconds: float = 2.0, size: int = 128,
                    audio: bool = True, width: int | None = None) -> Path:
    """Write an mp4 of `demo_clip_frames` and (unless `audio` is False) a voice for `emotion`.

    Args:
        path: the mp4 to write (its folder is created).
        emotion: one of `EMOTIONS`; sets the face and the voice (its sentiment: the demo's `VALENCE`).
        seed: the face's identity, its peak and the speaker.
        seconds: the clip's length.
        size: frame side in pixels.
        audio: add the AAC voice track.
        width: frame width (even; default `size`): wider frames put the face in the middle of a background band.
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"write_demo_clip: emotion={emotion!r}; expected one of {EMOTIONS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames, _ = demo_clip_frames(emotion, seed, seconds, size)
    if width is not None and width != size:
        wide = []
        for image in frames:
            band = Image.new("RGB", (width, size), image.getpixel((0, 0)))
            band.paste(image, ((width - size) // 2, 0))
            wide.append(band)
        frames = wide
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width or size, size, "yuv420p"
        track = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if track is not None:
            wave = demo_voice(emotion, VALENCE[emotion], random.Random(f"demo-clip-voice/{seed}/{emotion}"), seconds)
            chunk = track.codec_context.frame_size or 1024
            for start in range(0, len(wave), chunk):
                part = np.ascontiguousarray(wave[None, start:start + chunk], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                for packet in track.encode(frame):
                    out.mux(packet)
            for packet in track.encode():
                out.mux(packet)
    return path
