"""diffusers' cache hooks (``transformer.enable_cache``) with upsample guidance: the low call keeps
cache state of its own, so each cache decides for each resolution as it would alone.

The caches skip work by a step counter (TaylorSeer, FasterCache, PyramidAttentionBroadcast,
MagCache with fixed ratios) or by a threshold (FirstBlockCache: 0 never skips, a huge one always
does after the first call). Those decisions do not depend on the data, so the work a cached
transformer does in each call, counted as the number of ``Linear`` layers that run, must be the
same for the guided high calls, for the low calls and for the plain pipeline, step by step. A
shared state advances the counters twice per step and mixes 4x4 with 8x8 token grids (it crashed
with "The size of tensor a (16) must match the size of tensor b (64)").
"""

from __future__ import annotations

import pytest
import torch
from diffusers_transformers import CALLS, tiny_flux_pipeline, tiny_wan_pipeline
from ug_core.adapters.diffusers import apply_upsample_guidance, remove_upsample_guidance

STEPS = 3  # odd: a low-call state carried into the next run would be out of step


def cache_config(name: str, pipe):
    """One of diffusers' cache configs, set to skip on most steps (data-independently)."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    timestep = lambda: pipe.current_timestep  # noqa: E731
    return {
        "first_block_never_skips": lambda: FirstBlockCacheConfig(threshold=0.0),
        "first_block_always_skips": lambda: FirstBlockCacheConfig(threshold=1e9),
        "taylorseer": lambda: TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            taylor_factors_dtype=torch.float32,
            # diffusers' default patterns match Flux's attention modules, not Wan's attn1/attn2.
            cache_identifiers=[r"blocks\.\d+\.attn\d", r"(single_)?transformer_blocks\.\d+\.attn"],
        ),
        "faster": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 999),  # in range at step 0 it crashes
            current_timestep_callback=timestep,
            attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=True,
        ),
        "pyramid_attention_broadcast": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=timestep,
        ),
        "mag": lambda: MagCacheConfig(
            threshold=10.0,
            max_skip_steps=2,
            retention_ratio=0.0,
            num_inference_steps=STEPS,
            mag_ratios=[1.0] * STEPS,
        ),  # fmt: skip
    }[name]()


CACHES = [
    "first_block_never_skips",
    "first_block_always_skips",
    "taylorseer",
    "faster",
    "pyramid_attention_broadcast",
    "mag",
]

PIPELINES = {
    # (builder, call kwargs at twice the trained size in space, sample argument)
    "flux": (tiny_flux_pipeline, lambda: CALLS["flux"](2 * CALLS["flux"].size,
                                                       2 * CALLS["flux"].size, steps=STEPS)),
    "wan": (tiny_wan_pipeline, lambda: CALLS["wan"](2 * CALLS["wan"].size, 2 * CALLS["wan"].size,
                                                    steps=STEPS)),  # cond and uncond calls
}  # fmt: skip


class WorkCounter:
    """Per transformer call: (tokens or grid of its sample, how many Linear layers ran)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.calls: list[list] = []
        self.handles = [transformer.register_forward_pre_hook(self.start, with_kwargs=True)]
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                self.handles.append(module.register_forward_hook(self.count))

    def start(self, module, args, kwargs) -> None:
        sample = kwargs.get("hidden_states", args[0] if args else None)
        self.calls.append([tuple(sample.shape[1:]), 0])

    def count(self, module, args, output) -> None:
        self.calls[-1][1] += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run(pipe, kwargs) -> tuple[torch.Tensor, list]:
    counter = WorkCounter(pipe.transformer)
    try:
        out = pipe(**kwargs)[0]
    finally:
        counter.close()
    return out, counter.calls


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("cache", CACHES)
def test_each_resolution_keeps_its_own_cache_state(pipeline, cache):
    build, call = PIPELINES[pipeline]
    pipe = build()
    pipe.transformer.enable_cache(cache_config(cache, pipe))
    plain, plain_work = run(pipe, call())
    per_step = len(plain_work) // STEPS  # 1 (Flux) or 2 (Wan: cond, uncond)
    assert len(plain_work) == per_step * STEPS
    apply_upsample_guidance(pipe, 2, 1.0, eta=1.0)  # a low call after every call
    for _ in range(2):  # the low call's state starts afresh with each run, as the high one's
        guided, work = run(pipe, call())
        high, low = work[0::2], work[1::2]
        assert [w for _, w in high] == [w for _, w in plain_work]
        assert [w for _, w in low] == [w for _, w in plain_work]
        assert {shape for shape, _ in high} == {plain_work[0][0]}
        assert len({shape for shape, _ in low}) == 1 and low[0][0] != high[0][0]
        assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    if cache != "first_block_never_skips":
        # The cache skips work somewhere, or the test shows nothing.
        assert len({w for _, w in plain_work}) > 1, plain_work
    remove_upsample_guidance(pipe)
    assert torch.equal(run(pipe, call())[0], plain)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_first_block_cache_that_never_skips_gives_ug_result_exactly(pipeline):
    build, call = PIPELINES[pipeline]
    reference = apply_upsample_guidance(build(), 2, 1.0, eta=0.6)
    expected = reference(**call())[0]
    pipe = build()
    pipe.transformer.enable_cache(cache_config("first_block_never_skips", pipe))
    apply_upsample_guidance(pipe, 2, 1.0, eta=0.6)
    assert torch.equal(pipe(**call())[0], expected)


def test_the_low_call_has_its_own_cache_context_per_branch():
    """Wan's cond and uncond calls: four MagCache states, each advanced once per step (shared,
    the counter advanced twice per step and the residual of one grid was added to the other)."""
    from diffusers.hooks import HookRegistry

    build, call = PIPELINES["wan"]
    pipe = build()
    pipe.transformer.enable_cache(cache_config("mag", pipe))
    apply_upsample_guidance(pipe, 2, 1.0, eta=1.0)
    seen = []

    def on_step_end(pipeline, i, t, tensors):
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        head = next(
            hook
            for r in (registry, *registry._get_child_registries())
            for hook in r.hooks.values()
            if hasattr(hook, "state_manager")
        )
        cache = head.state_manager._state_cache
        seen.append({name: cache[name].step_index for name in cache})
        return tensors

    pipe(**call(), callback_on_step_end=on_step_end)
    names = ["cond", "uncond", "cond/upsample-guidance-low", "uncond/upsample-guidance-low"]
    # MagCache wraps its counter to 0 after num_inference_steps calls in a context.
    assert seen == [dict.fromkeys(names, (i + 1) % STEPS) for i in range(STEPS)]


def test_low_call_caches_swap_and_restore_every_kind_of_state():
    """Unit check on stand-in hooks: a StateManager-style context (diffusers 0.42: a
    CacheContext; older: a name), a single state (a fresh object, or a reset copy when its class
    needs arguments), restored after the low call; a new run (new timesteps) starts afresh."""
    from types import SimpleNamespace

    from diffusers.hooks.hooks import CacheContext
    from ug_core.adapters.diffusers.hooks import LowCallCaches

    class Manager:
        def __init__(self, context):
            self._context, self._state_cache = context, {}

        def get_state(self):
            return self._state_cache

    class Legacy(Manager):
        def __init__(self, context):
            self._current_context, self._state_cache = context, {}

    class State:
        def __init__(self, value):
            self.value = value

        def reset(self):
            self.value = 0

    class Hook:
        _is_stateful = True

        def __init__(self, manager=None, state=None):
            if manager is not None:
                self.state_manager = manager
            if state is not None:
                self.state = state

    manager, legacy, state = Manager(CacheContext("cond", step_index=3)), Legacy("cond"), State(7)
    hooks = {"a": Hook(manager), "b": Hook(legacy), "c": Hook(state=state)}
    registry = SimpleNamespace(hooks=hooks, _get_child_registries=lambda: [])
    module = torch.nn.Module()
    module.__dict__["_diffusers_hook"] = registry
    caches, timesteps = LowCallCaches(), torch.arange(3)
    with caches.swapped(module, timesteps):
        assert manager._context == CacheContext("cond/upsample-guidance-low", step_index=3)
        assert legacy._current_context == "cond/upsample-guidance-low"
        low = hooks["c"].state
        assert low is not state and low.value == 0  # State(value) needs an argument: reset copy
        low.value = 5
    assert manager._context == CacheContext("cond", step_index=3)
    assert legacy._current_context == "cond" and hooks["c"].state is state and state.value == 7
    with caches.swapped(module, timesteps):  # the same run: the same low state
        assert hooks["c"].state is low and low.value == 5
    with caches.swapped(module, torch.arange(3)):  # a new run: a fresh one
        assert hooks["c"].state is not low and hooks["c"].state.value == 0
    manager._context, legacy._current_context = None, None  # outside any cache_context
    with caches.swapped(module, timesteps):
        assert manager._context == CacheContext("upsample-guidance-low")
        assert legacy._current_context == "upsample-guidance-low"
    assert manager._context is None and legacy._current_context is None
    with caches.swapped(torch.nn.Linear(1, 1), timesteps):  # no diffusers hooks: nothing to do
        pass
