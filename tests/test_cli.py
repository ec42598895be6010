"""The ``ug`` command: default run, --model and --pipeline folders, and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ug_core.cli import _SHIPPED, main, parse_factors, parse_size, parse_video_factors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_models import (  # noqa: E402
    EMBED_DIM,
    tiny_ddpm_pipeline,
    tiny_pixel_unet,
    tiny_sd_pipeline,
)

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)
FAST = ["--n", "1", "--steps", "2", "--no-progress"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte → printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiny_text_pipeline():
    """The tiny SD pipeline with a tiny random CLIP text encoder and a byte-level tokenizer.

    The tokenizer is built offline: its vocabulary is the 256 byte characters, alone and as
    word ends, plus the two special tokens, with no merges.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=EMBED_DIM, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )  # fmt: skip
    pipe = tiny_sd_pipeline()
    pipe.register_modules(text_encoder=CLIPTextModel(config).eval(), tokenizer=tokenizer)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_pixel_unet(sample_size=16).save_pretrained(root / "unet")
    tiny_ddpm_pipeline(sample_size=16, learned_variance=True).save_pretrained(root / "ddpm")
    tiny_text_pipeline().save_pretrained(root / "sd")
    tiny_sd_pipeline().save_pretrained(root / "sd_no_text")
    (root / "empty").mkdir()
    (root / "a_file").write_text("x")
    return root


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_parse_factors_and_size():
    assert parse_factors("2") == (2, 2)
    assert parse_factors("3") == (3, 3)
    assert parse_factors("2x3") == (2, 3) == parse_factors("2,3")
    assert parse_factors("1x2") == (1, 2)
    for bad in ("0", "x", "2x3x4", "1", "1x1", "-2", "2.5", "0x2"):
        with pytest.raises(ValueError, match=r"--factor .*integer >= 2 .*not both 1"):
            parse_factors(bad)
    assert parse_size("64") == (64, 64) and parse_size("64x96") == (64, 96)
    with pytest.raises(ValueError, match="--size"):
        parse_size("0")


def test_default_sample(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = _run(["sample", *FAST, "--out", str(out)], capsys)
    assert rc == 0, err
    for name in ("grid.png", "naive-seed0.png", "ug-seed0.png", "bicubic-seed0.png"):
        assert (out / name).is_file()
    assert Image.open(out / "ug-seed0.png").size == (64, 64)
    result = json.loads((out / "metrics.json").read_text())
    assert result["size"] == [64, 64] and result["factor"] == [2, 2] and result["cfg"] == 2.0
    assert set(result["metrics"]) == {"naive", "UG", "bicubic", "ground truth"}
    assert "one object" in stdout and "UG" in stdout and "Traceback" not in err


def test_default_out_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, _ = _run(["sample", *FAST, "--seed", "3"], capsys)
    assert rc == 0
    made = list(tmp_path.glob("ug-samples-*"))
    assert len(made) == 1 and (made[0] / "grid.png").is_file()
    assert (made[0] / "ug-seed3.png").is_file()


def test_non_square_size_with_one_factor(tmp_path, capsys):
    """The documented way to a non-square image: UG guides towards a 32x48 sample."""
    out = tmp_path / "wide"
    rc, _, err = _run(["sample", *FAST, "--size", "64x96", "--factor", "2", "--out", str(out)],
                      capsys)  # fmt: skip
    assert rc == 0, err
    assert Image.open(out / "ug-seed0.png").size == (96, 64)  # (width, height)
    assert Image.open(out / "bicubic-seed0.png").size == (96, 64)
    result = json.loads((out / "metrics.json").read_text())
    assert result["size"] == [64, 96] and result["factor"] == [2, 2]


def test_help_documents_non_square_sizes_and_the_null_class(capsys):
    rc, help_text, _ = _run(["sample", "--help"], capsys)
    text = " ".join(help_text.split())
    assert rc == 0
    assert "--size 64x96 --factor 2" in text and "stretch the content" in text
    assert "not for height against width" in text
    assert "none: the null class" in text and "unconditional" in text


def test_grid_rows_are_labelled_with_seed_and_class(tmp_path, capsys):
    out = tmp_path / "labels"
    rc, _, err = _run(["sample", *FAST, "--n", "3", "--seed", "5", "--out", str(out)], capsys)
    assert rc == 0, err
    result = json.loads((out / "metrics.json").read_text())
    assert result["seeds"] == [5, 6, 7]
    assert result["classes"] == ["square", "triangle", "cross"]  # (seed + i) mod 4
    grid = np.asarray(Image.open(out / "grid.png").convert("L"))
    tile = 128 + 4  # 64x64 samples shown at zoom 2, 4 px apart
    label_w = grid.shape[1] - 3 * tile - 4  # what the three columns leave on the left
    assert label_w >= 6 * len("triangle")  # room for "seed N" and the class name
    for r in range(3):  # each row's label strip carries text
        strip = grid[22 + r * tile : 22 + (r + 1) * tile - 4, :label_w]
        assert (strip < 128).any(), r


def test_class_none_is_the_null_class(tmp_path, capsys):
    out = tmp_path / "none"
    rc, _, err = _run(["sample", *FAST, "--class", "none", "--out", str(out)], capsys)
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["classes"] == ["none (null class)"]
    rc, _, err = _run(["sample", *FAST, "--class", "hexagon", "--out", str(out)], capsys)
    assert rc == 2 and "none (the null class: unconditional samples)" in err


def test_anisotropic_factor_and_class(tmp_path, capsys):
    out = tmp_path / "aniso"
    argv = ["sample", *FAST, "--factor", "2x3", "--class", "triangle", "--cfg", "1", "--out"]
    rc, _, err = _run([*argv, str(out)], capsys)
    assert rc == 0, err
    assert Image.open(out / "ug-seed0.png").size == (96, 64)  # (width, height)
    assert json.loads((out / "metrics.json").read_text())["size"] == [64, 96]


def test_model_unet_folder(tmp_path, folders, capsys):
    out = tmp_path / "unet"
    rc, stdout, err = _run(["sample", *FAST, "--model", str(folders / "unet"), "--out", str(out)],
                           capsys)  # fmt: skip
    assert rc == 0, err
    assert Image.open(out / "naive-seed0.png").size == (32, 32)
    # No wall times: the first method would pay the warm-up (benchmarks/cost.py measures cost).
    assert "seconds" not in stdout
    assert "seconds" not in json.loads((out / "metrics.json").read_text())


def test_model_ddpm_pipeline_folder(tmp_path, folders, capsys):
    out = tmp_path / "ddpm"
    argv = ["sample", *FAST, "--model", str(folders / "ddpm"), "--factor", "3", "--out", str(out)]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    assert Image.open(out / "ug-seed0.png").size == (48, 48)


def test_pipeline_with_prompt(tmp_path, folders, capsys):
    out = tmp_path / "sd"
    argv = ["sample", *FAST, "--pipeline", str(folders / "sd"), "--prompt", "a red disc"]
    rc, stdout, err = _run([*argv, "--out", str(out)], capsys)
    assert rc == 0, err
    for name in ("grid.png", "naive-seed0.png", "ug-seed0.png", "bicubic-seed0.png"):
        assert (out / name).is_file()
    assert Image.open(out / "ug-seed0.png").size == (32, 32)  # 8x8 latents x VAE 2 x factor 2
    assert json.loads((out / "metrics.json").read_text())["prompt"] == "a red disc"


ERRORS = [
    (["--bogus"], 2, "unrecognized arguments"),
    (["--factor", "0"], 2, "--factor"),
    (["--factor", "abc"], 2, "--factor"),
    (["--scale", "nan"], 2, "--scale"),
    (["--eta", "1.5"], 2, "--eta"),
    (["--steps", "0"], 2, "--steps"),
    (["--steps", "5000"], 2, "exceeds"),
    (["--n", "x"], 2, "--n"),
    (["--factor", "1"], 2, "does not upsample"),
    (
        ["--factor", "3", "--size", "64"],
        2,
        "--size 64x64 has sizes (64, 64) that the factors (3, 3)",
    ),
    (["--factor", "2x3", "--size", "64x64"], 2, "(64 % 3 = 1: use 63 or 66)"),
    (["--model", "{root}/missing"], 2, "no such file or folder"),
    (["--model", "{root}/empty"], 2, "holds no UNet2DModel"),
    (["--model", "{root}/a_file"], 2, "is not a folder"),
    (["--model", "{root}/sd"], 2, "--pipeline PATH --prompt TEXT"),
    (["--model", "{root}/unet", "--cfg", "3"], 2, "null class"),
    (["--model", "{root}/unet", "--class", "disc"], 2, "class-conditional"),
    (["--class", "hexagon"], 2, "not a class"),
    (["--prompt", "a disc"], 2, "--prompt needs --pipeline"),
    (["--pipeline", "{root}/missing", "--prompt", "x"], 2, "no such file or folder"),
    (["--pipeline", "{root}/empty", "--prompt", "x"], 2, "no model_index.json"),
    (["--pipeline", "{root}/sd"], 2, "--pipeline needs --prompt"),
    (["--pipeline", "{root}/sd_no_text", "--prompt", "x"], 2, "has no text_encoder"),
    (["--pipeline", "{root}/sd", "--prompt", "x", "--size", "40"], 2, "needs multiples of 8"),
    (["--model", "{root}/unet", "--pipeline", "{root}/sd"], 2, "not allowed with"),
    (["--model", "shapes", "--factor", "2x1x1"], 2, "apply to --model video only"),
    (["--model", "video", "--size", "64"], 2, "--size does not apply to --model video"),
    (["--model", "video", "--factor", "1x1x1"], 2, "does not upsample"),
    (["--model", "video", "--factor", "2x2x2x2"], 2, "F or HxW (image models) or FxHxW"),
    (["--model", "video", "--class", "hexagon"], 2, "not a class"),
    (["--model", "latent-flow", "--size", "36"], 2, "--size 36x36"),
    (["--model", "latent-flow", "--prompt", "x"], 2, "takes --class"),
    (["--model", "video", "--factor", "5x1x1"], 2, "motion modules take at most 32"),
    (["--model", "video", "--steps", "5000"], 2, "exceeds the model's 1000"),
    (["--model", "video", "--cfg", "0.5"], 2, "takes 1 (no CFG) or more"),
    (["--model", "latent-flow", "--cfg", "0.5"], 2, "takes 1 (no CFG) or more"),
    (["--model", "latent-flow", "--factor", "5"], 2, "exceeds the latent-flow model's largest"),
    (["--class", "²"], 2, "not a class"),
    (["--model", "texturd"], 2, "not a shipped model (shapes, textured, latent-flow, video)"),
    (["--out", "{root}/a_file"], 2, "not a folder"),
    (["--out", "{root}/a_file/sub"], 2, "a_file' is a file, not a folder"),
    (["--out", "/proc/ug-out"], 2, "--out '/proc/ug-out' is not writable"),
]


@pytest.mark.parametrize(("args", "code", "message"), ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_errors(args, code, message, folders, tmp_path, capsys):
    argv = ["sample", *FAST, *[a.format(root=folders) for a in args]]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "never")]
    rc, stdout, err = _run(argv, capsys)
    assert rc == code
    assert message in err
    assert "Traceback" not in err + stdout
    assert not (tmp_path / "never").exists()  # nothing written on a failed run


def test_no_command(capsys):
    rc, _, err = _run([], capsys)
    assert rc == 2 and "required" in err


def test_errors_in_a_subprocess(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cases = [
        (["sample", "--model", str(tmp_path / "nope")], "no such file or folder"),
        (["sample", "--factor", "3", "--size", "64"], "do not divide"),
    ]
    code = "import sys; from ug_core.cli import main; sys.exit(main(sys.argv[1:]))"
    for argv, message in cases:
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
            cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


NO_TORCH = """
import sys
from ug_core.cli import main
rc = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(rc)
"""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--factor", "0"], "--factor must be an integer >= 2"),
        (["sample", "--bogus"], "unrecognized arguments"),
        (["sample", "--eta", "2"], "--eta must be a number in [0.0, 1.0]"),
        (["sample", "--out", "{tmp}/a_file/out"], "is a file, not a folder"),
        (["sample", "--out", "/proc/ug-out"], "is not writable"),
    ],
)
def test_bad_arguments_and_out_fail_before_torch_is_imported(argv, message, tmp_path):
    """Parse errors and an unwritable --out exit 2 at once: torch is never imported."""
    (tmp_path / "a_file").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "torch not imported"


def test_help_does_not_import_torch():
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "sample", "--help"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "--factor" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "torch not imported"


def test_comfyui_install(tmp_path, capsys):
    from ug_core.cli import main

    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    assert main(["comfyui-install", str(comfy)]) == 0
    node = comfy / "custom_nodes" / "upsample_guidance.py"
    assert "from ug_core.adapters.comfyui import NODE_CLASS_MAPPINGS" in node.read_text()
    assert str(node) in capsys.readouterr().out
    assert main(["comfyui-install", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and err.count("\n") == 2  # usage line + one message


def test_parse_video_factors():
    assert parse_video_factors("2x1x1") == (2, 1, 1) == parse_video_factors("2,1,1")
    assert parse_video_factors("1x2x3") == (1, 2, 3)
    for bad in ("2", "2x2", "1x1x1", "0x2x2", "2x2x2x2", "ax1x1"):
        with pytest.raises(ValueError, match=r"--factor .*FxHxW"):
            parse_video_factors(bad)


def test_shipped_names_match_the_registry():
    from ug_core.demo.registry import SHIPPED, shipped_names

    assert tuple(_SHIPPED) == shipped_names()
    assert _SHIPPED == {name: entry.kind for name, entry in SHIPPED.items()}


@pytest.mark.parametrize("name", ["shapes", "textured"])
def test_shipped_unet_models(name, tmp_path, capsys):
    out = tmp_path / name
    rc, stdout, err = _run(["sample", *FAST, "--model", name, "--out", str(out)], capsys)
    assert rc == 0, err
    assert f"shipped {name} model" in stdout
    for method in ("naive", "ug", "bicubic"):
        assert Image.open(out / f"{method}-seed0.png").size == (64, 64)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"naive", "UG", "bicubic", "ground truth"}


def test_shipped_model_name_wins_over_a_folder_of_that_name(tmp_path, capsys, monkeypatch):
    (tmp_path / "textured").mkdir()  # an empty folder: loading it would fail
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(["sample", *FAST, "--model", "textured", "--out", "o"], capsys)
    assert rc == 0, err


def test_shipped_latent_flow(tmp_path, capsys):
    out = tmp_path / "lf"
    argv = ["sample", *FAST, "--model", "latent-flow", "--class", "square", "--out", str(out)]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    assert "flow-matching Euler steps" in stdout
    for method in ("naive", "ug", "bicubic"):
        assert Image.open(out / f"{method}-seed0.png").size == (64, 64)
    result = json.loads((out / "metrics.json").read_text())
    assert result["classes"] == ["square"] and result["size"] == [64, 64]


@pytest.mark.parametrize(
    ("factor", "baseline", "strip"),
    [(None, "interp", (16 * 32, 32)), ("2", "bicubic", (8 * 64, 64))],
)
def test_shipped_video(factor, baseline, strip, tmp_path, capsys):
    out = tmp_path / "video"
    argv = ["sample", *FAST, "--model", "video", "--out", str(out)]
    argv += [] if factor is None else ["--factor", factor]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    for method in ("naive", "ug", baseline):
        assert Image.open(out / f"{method}-seed0.png").size == strip  # frames left to right
        gif = Image.open(out / f"{method}-seed0.gif")
        assert gif.n_frames == strip[0] // strip[1]
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["metrics"]) == {"naive", "ug", baseline}
    assert result["baseline"] == baseline
    assert f"naive, ug, {baseline}" in stdout


def test_shipped_video_null_class(tmp_path, capsys):
    out = tmp_path / "none"
    argv = ["sample", *FAST, "--model", "video", "--class", "none", "--out", str(out)]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    result = json.loads((out / "metrics.json").read_text())
    assert result["classes"] == ["none (null class)"]
    assert "class_match" not in result["metrics"]["naive"]  # no class was requested
