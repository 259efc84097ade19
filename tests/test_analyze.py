"""`emoverse analyze` and `EmoVerseModule.analyze` on video files written here: demo clips with a drawn face and a
voice, checkpoints of a two-step fit (tiny and the hearing tiny_audio), a tiny random Whisper for --asr, and bad
input of every documented kind."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from emoverse import AMTDataModule, EmoVerseModule, evaluation, make_demo_amt
from emoverse.analyze import load_module
from emoverse.analyze_cli import main
from emoverse.clip_input import ClipError, read_clip_input
from emoverse.data.audio import SAMPLE_RATE
from emoverse.data.demo_clip import FPS, demo_clip_frames, write_demo_clip
from emoverse.export import export_merged
from emoverse.face_peak import face_peak
from tests.test_audio import write_clip

TASKS = ["msa", "mer", "fer", "eri", "ecpe"]


def fit_briefly(backbone: str, amt: Path, out: Path) -> Path:
    """A checkpoint of a two-step `fit`: what `--ckpt_path` loads (its answers are not yet readable)."""
    torch.manual_seed(0)
    module = EmoVerseModule(backbone, lr=1e-3)
    data = AMTDataModule(str(amt), batch_size=4, processor=module.processor, tasks=module.tasks)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    trainer.save_checkpoint(out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analyze")
    make_demo_amt(root / "amt", seed=0, num_monologues=24, num_dialogues=4)
    fit_briefly("tiny", root / "amt", root / "tiny.ckpt")
    fit_briefly("tiny_audio", root / "amt", root / "tiny_audio.ckpt")
    write_demo_clip(root / "joy.mp4", "joy", seed=0)
    write_demo_clip(root / "sad.mp4", "sadness", seed=1)
    write_demo_clip(root / "mute.mp4", "anger", seed=0, audio=False)
    write_clip(root / "blank.mp4", 2.0, audio="tone")  # flat grey frames: no face
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_a_demo_clip_gets_all_five_answers_from_the_quickstart_checkpoint(work: Path, capsys) -> None:
    code, lines, err = run(capsys, work / "joy.mp4", "--ckpt_path", work / "tiny.ckpt", "--text", "I got the job.",
                           "--out", work / "joy.jsonl")
    assert code == 0 and len(lines) == 1
    line = lines[0]
    assert list(line["answers"]) == TASKS and list(line["generations"]) == TASKS
    assert all(isinstance(line["generations"][t], str) for t in ("msa", "mer", "fer", "eri"))
    assert line["text"] == "I got the job." and line["text_from"] == "text" and line["audio_seconds"] is None
    # the face-based peak is the frame where the drawn expression peaks
    _, peak = demo_clip_frames("joy", seed=0)
    assert line["frames"]["peak_from"] == "face"
    assert line["frames"]["times"][line["frames"]["peak_frame"]] == pytest.approx(peak / FPS, abs=0.06)
    assert len(line["frames"]["times"]) in (8, 9)  # 8 uniform frames, plus the peak unless it is one of them
    assert [json.loads(x) for x in (work / "joy.jsonl").read_text().splitlines()] == lines
    assert "answered 1 of 1 clips" in err


def test_a_hearing_backbone_gets_the_clips_audio_and_refuses_a_mute_clip(work: Path, capsys, monkeypatch) -> None:
    seen: list[set[str]] = []
    real = evaluation.generate

    def spy(backbone: Any, batch: dict[str, Any], tasks: Any, max_new_tokens: int | None = None) -> list[str]:
        seen.append(set(batch.inputs))
        return real(backbone, batch, tasks, max_new_tokens)

    monkeypatch.setattr(evaluation, "generate", spy)
    code, lines, err = run(capsys, work / "sad.mp4", work / "mute.mp4", "--ckpt_path", work / "tiny_audio.ckpt",
                           "--text", "I miss her so much.")
    assert code == 1
    good, mute = lines
    assert list(good["answers"]) == TASKS and good["audio_seconds"] == pytest.approx(2.0, abs=0.1)
    assert any("audio" in key for key in seen[0]), seen[0]  # the audio features reached the model
    assert mute == {"clip": str(work / "mute.mp4"), "reason": "no_audio",
                    "error": f"{work / 'mute.mp4'}: the clip's file has no audio stream (no_audio_stream); expected an "
                             "audio track with speech (the backbone hears)"}
    assert "answered 1 of 2 clips; refused 1: " in err and "mute.mp4" in err


def test_a_batch_answers_the_good_clips_and_names_each_bad_one(work: Path, tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes((work / "joy.mp4").read_bytes()[:600])  # cut inside the header
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    wav_only = tmp_path / "voice.m4a"
    write_clip(tmp_path / "long.mp4", 31.0, audio=None, fps=1)
    import av

    with av.open(str(wav_only), "w") as out:  # an audio-only file
        track = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*track.encode(frame), *track.encode()]:
            out.mux(packet)
    clips = [corrupt, work / "joy.mp4", empty, text, wav_only, tmp_path / "long.mp4", tmp_path / "missing.mp4",
             work / "blank.mp4"]
    code, lines, err = run(capsys, *clips, "--ckpt_path", work / "tiny.ckpt", "--text", "Okay.", "--tasks", "msa", "fer")
    assert code == 1 and [line["clip"] for line in lines] == [str(c) for c in clips]
    reasons = [line.get("reason") for line in lines]
    assert reasons == ["not_a_video", None, "empty", "not_a_video", "not_a_video", "too_long", "missing", None]
    for line, clip in zip(lines, clips, strict=True):
        if "error" in line:
            assert line["error"].startswith(f"{clip}: ") and "expected" in line["error"] and "\n" not in line["error"]
        else:
            assert list(line["answers"]) == ["msa", "fer"]
    assert "32.0 s long; expected at most 30 s" in lines[5]["error"]  # 32 frames at 1 fps
    assert "no video stream" in lines[4]["error"]
    blank = lines[7]
    assert blank["frames"]["peak_from"] == "middle" and "no face" in blank["warnings"][0]
    assert "answered 2 of 8 clips; refused 6" in err and "1 with no face found" in err


def write_openface(path: Path, frames: int, peak: int) -> Path:
    """An OpenFace FeatureExtraction CSV of `frames` frames at FPS whose AU sum peaks at frame `peak` (1-based)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["frame", "face_id", "timestamp", "confidence", "success", "AU06_r", "AU12_r", "AU06_c", "AU12_c"])
        for k in range(1, frames + 1):
            level = 3.0 if k == peak else 0.2
            out.writerow([k, 0, f"{(k - 1) / FPS:.3f}", 0.98, 1, level, level, int(k == peak), int(k == peak)])
    return path


def test_openface_csv_sets_the_peak_and_one_of_another_clip_is_refused(work: Path, tmp_path: Path, capsys) -> None:
    ours = write_openface(tmp_path / "joy.csv", 20, peak=4)  # the 2 s clip at 10 fps: 20 frames
    other = write_openface(tmp_path / "other.csv", 75, peak=30)
    code, lines, _ = run(capsys, work / "joy.mp4", work / "sad.mp4", "--ckpt_path", work / "tiny.ckpt",
                         "--text", "Hi.", "--tasks", "fer", "--openface", ours, other)
    assert code == 1
    frames = lines[0]["frames"]
    assert frames["peak_from"] == "openface" and frames["times"][frames["peak_frame"]] == pytest.approx(0.3)
    assert lines[1]["reason"] == "openface_mismatch"
    assert lines[1]["error"] == f"{other}: 75 frames, but {work / 'sad.mp4'} has 20; expected the OpenFace CSV of this clip"


def test_answers_are_parsed_and_ecpe_asks_about_the_mer_emotion(work: Path, tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    canned = {"msa": "Positive.", "mer": "Happy.", "fer": "Cheek raiser, lip corner puller.",
              "eri": "She got the job.", "ecpe": "2_joy,1"}
    asked: list[list[str]] = []

    def generate(backbone: Any, batch: dict[str, Any], tasks: Any, max_new_tokens: int | None = None) -> list[str]:
        asked.append(list(batch.tasks))
        return [canned[t] for t in batch.tasks]

    monkeypatch.setattr(evaluation, "generate", generate)
    context = tmp_path / "context.json"
    context.write_text(json.dumps([{"speaker": "Ross", "text": "Guess what, I got the job.", "emotion": "neutral"}]))
    transcripts = tmp_path / "t.csv"
    transcripts.write_text("clip,text\njoy.mp4,I am so happy.\nsad,I miss her.\n")
    code, lines, _ = run(capsys, work / "joy.mp4", work / "sad.mp4", "--ckpt_path", work / "tiny.ckpt",
                         "--transcripts", transcripts, "--context", context, "--speaker", "Rachel", "--batch_size", "3")
    assert code == 0
    assert lines[0]["answers"] == {"msa": 1.0, "mer": "joy", "fer": canned["fer"], "eri": canned["eri"],
                                   "ecpe": {"pairs": [[2, 1, "joy"]], "ignored": 0}}
    assert [line["text"] for line in lines] == ["I am so happy.", "I miss her."]
    assert sum(len(a) for a in asked) == 10 and asked[-1] == ["ecpe", "ecpe"]  # 4 tasks x 2 clips, then ecpe x 2
    assert max(len(a) for a in asked) == 3  # --batch_size


def tiny_whisper(folder: Path) -> Path:
    """A random 1-layer Whisper with a byte-level tokenizer, saved as an ASR pipeline folder (no download)."""
    import transformers as tf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|startoflm|>",
                "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tok = tf.WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=specials)
    ids = tok.convert_tokens_to_ids
    config = tf.WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_target_positions=64, decoder_start_token_id=ids(specials[0]),
                              eos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"),
                              bos_token_id=ids("<|endoftext|>"))
    torch.manual_seed(0)
    model = tf.WhisperForConditionalGeneration(config)
    gen = model.generation_config
    gen.no_timestamps_token_id, gen.is_multilingual, gen.max_length = ids("<|notimestamps|>"), False, 12
    gen.forced_decoder_ids, gen.begin_suppress_tokens, gen.suppress_tokens = None, None, []
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    tf.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_asr_transcribes_a_clip_without_a_given_text(work: Path, tmp_path: Path, capsys) -> None:
    from emoverse.asr import Transcriber

    asr = tiny_whisper(tmp_path / "whisper")
    code, lines, _ = run(capsys, work / "joy.mp4", "--ckpt_path", work / "tiny.ckpt", "--asr", asr, "--tasks", "msa")
    assert code == 0
    heard = Transcriber(str(asr))(read_clip_input(work / "joy.mp4", audio_for="asr").audio)
    assert heard and lines[0]["text"] == heard and lines[0]["text_from"] == "asr"
    code, lines, _ = run(capsys, work / "joy.mp4", "--ckpt_path", work / "tiny.ckpt", "--tasks", "msa")
    assert code == 1 and lines[0]["reason"] == "no_text" and "--asr MODEL" in lines[0]["error"]


def test_module_analyze_takes_a_clip_path_or_frames_with_audio(work: Path, monkeypatch) -> None:
    module = load_module(work / "tiny_audio.ckpt")
    seen: list[set[str]] = []
    monkeypatch.setattr(evaluation, "generate", lambda backbone, batch, tasks, max_new_tokens=None: (
        seen.append(set(batch.inputs)) or ["Negative." if t == "msa" else "Sad." for t in batch.tasks]))
    assert module.analyze(work / "sad.mp4", "I miss her.", tasks=["msa", "mer"]) == {"msa": -1.0, "mer": "sadness"}
    frames, _ = demo_clip_frames("sadness")
    wave = np.zeros(SAMPLE_RATE, np.float32) + 0.1
    assert module.analyze(frames, "I miss her.", tasks=["mer"], audio=wave) == {"mer": "sadness"}
    assert all(any("audio" in k for k in keys) for keys in seen)
    with pytest.raises(ClipError, match="mute.mp4: the clip's file has no audio stream"):
        module.analyze(work / "mute.mp4", "Hi.", tasks=["mer"])


def test_an_export_folder_answers_like_its_checkpoint(work: Path, tmp_path: Path, capsys) -> None:
    export_merged(load_module(work / "tiny.ckpt"), tmp_path / "export")
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  init_args:\n    tasks: [msa, mer]\n")
    args = [work / "joy.mp4", "--text", "I got the job."]
    _, from_ckpt, _ = run(capsys, *args, "--ckpt_path", work / "tiny.ckpt", "--tasks", "msa", "mer")
    _, from_export, _ = run(capsys, *args, "--model", tmp_path / "export", "--config", config)
    assert list(from_export[0]["answers"]) == ["msa", "mer"]
    assert from_export[0]["generations"] == from_ckpt[0]["generations"]


def test_face_peak_finds_the_expression_and_no_face_in_flat_frames(work: Path) -> None:
    for emotion, seed in (("joy", 0), ("sadness", 1), ("anger", 0)):
        _, peak = demo_clip_frames(emotion, seed)
        found = face_peak(write_demo_clip(work / f"peak-{emotion}.mp4", emotion, seed, audio=False))
        assert found.with_face >= 12 and found.time == pytest.approx(peak / FPS, abs=0.06), (emotion, found)
    # a 16:9 video: read_clip squeezes its frames square; stretched back, the faces are found (squeezed, anger's
    # face was found in 4 of 16 frames and disgust's peak was missed)
    for emotion, seed in (("anger", 0), ("disgust", 1)):
        _, peak = demo_clip_frames(emotion, seed)
        wide = read_clip_input(write_demo_clip(work / f"wide-{emotion}.mp4", emotion, seed, audio=False, width=228))
        assert wide.peak_source == "face" and wide.times[wide.peak_frame] == pytest.approx(peak / FPS, abs=0.06)
    blank = face_peak(work / "blank.mp4")
    assert blank.time is None and blank.with_face == 0 and blank.candidates > 1


def test_demo_clips_are_deterministic(tmp_path: Path) -> None:
    a = write_demo_clip(tmp_path / "a.mp4", "fear", seed=3)
    b = write_demo_clip(tmp_path / "b.mp4", "fear", seed=3)
    decoded = [read_clip_input(p, audio_for="test") for p in (a, b)]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(decoded[0].frames, decoded[1].frames))
    assert np.array_equal(decoded[0].audio, decoded[1].audio)
    with pytest.raises(ValueError, match="emotion='happy'"):
        write_demo_clip(tmp_path / "c.mp4", "happy")
    assert random.Random(0).random() == random.Random(0).random()


def test_command_errors_are_one_line_through_the_emoverse_command(work: Path, tmp_path: Path, capsys) -> None:
    from emoverse.cli import main as emoverse

    clip, ckpt = str(work / "joy.mp4"), str(work / "tiny.ckpt")
    cases = {
        ("--text", "Hi."): "emoverse analyze: give exactly one of --ckpt_path (a .ckpt written by emoverse fit) and "
                           "--model (a folder written by emoverse export)",
        ("--ckpt_path", ckpt, "--text", "Hi.", "--openface", "a.csv", "b.csv"):
            "emoverse analyze: --openface: 2 CSVs for 1 clips; expected one per clip, in the clips' order",
        ("--ckpt_path", str(tmp_path / "nope.ckpt"), "--text", "Hi."):
            f"emoverse analyze: {tmp_path / 'nope.ckpt'}: no such file; expected a .ckpt written by emoverse fit",
        ("--ckpt_path", ckpt, "--asr", str(tmp_path / "no-asr")): f"emoverse analyze: --asr {tmp_path / 'no-asr'}: "
                                                                   "cannot load an automatic-speech-recognition model",
        ("--ckpt_path", ckpt, "--text", "Hi.", "--tasks", "vqa"): "emoverse analyze: analyze: tasks=['vqa']; expected",
    }
    for args, first_line in cases.items():
        assert emoverse(["analyze", clip, *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith(first_line) and "Traceback" not in err, err


def test_a_transcript_too_long_for_the_context_refuses_only_its_clip(work: Path, tmp_path: Path, capsys) -> None:
    transcripts = tmp_path / "t.json"
    transcripts.write_text(json.dumps({"joy.mp4": "I got the job. " * 2000, "sad.mp4": "I miss her."}))
    code, lines, _ = run(capsys, work / "joy.mp4", work / "sad.mp4", "--ckpt_path", work / "tiny.ckpt",
                         "--transcripts", transcripts, "--tasks", "msa")
    assert code == 1 and lines[0]["reason"] == "prompt" and "does not fit the context" in lines[0]["error"]
    assert lines[0]["error"].startswith(f"{work / 'joy.mp4'}: ") and list(lines[1]["answers"]) == ["msa"]


def write_live_webm(path: Path, frames: int, fps: int) -> Path:
    """A webm without a duration in its header, as a browser's MediaRecorder writes (the demo page's webcam)."""
    import av

    with av.open(str(path), "w", format="webm", options={"live": "1"}) as out:
        video = out.add_stream("libvpx", rate=fps)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        for k in range(frames):
            image = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 8 * k % 256, np.uint8), format="rgb24")
            for packet in video.encode(image):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def test_a_recording_without_a_duration_is_measured_and_capped(tmp_path: Path) -> None:
    from emoverse.clip_input import probe

    info = probe(write_live_webm(tmp_path / "short.webm", frames=16, fps=5))
    assert info.duration == pytest.approx(3.2) and info.frames == 16
    with pytest.raises(ClipError, match=r"long\.webm: the clip is 33\.0 s long; expected at most 30 s"):
        probe(write_live_webm(tmp_path / "long.webm", frames=33, fps=1))


@pytest.mark.slow
def test_the_quickstart_configs_checkpoint_answers_a_demo_clip(demo_amt: Path, work: Path, tmp_path: Path,
                                                               capsys) -> None:
    """`emoverse fit --config examples/configs/quickstart.yaml` for a few steps (curriculum, packing, callbacks),
    then its last.ckpt through `emoverse analyze`."""
    from tests.test_cli import QUICKSTART, _fit

    run_dir = _fit(QUICKSTART, demo_amt, tmp_path, "--trainer.max_steps", "4")
    capsys.readouterr()
    code, lines, _ = run(capsys, work / "joy.mp4", "--ckpt_path", run_dir / "checkpoints" / "last.ckpt",
                         "--text", "I got the job.")
    assert code == 0 and list(lines[0]["answers"]) == TASKS
