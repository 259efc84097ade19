"""Drawn faces for the demo AMT: each emotion has its own brows, eyes and mouth (PIL only)."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

# brow tilt (+: inner ends up), brow height, eye openness, mouth curve (+: smile), mouth open, nose wrinkle
_SHAPES: dict[str, tuple[float, float, float, float, float, bool]] = {
    "neutral": (0.0, 0.0, 1.0, 0.0, 0.0, False),
    "joy": (0.0, 0.1, 0.8, 1.0, 0.15, False),
    "sadness": (1.0, 0.0, 0.7, -0.8, 0.0, False),
    "anger": (-1.0, -0.4, 0.6, -0.2, 0.0, False),
    "surprise": (0.2, 1.0, 1.6, 0.0, 1.0, False),
    "fear": (0.8, 0.8, 1.5, -0.3, 0.5, False),
    "disgust": (-0.5, -0.2, 0.7, -0.6, 0.1, True),
}


def draw_face(emotion: str, intensity: float, rng: random.Random, size: int = 64) -> Image.Image:
    """A face showing `emotion` at `intensity` in [0, 1] (0 = neutral), with random colours and jitter."""
    tilt, brow_up, eye_open, curve, mouth_open, wrinkle = (
        intensity * v if isinstance(v, float) else v for v in _SHAPES[emotion]
    )
    eye_open = 1.0 + (eye_open - intensity) if emotion != "neutral" else 1.0
    bg = tuple(rng.randrange(40, 220) for _ in range(3))
    skin = rng.choice([(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)])
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size / 64
    cx, cy = 32 * s + rng.uniform(-3, 3) * s, 33 * s + rng.uniform(-3, 3) * s
    r = rng.uniform(24, 27) * s
    d.ellipse([cx - r, cy - r * 1.1, cx + r, cy + r * 1.1], fill=skin, outline=(60, 40, 30))
    ink = (30, 20, 20)
    for side in (-1, 1):
        ex, ey = cx + side * 9 * s, cy - 6 * s
        eh = 2.2 * s * max(eye_open, 0.3)
        d.ellipse([ex - 3.5 * s, ey - eh, ex + 3.5 * s, ey + eh], fill=(255, 255, 255), outline=ink)
        d.ellipse([ex - 1.3 * s, ey - 1.3 * s, ex + 1.3 * s, ey + 1.3 * s], fill=ink)
        by = ey - (6 + 3 * brow_up) * s
        inner, outer = (ex - side * 4 * s, by - tilt * 2.5 * s), (ex + side * 4 * s, by + tilt * 1.0 * s)
        d.line([inner, outer], fill=ink, width=max(1, round(2 * s)))
    if wrinkle:
        for dx in (-2, 2):
            d.line([(cx + dx * s, cy - 1 * s), (cx + dx * 1.5 * s, cy + 2 * s)], fill=ink, width=1)
    my, mw = cy + 11 * s, 9 * s
    if mouth_open > 0.3:
        oh = 2 + 5 * mouth_open
        d.ellipse([cx - mw * 0.6, my - oh * s / 2, cx + mw * 0.6, my + oh * s / 2], fill=(90, 20, 30), outline=ink)
    else:
        bend = 5 * curve * s
        box = [cx - mw, my - abs(bend), cx + mw, my + abs(bend)]
        if abs(bend) < 0.8 * s:
            d.line([(cx - mw, my), (cx + mw, my)], fill=ink, width=max(1, round(2 * s)))
        elif bend > 0:
            d.arc(box, 0, 180, fill=ink, width=max(1, round(2 * s)))
        else:
            d.arc(box, 180, 360, fill=ink, width=max(1, round(2 * s)))
    return img
