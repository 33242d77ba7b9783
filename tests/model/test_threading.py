"""Hooked runs on one model from two threads give exactly the sequential results.

Without the per-model lock, a thread's `run_with_cache` would cache the other thread's activations
and a `run_with_hooks` ablation would leak into the other thread's plain forward pass.
"""

from __future__ import annotations

import copy
import threading

import torch

import gated_interp

N_ROUNDS = 12


def _model():
    return gated_interp.load_hooked("gate_headwise", size="tiny", device="cpu", progress=False)


def _work(model, tokens: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """A cache, an ablated run and a plain forward pass of `tokens`."""

    def ablate(z, hook):
        return z * scale

    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("hook_z", "hook_gate")))
    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    plain = model(tokens)
    return {
        "z0": cache["blocks.0.attn.hook_z"],
        "gate1": cache["blocks.1.attn.hook_gate"],
        "hooked": hooked,
        "plain": plain,
    }


def test_two_threads_on_one_model_match_sequential_runs():
    model = _model()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "a": (torch.randint(0, model.cfg.d_vocab, (2, 24), generator=generator), 0.0),
        "b": (torch.randint(0, model.cfg.d_vocab, (3, 17), generator=generator), 3.0),
    }
    with torch.no_grad():
        expected = {key: _work(model, tokens, scale) for key, (tokens, scale) in inputs.items()}
    assert not torch.equal(expected["a"]["hooked"], expected["a"]["plain"])  # the ablation does something

    results: dict[str, list[dict[str, torch.Tensor]]] = {key: [] for key in inputs}
    errors: list[BaseException] = []
    start = threading.Barrier(len(inputs))

    def run(key: str) -> None:
        tokens, scale = inputs[key]
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(N_ROUNDS):
                    results[key].append(_work(model, tokens, scale))
        except BaseException as error:  # reported below: an exception in a thread would be lost
            errors.append(error)

    threads = [threading.Thread(target=run, args=(key,)) for key in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for key in inputs:
        assert len(results[key]) == N_ROUNDS
        for result in results[key]:
            for name, value in expected[key].items():
                assert torch.equal(result[name], value), (key, name)
    assert all(not hook_point._forward_hooks for hook_point in model.hook_dict.values())


def test_a_thread_waits_while_another_holds_hooks():
    """While one thread is inside `model.hooks(...)`, another thread's forward pass waits for it
    rather than running under the first thread's hooks."""
    model = _model()
    tokens = torch.arange(1, 9)[None]
    with torch.no_grad():
        clean = model(tokens)
    inside, release = threading.Event(), threading.Event()
    seen: list[torch.Tensor] = []

    def hold_hooks() -> None:
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
            inside.set()
            release.wait(timeout=30)

    def other() -> None:
        inside.wait(timeout=30)
        with torch.no_grad():
            seen.append(model(tokens))

    holder, runner = threading.Thread(target=hold_hooks), threading.Thread(target=other)
    holder.start()
    runner.start()
    runner.join(timeout=0.5)
    assert runner.is_alive() and not seen  # blocked by the lock, not running under the zeroing hook
    release.set()
    holder.join()
    runner.join()
    assert torch.equal(seen[0], clean)


def test_copies_get_their_own_lock():
    model = _model()
    twin = copy.deepcopy(model)
    assert twin._hook_lock is not model._hook_lock
    tokens = torch.arange(1, 9)[None]
    with torch.no_grad():
        assert torch.equal(twin(tokens), model(tokens))
