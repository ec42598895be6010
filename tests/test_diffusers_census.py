"""The census: every diffusers pipeline with a denoiser is supported (and tested), unsupported or
not applicable, once; the refusal names the class and the reason; the docs' table is generated."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from diffusers_models import (
    ForwardRecorder,
    sd_call_kwargs,
    sd_family_pipeline,
    tiny_ddim_pipeline,
    tiny_sd_pipeline,
    tiny_unet,
)
from ug_core.adapters.diffusers import apply_upsample_guidance, census, supported_classes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipelines() -> dict[str, type]:
    return census.denoiser_pipelines()


def test_every_pipeline_with_a_denoiser_is_accounted_for_once(pipelines):
    lists = (census.SUPPORTED, census.UNSUPPORTED, census.NOT_APPLICABLE)
    listed = [name for table in lists for name in table]
    assert len(pipelines) > 250  # the walk found diffusers' pipelines
    assert sorted(set(pipelines) - set(listed)) == [], "add them to the census"
    assert sorted({n for n in listed if listed.count(n) > 1}) == [], "listed twice"
    assert sorted(set(listed) - set(pipelines)) == [], "not a diffusers pipeline with a denoiser"


def test_the_walk_counts_unet_and_transformer_components_only(pipelines):
    from diffusers import (
        KandinskyV22PriorPipeline,
        StableDiffusionPipeline,
        VersatileDiffusionPipeline,
        WanPipeline,
    )

    assert pipelines["StableDiffusionPipeline"] is StableDiffusionPipeline
    assert pipelines["WanPipeline"] is WanPipeline
    assert not census.has_denoiser(KandinskyV22PriorPipeline)  # prior
    assert not census.has_denoiser(VersatileDiffusionPipeline)  # image_unet, text_unet
    assert "DiffusionPipeline" not in pipelines


def _test_names(path: Path) -> set[str]:
    """The module-level test functions of a test file."""
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _imported_helpers(path: Path) -> list[Path]:
    """The modules of tests/ a test file imports from (its builders)."""
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return [
        ROOT / "tests" / f"{name}.py" for name in names if (ROOT / "tests" / f"{name}.py").exists()
    ]


@pytest.mark.parametrize("name", sorted(census.SUPPORTED))
def test_supported_pipelines_name_a_test_that_runs_them(name):
    family, node = census.SUPPORTED[name]
    match = re.fullmatch(r"(tests/test_\w+\.py)::(test_\w+)(?:\[([^\]]+)\])?", node)
    assert match, f"{name}: {node!r} is not a pytest node id tests/test_x.py::test_y[param]"
    path, function, param = ROOT / match[1], match[2], match[3]
    assert path.exists(), node
    assert function in _test_names(path), node
    source = path.read_text()
    if param is not None:
        assert f'"{param}"' in source, f"{node}: no parameter {param!r} in {path.name}"
    texts = [source] + [p.read_text() for p in _imported_helpers(path)]
    assert any(name in text for text in texts), f"{node} never builds a {name}"
    assert family in supported_classes(), f"{name}: no family {family!r}"


@pytest.mark.parametrize("name", sorted(census.SUPPORTED))
def test_supported_pipelines_take_a_denoiser_of_their_family(name, pipelines):
    import inspect

    params = inspect.signature(pipelines[name].__init__).parameters
    annotations = " ".join(
        str(params[c].annotation) for c in census.DENOISER_COMPONENTS if c in params
    )
    classes = supported_classes()[census.SUPPORTED[name][0]]
    assert any(c in annotations for c in classes), (name, annotations, classes)


def test_reasons_are_sentences_a_user_can_read():
    for table in (census.UNSUPPORTED, census.NOT_APPLICABLE):
        for name, reason in table.items():
            assert isinstance(reason, str) and len(reason) > 40, name
            assert not reason.endswith("."), name  # the error and the docs add their own stop


def test_an_unsupported_pipeline_is_refused_with_its_class_and_reason():
    from diffusers import StableDiffusionPanoramaPipeline

    pipe = sd_family_pipeline(StableDiffusionPanoramaPipeline, tiny_unet())
    with pytest.raises(
        TypeError,
        match=r"^StableDiffusionPanoramaPipeline is not supported yet: denoises overlapping "
        r"windows at the trained size",
    ):
        apply_upsample_guidance(pipe)
    assert "_upsample_guidance" not in pipe.unet.__dict__ and "progress_bar" not in pipe.__dict__


def test_refusal_by_class_and_by_nearest_listed_base():
    from diffusers import (
        AudioLDMPipeline,
        StableDiffusionPanoramaPipeline,
        StableDiffusionParadigmsPipeline,
        StableDiffusionPipeline,
    )

    class MyPanorama(StableDiffusionPanoramaPipeline):
        pass

    class MySD(StableDiffusionPipeline):
        pass

    assert census.refusal(StableDiffusionPipeline) is None
    assert census.refusal(MySD) is None
    assert census.refusal(MyPanorama) == (
        f"MyPanorama is not supported yet: {census.UNSUPPORTED['StableDiffusionPanoramaPipeline']}"
    )
    assert census.refusal(StableDiffusionParadigmsPipeline).startswith(
        "StableDiffusionParadigmsPipeline is not supported yet: ParaDiGMS denoises many timesteps"
    )
    assert census.refusal(AudioLDMPipeline) == (
        f"upsample guidance does not apply to AudioLDMPipeline: {census.REASONS['AUDIO']}"
    )
    assert census.refusal(torch.nn.Module) is None  # not a pipeline the census knows


def test_a_subclass_of_a_supported_pipeline_is_guided():
    from diffusers import StableDiffusionPipeline

    class MySD(StableDiffusionPipeline):
        pass

    pipe = tiny_sd_pipeline()
    pipe.__class__ = MySD
    apply_upsample_guidance(pipe, 2, 1.0)
    rec = ForwardRecorder(pipe.unet)
    pipe(**sd_call_kwargs(steps=2))
    rec.close()
    assert [tuple(c[0]["sample"].shape[-2:]) for c in rec.calls] == [(16, 16), (8, 8)] * 2


def _pages_with_the_table() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in pages if census.BEGIN in p.read_text() or census.SUMMARY[0] in p.read_text()]


def test_the_family_table_in_the_docs_is_generated_from_the_census():
    pages = _pages_with_the_table()
    assert ROOT / "docs" / "families.md" in pages and ROOT / "README.md" in pages
    for page in pages:
        text = page.read_text()
        assert text == census.with_table(text), (
            f"{page.name} is stale: .venv/bin/python -m ug_core.adapters.diffusers.census "
            f"--write {page.relative_to(ROOT)}"
        )


def test_the_family_table_lists_each_supported_pipeline_once():
    table = census.family_table()
    for name in census.SUPPORTED:
        assert table.count(f"`{name}`") == 1, name
    counts = f"{len(census.SUPPORTED)} pipelines supported, {len(census.UNSUPPORTED)} unsupported"
    assert counts in table


def test_the_table_needs_a_row_for_a_family_with_supported_pipelines(monkeypatch):
    monkeypatch.delitem(census.FAMILY_DOCS, "DiT")
    with pytest.raises(ValueError, match=r"FAMILY_DOCS has no row for the DiT family \(supported: "
                                         r"DiTPipeline\)"):  # fmt: skip
        census.family_table()


def test_the_page_needs_the_table_markers():
    with pytest.raises(ValueError, match=r"the page must hold the markers <!-- family table: "):
        census.with_table("# a page without the table\n")


# ---------------------------------------------------------------------- pixel pipelines
def tiny_dit_pipeline(seed: int = 0):
    """A DiTPipeline: DiTTransformer2DModel (patch 2, learned sigma) trained on 8x8 latents."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    from diffusers_models import tiny_vae

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,  # the pipeline's null class is 1000
        norm_num_groups=4,
    ).eval()
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pixel(pipe, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if name == "dit":
        return pipe(class_labels=[1], num_inference_steps=3, generator=gen, output_type="latent")[0]
    return pipe(batch_size=1, num_inference_steps=3, generator=gen, output_type="np").images


@pytest.mark.parametrize("name", ["ddim", "dit"])
def test_pixel_pipelines_sample_with_ug(name):
    """DDIMPipeline and DiTPipeline (size from the denoiser's config: 2x its trained size)."""
    if name == "ddim":
        pipe = tiny_ddim_pipeline(sample_size=16)
        module, arg = pipe.unet, "sample"
    else:
        pipe = tiny_dit_pipeline()
        pipe.transformer.register_to_config(sample_size=16)  # the latent size DiT samples
        module, arg = pipe.transformer, "hidden_states"
    plain = torch.as_tensor(_run_pixel(pipe, name))
    apply_upsample_guidance(pipe, 2, 0.0)
    assert torch.equal(torch.as_tensor(_run_pixel(pipe, name)), plain)
    apply_upsample_guidance(pipe, 2, 1.0, eta=1.0)
    rec = ForwardRecorder(module)
    guided = torch.as_tensor(_run_pixel(pipe, name))
    rec.close()
    sizes = [tuple(c[0][arg].shape[-2:]) for c in rec.calls]
    high = sizes[0]
    assert sizes == [high, (high[0] // 2, high[1] // 2)] * 3  # one low call per call
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)


# ---------------------------------------------------------------------- your own family
def test_register_family_is_found_first_and_its_errors(monkeypatch):
    from ug_core.adapters.diffusers import Family, family_of, register_family
    from ug_core.adapters.diffusers import families as registry

    monkeypatch.setattr(registry, "_registered", [])

    class MyUNet(Family):
        name = "my UNet"
        classes = ("UNet2DConditionModel",)
        sample_arg = "sample"

    unet = tiny_unet()
    assert family_of(unet).name == "UNet"
    mine = register_family(MyUNet)
    assert isinstance(mine, MyUNet) and family_of(unet) is mine  # before the built-in one
    assert supported_classes()["my UNet"] == ("UNet2DConditionModel",)
    with pytest.raises(TypeError, match=r"family must be a Family subclass or instance, got 3"):
        register_family(3)
    expected = r"MyUNet.classes must name the denoiser classes it translates \(a tuple of class"
    with pytest.raises(ValueError, match=expected + r" names\), got \(\)"):
        register_family(type("MyUNet", (Family,), {"classes": ()}))
