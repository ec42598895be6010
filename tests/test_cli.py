"""The ``ug`` command: default run, --model and --pipeline folders, and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ug_core.cli import _SHIPPED, main, parse_factors, parse_size

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
    three_halves = (Fraction(3, 2), Fraction(3, 2))
    assert parse_factors("1.5") == parse_factors("3/2") == parse_factors("3/2x3/2") == three_halves
    assert parse_factors("1.25") == parse_factors("5/4") == (Fraction(5, 4),) * 2
    assert parse_factors("2x1x1") == (2, 1, 1) == parse_factors("2,1,1")  # frames, height, width
    assert parse_factors("1x3/2x3/2") == (1, *three_halves)
    assert all(type(f) is int for f in parse_factors("2x3"))  # integers stay ints
    for bad in ("0", "x", "-2", "0x2", "abc", "2x2x2x2", "nan", "inf", "0.5"):
        with pytest.raises(ValueError, match=r"--factor.* a number >= 1: an integer, or a ratio"):
            parse_factors(bad)
    for bad in ("1", "1x1", "1x1x1", "1.0"):
        with pytest.raises(ValueError, match=r"--factor .* does not upsample"):
            parse_factors(bad)
    with pytest.raises(ValueError, match=r"--factor .*1\.3.* nearest such ratio is 9/7"):
        parse_factors("1.3")
    with pytest.raises(ValueError, match=r"--factor .*denominator 9 exceeds 8; .* ratio is 15/8"):
        parse_factors("17/9")
    assert parse_size("64") == (64, 64) and parse_size("64x96") == (64, 96)
    for bad in ("0", "64x", "1.5", "64x64x64"):
        with pytest.raises(ValueError, match="--size must be a positive integer or HxW"):
            parse_size(bad)


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
    assert "(factor 2x2), 1 seed from 0," in stdout  # one seed: singular


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
    (["--bogus"], 2, "ug sample: error: unrecognized arguments: --bogus"),
    (["--factor", "0"], 2, "--factor"),
    (["--factor", "abc"], 2, "--factor"),
    (["--factor", "1.3"], 2, "the nearest such ratio is 9/7"),
    (["--factor", "1.5", "--size", "50"], 2, "(50 % 3 = 2: use 48 or 51)"),
    (["--factor", "5/3"], 2, "--factor 5/3x5/3 takes the trained size 32x32 to 160/3x160/3 pixels"),
    (
        ["--model", "latent-flow", "--factor", "3/2", "--size", "54"],
        2,
        "(the pipeline needs multiples of 4 at both sizes, so of 4 × p for --factor p/q) has "
        "sizes (54, 54) that the factors (3/2, 3/2) x unit (4, 4) do not map to whole sizes "
        "(54 % 12 = 6: use 48 or 60)",
    ),
    (["--model", "video", "--factor", "1x3/2x3/2"], 2, "--model video takes integer factors"),
    (
        ["--pipeline", "{root}/sd", "--prompt", "x", "--factor", "5/4"],
        2,
        "the trained size 16x16 × --factor 5/4x5/4 = 20x20 (the pipeline needs multiples of 8",
    ),
    (["--device", "cuda:99"], 2, "--device cuda:99: this machine has"),
    (["--device", "foo"], 2, "--device 'foo' is not a torch device (e.g. cpu, cuda, cuda:1, mps)"),
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
    (
        ["--model", "video", "--factor", "2x2x2x2"],
        2,
        "--factor must be F (both sides), HxW or FxHxW",
    ),
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
    (
        ["--out", "/proc/ug-out"],
        2,
        "--out '/proc/ug-out' is not writable: cannot make a folder in '/proc' (its file system "
        "does not allow new folders)",  # not "No such file or directory"
    ),
    (["--pipeline", "{root}/sd", "--prompt", "x", "--class", "disc"], 2, "not to --pipeline"),
]


@pytest.mark.parametrize(("args", "code", "message"), ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_errors(args, code, message, folders, tmp_path, capsys):
    argv = ["sample", *FAST, *[a.format(root=folders) for a in args]]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "never")]
    rc, stdout, err = _run(argv, capsys)
    assert rc == code
    assert message in err
    assert err.startswith("ug sample: error: ") and err.count("\n") == 1  # one line, no usage
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
        (["sample", "--factor", "0"], "a number >= 1: an integer, or a ratio p/q"),
        (["sample", "--bogus"], "unrecognized arguments: --bogus"),
        (["sample", "--eta", "2"], "--eta must be a number in [0.0, 1.0]"),
        (["sample", "--out", "{tmp}/a_file/out"], "is a file, not a folder"),
        (["sample", "--out", "/proc/ug-out"], "is not writable"),
        (["sample", "--factor", "1.5", "--size", "50"], "(50 % 3 = 2: use 48 or 51)"),
        (["sample", "--model", "video", "--factor", "1.5"], "video takes integer factors"),
        (["sample", "--pipeline", "p"], "--pipeline needs --prompt TEXT"),
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
    (line,) = proc.stderr.splitlines()  # one line: no usage, no traceback
    assert line.startswith("ug sample: error: ")  # the command's error, not the top-level one
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
    (comfy / "main.py").write_text("")  # what marks ComfyUI's folder
    assert main(["comfyui-install", str(comfy)]) == 0
    node = comfy / "custom_nodes" / "upsample_guidance.py"
    assert "from ug_core.adapters.comfyui import NODE_CLASS_MAPPINGS" in node.read_text()
    assert str(node) in capsys.readouterr().out
    assert main(["comfyui-install", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and err.count("\n") == 1  # one line
    assert err.startswith("ug comfyui-install: error: ")
    assert main(["comfyui-install", str(tmp_path)]) == 2  # neither ComfyUI nor custom_nodes/
    assert capsys.readouterr().err.startswith("ug comfyui-install: error: ")


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
    """One labelled grid as for images: a row per seed; naive, UG, baseline; each cell a strip."""
    out = tmp_path / "video"
    argv = ["sample", *FAST, "--n", "2", "--model", "video", "--out", str(out)]
    argv += [] if factor is None else ["--factor", factor]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    methods = ("naive", "ug", baseline)
    for method in methods:
        assert Image.open(out / f"{method}-seed0.png").size == strip  # frames left to right
        gif = Image.open(out / f"{method}-seed0.gif")
        assert gif.n_frames == strip[0] // strip[1]
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["metrics"]) == {"naive", "UG", baseline}
    assert result["baseline"] == baseline and result["seeds"] == [0, 1]
    assert f"(naive, UG, {baseline}), grid.png and metrics.json" in stdout
    grid = Image.open(out / "grid.png").convert("RGB")
    th = (grid.height - 18 - 18) // 2 - 4  # two rows of 4 px apart, under the column titles
    zoom = th // strip[1]
    tw = strip[0] * zoom
    label_w = grid.width - 3 * (tw + 4) - 4
    assert zoom >= 1 and label_w >= 6 * len("square")  # seed 1 is a square
    for c, method in enumerate(methods):
        for r, seed in enumerate((0, 1)):
            x0, y0 = label_w + 4 + c * (tw + 4), 22 + r * (th + 4)
            cell = grid.crop((x0, y0, x0 + tw, y0 + th))
            want = Image.open(out / f"{method}-seed{seed}.png").convert("RGB")
            assert cell.tobytes() == want.resize((tw, th), Image.NEAREST).tobytes(), (method, r)
            label = np.asarray(grid.convert("L").crop((0, y0, label_w, y0 + th)))
            assert (label < 128).any(), r  # the row's label: its seed and class


def test_shipped_video_null_class(tmp_path, capsys):
    out = tmp_path / "none"
    argv = ["sample", *FAST, "--model", "video", "--class", "none", "--out", str(out)]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    result = json.loads((out / "metrics.json").read_text())
    assert result["classes"] == ["none (null class)"]
    assert "class_match" not in result["metrics"]["naive"]  # no class was requested


@pytest.mark.parametrize(
    ("factor", "side", "spelled"), [("1.5", 48, "3/2x3/2"), ("1.25", 40, "5/4")]
)
def test_fractional_factor(factor, side, spelled, tmp_path, capsys):
    """--factor 1.5: 48x48 from the 32x32 model (1.25: 40x40); any spelling, the same files."""
    rc, stdout, err = _run(["sample", *FAST, "--factor", factor, "--out", str(tmp_path / "a")],
                           capsys)  # fmt: skip
    assert rc == 0, err
    ratio = str(Fraction(factor))
    assert f"sampling {side}x{side} (factor {ratio}x{ratio})" in stdout
    for method in ("naive", "ug", "bicubic"):
        assert Image.open(tmp_path / "a" / f"{method}-seed0.png").size == (side, side)
    result = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert result["factor"] == [ratio, ratio] and result["size"] == [side, side]
    assert result["trained_size"] == [32, 32] and set(result["metrics"]) >= {"UG", "bicubic"}
    ug, naive = (tmp_path / "a" / "ug-seed0.png").read_bytes(), tmp_path / "a" / "naive-seed0.png"
    assert ug != naive.read_bytes()  # guided
    rc, _, err = _run(["sample", *FAST, "--factor", spelled, "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert (tmp_path / "b" / "ug-seed0.png").read_bytes() == ug


@pytest.mark.parametrize(
    ("model", "side"), [(["--model", "latent-flow"], 48), (["--pipeline", "sd"], 24)]
)
def test_fractional_factor_through_the_diffusers_adapter(model, side, folders, tmp_path, capsys):
    """--factor 1.5 with the latent-flow model (32x32 → 48x48: 12x12 latents guided towards 8x8)
    and with a pipeline folder (16x16 → 24x24); UG changes the sample."""
    if model[0] == "--pipeline":
        model = ["--pipeline", str(folders / "sd"), "--prompt", "a red disc"]
    out = tmp_path / "o"
    rc, stdout, err = _run(["sample", *FAST, *model, "--factor", "1.5", "--out", str(out)], capsys)
    assert rc == 0, err
    assert f"sampling {side}x{side} (factor 3/2x3/2)" in stdout
    for method in ("naive", "ug", "bicubic"):
        assert Image.open(out / f"{method}-seed0.png").size == (side, side)
    result = json.loads((out / "metrics.json").read_text())
    assert result["factor"] == ["3/2", "3/2"] and result["size"] == [side, side]
    assert (out / "ug-seed0.png").read_bytes() != (out / "naive-seed0.png").read_bytes()


def test_fractional_factor_with_a_size(tmp_path, capsys):
    """--size 72 --factor 3/2 guides towards a 48x48 sample: 72 = 3 · 24 maps to 2 · 24."""
    argv = ["sample", *FAST, "--factor", "3/2", "--size", "72x60", "--out", str(tmp_path / "o")]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    assert Image.open(tmp_path / "o" / "ug-seed0.png").size == (60, 72)  # (width, height)
    assert "sampling 72x60 (factor 3/2x3/2)" in stdout


@pytest.mark.parametrize("factors", [(2, 2), (3, 3), (Fraction(3, 2),) * 2, (Fraction(5, 4),) * 2,
                                     (Fraction(4, 3), Fraction(3, 2))])  # fmt: skip
def test_the_bicubic_baselines_noise_is_white_with_unit_variance(factors):
    """√k·W[D[ε]]: its covariance L·Lᵀ is the identity exactly, also where D[ε]'s is not."""
    from ug_core.demo.model import low_res_noise
    from ug_core.operators import downsample

    h, w = (2 * Fraction(f).numerator for f in factors)
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    rows = low_res_noise(basis, factors).reshape(h * w, -1).T  # the linear map L, low × high
    torch.testing.assert_close(rows @ rows.T, torch.eye(len(rows), dtype=torch.float64))
    x = torch.randn(2, 3, h, w)
    if all(isinstance(f, int) for f in factors):  # integers: √k·D[ε], as before, bit for bit
        assert torch.equal(low_res_noise(x, factors), downsample(x, factors) * factors[0])
    else:  # D[ε] alone is correlated (or uneven) for a ratio: the whitening matters
        plain = downsample(basis, factors).reshape(h * w, -1).T
        k = float(Fraction(factors[0]) * Fraction(factors[1]))
        assert not torch.allclose(k * plain @ plain.T, torch.eye(len(plain), dtype=torch.float64))


LOADERS = [
    "ug_core.demo.model.load",
    "ug_core.demo.latent.load_pipeline",
    "ug_core.demo.video.load",
]


@pytest.mark.parametrize("model", ["shapes", "textured", "latent-flow", "video"])
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--class", "foo"], "--class 'foo' is not a class of this model; choose one of disc,"),
        (["--device", "cuda:99"], "--device cuda:99: this machine has"),
    ],
)
def test_class_and_device_fail_before_the_model_is_loaded(
    model, option, message, tmp_path, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    for loader in LOADERS:
        monkeypatch.setattr(loader, never)
    argv = ["sample", *FAST, "--model", model, *option, "--out", str(tmp_path / "o")]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ug_core.demo.model.load", None)  # never reached
    rc, _, err = _run(["sample", *FAST, "--device", "cuda", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert err == "ug sample: error: --device cuda: this machine has no cuda device; use cpu\n"


def test_progress_bars_are_labelled_as_the_table(tmp_path, capsys):
    argv = ["sample", "--n", "1", "--steps", "2", "--out", str(tmp_path / "o")]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    assert all(f"{label}: 100%" in err for label in ("naive", "UG", "bicubic")), err
    assert "trained size" not in err and "bicubic" in stdout


def _bars_only(err: str, labels: tuple[str, ...]) -> None:
    """Every piece of stderr is a progress bar that carries one of ``labels``."""
    pieces = [p for p in err.replace("\r", "\n").splitlines() if p.strip()]
    assert pieces, err
    assert all(p.startswith(tuple(f"{label}: " for label in labels)) for p in pieces), err


def test_latent_flow_prints_labelled_bars_and_no_library_warnings(tmp_path, capsys, monkeypatch):
    """A transformers warning while the pipeline loads (as a missing torchvision gives) stays
    silent, as do diffusers' loading bars; the sampling bars carry the method's name."""
    import transformers

    from ug_core.demo import latent

    load = latent.load_pipeline

    def warn_then_load(*args, **kwargs):
        transformers.utils.logging.get_logger("transformers").warning("requires torchvision")
        return load(*args, **kwargs)

    monkeypatch.setattr(latent, "load_pipeline", warn_then_load)
    argv = ["sample", "--n", "1", "--steps", "2", "--model", "latent-flow", "--out"]
    rc, _, err = _run([*argv, str(tmp_path / "o")], capsys)
    assert rc == 0, err
    _bars_only(err, ("naive", "UG", "bicubic"))


def test_video_prints_labelled_bars(tmp_path, capsys):
    argv = ["sample", "--n", "1", "--steps", "2", "--model", "video", "--out"]
    rc, _, err = _run([*argv, str(tmp_path / "o")], capsys)
    assert rc == 0, err
    _bars_only(err, ("naive", "UG", "interp"))
