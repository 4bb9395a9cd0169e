"""Shared fixtures: tiny images and manifests written on the fly."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["pedestrian", "car", "stop_sign", "traffic_light"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may use, up to 8 (each worker holds
    torch and its files' trained runs; more than 8 would mostly wait on the slowest file)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


def write_image(path: Path, width: int = 48, height: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_jsonl(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.fixture
def tiny_presence_set(tmp_path: Path):
    """A learnable toy set: class c is present iff a bright square sits in quadrant c.

    Returns a function ``make(name, n, seed)`` that writes ``name.jsonl`` with ``n`` images.
    """

    def make(name: str, n: int, seed: int = 0, unknown_rate: float = 0.0) -> Path:
        rng = np.random.default_rng(seed)
        entries = []
        for i in range(n):
            img = rng.integers(0, 60, (32, 48, 3), dtype=np.uint8)
            presence = {}
            for c, cls in enumerate(CLASSES):
                on = bool(rng.random() < 0.5)
                if on:
                    y, x = (c // 2) * 16, (c % 2) * 24
                    img[y + 4 : y + 12, x + 6 : x + 18] = 255
                hidden = rng.random() < unknown_rate
                presence[cls] = "?" if hidden else int(on)
            rel = f"{name}/{i:04d}.png"
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / rel)
            entries.append({"image": rel, "presence": presence})
        return write_jsonl(tmp_path / f"{name}.jsonl", entries)

    return make


def run_in_fork(target, *args, timeout: float = 300) -> int:
    """Run ``target(*args)`` in a forked process; returns its exit code (-9: SIGKILLed).

    A fork pays no second start-up of Python and torch. A child still running after
    ``timeout`` seconds is killed and the test fails (a live child would hold pytest's exit).
    """
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(timeout=timeout)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"{getattr(target, '__name__', target)} still running after {timeout} s")
    return child.exitcode


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``make(name)``: a folder shared by one module's tests, removed when they end.

    Trained runs hold checkpoints of 100+ MB each; kept until the session ends, they filled
    a CI disk (``tmp_path`` folders go as each test passes: ``tmp_path_retention_policy``).
    """
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repo in CI)")
    return SHARED_DATA


FAST_FIT = [
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--model.backbone=resnet18",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
"""CLI flags of the tests' tiny fits: small batches in the process, no bars or summaries."""


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's shared fixtures (a trained model), which run before
    the per-test :func:`one_thread_for_tiny_models`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Run the fast tests' tiny models on one intra-op thread, then restore the setting.

    One thread is as fast for them, and several times faster when other jobs share the cores
    (idle OpenMP workers spin-wait for busy cores). Tests marked ``slow`` train real models
    and keep every thread.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails, as on an offline machine (and at once: no hub retries)."""
    import socket

    import huggingface_hub.constants

    connect = socket.socket.connect

    def refuse(*args, **kwargs):
        raise OSError("network access disabled by the test")

    def local_only(sock, address):  # loader workers talk over Unix sockets
        if sock.family != socket.AF_UNIX:
            refuse()
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
