"""A local web page to try a trained model: `emoverse demo --ckpt_path CKPT` (Gradio, the `emoverse[demo]` extra).

A person uploads or records a clip, types the utterance (or has `--asr` transcribe it), and sees each task's answer,
the frames the prompts used with the FER peak frame marked, and the raw generated text. The clip goes through the
same path as `emoverse analyze` (`emoverse.clip_input`, `emoverse.analyze.answer_utterances`).

Nothing leaves the machine: the server binds 127.0.0.1 only, no share link is made, Gradio's analytics and version
check are off (`GRADIO_ANALYTICS_ENABLED=False`, `analytics_enabled=False`), the page uses system fonts (Gradio's
default theme fetches Google Fonts), server-side rendering (a Node server) and the MCP server are off.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoverse.clip_input import ClipError, ClipInput, read_clip_input

if TYPE_CHECKING:
    from emoverse.module import EmoVerseModule

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
TASK_TITLES = {"msa": "sentiment, -3..3", "mer": "emotion", "fer": "facial expression", "eri": "why this emotion",
               "ecpe": "emotion-cause pairs"}
PEAK_SOURCES = {"openface": "the OpenFace AU-sum peak", "face": "the face furthest from its resting expression "
                "(OpenCV Haar cascade)", "middle": "the middle frame (no face found)"}


def _gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before the import: it also stops the version check
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError("emoverse demo needs Gradio: pip install 'emoverse[demo]'") from err
    return gr


def shown_frames(count: int, num_frames: int) -> list[int]:
    """Indices of the frames a video prompt shows out of `count` (as `emoverse.data.dataset.select_frames`)."""
    if count <= num_frames:
        return list(range(count))
    step = count / num_frames
    return [int(step * k + step / 2) for k in range(num_frames)]


def answer_table(answers: dict[str, dict[str, Any]]) -> str:
    """The answers as a Markdown table: task, parsed answer, and (unparsed) when the text was unreadable."""
    from emoverse.evaluation import jsonable

    rows = ["| task | answer |", "|---|---|"]
    for task, got in answers.items():
        label = f"{task} ({TASK_TITLES[task]})" if task in TASK_TITLES else task
        value = jsonable(got["prediction"])
        if isinstance(value, dict) and "pairs" in value:
            value = ", ".join(f"turn {e} ({emo}) ← turn {c}" for e, c, emo in value["pairs"]) or "no cause"
        text = "(unreadable answer)" if value is None else str(value)
        rows.append(f"| {label} | {_cell(text)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: unprintable characters (line and record separators among them) become
    spaces, and Markdown's and HTML's special characters are escaped, so a model's raw text cannot break the table."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return "".join("\\" + c if c in "\\`*_{}[]()#+!|~" else {"<": "&lt;", ">": "&gt;", "&": "&amp;"}.get(c, c)
                   for c in text)


class DemoApp:
    """What the page does, apart from Gradio: decode a clip, transcribe it, answer every task.

    Args:
        module: the trained module (eval mode).
        names: the tasks asked.
        asr: a `Transcriber` for clips without a typed utterance, or None.
        num_frames: frames a video prompt shows.
    """

    def __init__(self, module: EmoVerseModule, names: list[str], asr: Callable[[Any], str] | None = None,
                 num_frames: int = 4) -> None:
        from emoverse.analyze import hears

        self.module, self.names, self.asr, self.num_frames = module, names, asr, num_frames
        self.listens = hears(module.tasks, names)

    def decode(self, video: str, need_text: bool) -> ClipInput:
        why = "the backbone hears" if self.listens else ("--asr transcribes it" if need_text else None)
        return read_clip_input(video, audio_for=why)

    def transcribe(self, video: str | None) -> str:
        if not video:
            raise ValueError("no clip: upload or record one first")
        if self.asr is None:
            raise ValueError("no speech recogniser: start emoverse demo with --asr MODEL, or type the utterance")
        return self.asr(self.decode(video, need_text=True).audio)

    def analyze(self, video: str | None, text: str) -> tuple[str, list[tuple[Any, str]], dict[str, Any], str]:
        """(status, answer table, gallery of (frame, caption), raw generations) for the page."""
        from emoverse.analyze import UtteranceInput, answer_utterances

        if not video:
            raise ValueError("no clip: upload or record one first")
        decoded = self.decode(video, need_text=not text.strip())
        text_from = "typed"
        if not text.strip():
            if self.asr is None:
                raise ValueError("no utterance: type what is said (or start emoverse demo with --asr MODEL)")
            text, text_from = self.asr(decoded.audio), "transcribed"
            if not text:
                raise ValueError(f"{Path(video).name}: the speech recogniser heard no words; type the utterance")
        u = UtteranceInput(text=text, frames=decoded.frames, audio=decoded.audio if self.listens else None,
                           peak_frame=decoded.peak_frame)
        answers = answer_utterances(self.module.backbone, self.module.tasks, [u], self.names, self.num_frames)[0]
        video_frames = set(shown_frames(len(decoded.frames), self.num_frames))
        gallery = []
        for k, (image, t) in enumerate(zip(decoded.frames, decoded.times, strict=True)):
            caption = " · ".join([*(["PEAK"] if k == decoded.peak_frame else []), f"{t:.2f} s",
                                  *(["video"] if k in video_frames else [])])
            gallery.append((image, caption))
        status = (f"Utterance ({text_from}): {text}\n\nPeak frame (fer): {decoded.times[decoded.peak_frame]:.2f} s, "
                  f"{PEAK_SOURCES[decoded.peak_source]}")
        if decoded.warnings:
            status += "\n\n" + "\n".join(f"⚠ {w}" for w in decoded.warnings)
        raw = {t: a["generation"] for t, a in answers.items()}
        return status, answer_table(answers), gallery, raw


def build_page(app: DemoApp, examples: list[str] | None = None) -> Any:
    """The Gradio Blocks of the page (`launch_page` serves it)."""
    gr = _gradio()

    def run(video: str | None, text: str) -> tuple[str, str, list, dict]:
        try:
            return app.analyze(video, text or "")
        except (ClipError, ValueError) as err:
            return f"**Cannot analyse:** {err}", "", [], {}

    def transcribe(video: str | None) -> tuple[str, str]:
        try:
            return app.transcribe(video), ""
        except (ClipError, ValueError) as err:
            return "", f"**Cannot transcribe:** {err}"

    with gr.Blocks(analytics_enabled=False, title="emoverse demo") as page:
        gr.Markdown("## emoverse: sentiment and emotion in a clip\nUpload or record a clip (at most 30 s, one "
                    "utterance), type what is said" + (" or transcribe it" if app.asr else "") + ", and analyse. "
                    f"Tasks: {', '.join(app.names)}. Everything runs on this machine.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(sources=["upload", "webcam"], label="Clip", elem_id="clip")
                text = gr.Textbox(label="Utterance" + (" (empty: transcribe)" if app.asr else ""),
                                  elem_id="utterance", lines=2)
                with gr.Row():
                    if app.asr is not None:
                        listen = gr.Button("Transcribe", elem_id="transcribe")
                    go = gr.Button("Analyse", variant="primary", elem_id="analyse")
                if examples:
                    gr.Examples(examples=[[e, ""] for e in examples], inputs=[video, text], label="Demo clips")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                table = gr.Markdown(elem_id="answers")
                frames = gr.Gallery(label="Frames used (PEAK: fer's frame; video: the frames a video prompt shows)",
                                    columns=5, height="auto", elem_id="frames")
                raw = gr.JSON(label="Raw generated text", elem_id="raw")
        go.click(run, inputs=[video, text], outputs=[status, table, frames, raw])
        if app.asr is not None:
            listen.click(transcribe, inputs=[video], outputs=[text, status])
    return page


def launch_page(page: Any, port: int = DEFAULT_PORT, block: bool = True) -> str:
    """Serve the page on 127.0.0.1:`port`, nothing shared; returns its URL (with `block`, after the server stops)."""
    gr = _gradio()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)  # no Google Fonts request
    _, url, _ = page.launch(server_name=HOST, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                            ssr_mode=False, mcp_server=False, enable_monitoring=False, footer_links=[], theme=theme,
                            quiet=True)
    url = url or f"http://{HOST}:{port}/"
    print(f"emoverse demo: serving {url} (this machine only; Ctrl-C stops it)", flush=True)
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return url


def main(argv: list[str] | None = None) -> int:
    """`emoverse demo --ckpt_path CKPT`: a local page to try a model on a clip (Gradio; emoverse[demo])."""
    p = argparse.ArgumentParser(prog="emoverse demo", description=main.__doc__)
    p.add_argument("--ckpt_path", help="a checkpoint written by emoverse fit")
    p.add_argument("--model", help="a folder written by emoverse export")
    p.add_argument("--config", help="with --model: the run's config.yaml (its tasks and task_args)")
    p.add_argument("--asr", help="a transformers automatic-speech-recognition model (folder or hub id)")
    p.add_argument("--tasks", nargs="+", help="tasks to ask (default: all of the model's)")
    p.add_argument("--num_frames", type=int, default=4, help="frames a video prompt shows")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port on 127.0.0.1")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = p.parse_args(argv)
    _gradio()  # fail before loading a model when the extra is missing
    import torch

    from emoverse.analyze import check_names, load_module
    from emoverse.data.demo_clip import write_demo_clip

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = load_module(args.ckpt_path, args.model, args.config, map_location=device)
    asr = None
    if args.asr:
        from emoverse.asr import Transcriber

        asr = Transcriber(args.asr, device=device)
    app = DemoApp(module, check_names(module.tasks, args.tasks or list(module.tasks)), asr, args.num_frames)
    with tempfile.TemporaryDirectory(prefix="emoverse-demo-") as folder:
        examples = [str(write_demo_clip(Path(folder) / f"demo_{e}.mp4", e, seed=0)) for e in ("joy", "sadness")]
        launch_page(build_page(app, examples), args.port)
    return 0
