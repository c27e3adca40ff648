"""Test-session set-up: one compute thread per process.

The tests use tiny tensors, where OpenMP worker threads only add synchronisation; on a machine that
is busy with other work, threads that spin while they wait made the suite several times slower.
`DREAM_TEST_THREADS` overrides the count. Set before torch is imported, so subprocesses started by
the tests (torchrun, the CLI) inherit it.
"""

import os

THREADS = os.environ.get("DREAM_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = THREADS
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MKL_NUM_THREADS", THREADS)

import torch  # noqa: E402

torch.set_num_threads(int(THREADS))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (minutes each: the DALLE2-pytorch README's examples at their full sizes) run only with
    DREAM_SLOW_TESTS=1: the one switch for them."""
    if os.environ.get("DREAM_SLOW_TESTS", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow (minutes on 2 CPU cores); set DREAM_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _dream_cache(tmp_path_factory):
    """Caches dream writes (converted models, weight hashes) go to a temporary folder, not the user's."""
    os.environ["DREAM_CACHE"] = str(tmp_path_factory.mktemp("dream-cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP + prior + decoder model folder (checkpoint_tiny), one per test module."""
    from helpers.checkpoint_tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
