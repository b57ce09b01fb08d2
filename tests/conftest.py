# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Shared pytest fixtures: implementations to test and per-test random streams."""

import os
import sys

import matplotlib
import numpy as np
import pytest

# The helper modules next to the tests (testing_utils, custom_masks,
# compile_check) import as top-level modules whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
matplotlib.use("Agg")
# Under pytest-xdist every worker is a JAX process: on a GPU, each takes
# memory as it needs it instead of XLA's default 75% up front.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import testing_utils  # noqa: E402


def pytest_configure(config):
    """Silences a NumPy deprecation raised inside Triton's interpreter."""
    config.addinivalue_line(
        "filterwarnings", "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")


def pytest_runtest_logreport(report):
    """With ``CHILL_JAX_FAILURE_LOG=<file>``, appends each failure's report as
    it happens, so a run cut short (a device time limit) keeps its messages."""
    path = os.environ.get("CHILL_JAX_FAILURE_LOG")
    # Under pytest-xdist the controller writes (workers set PYTEST_XDIST_WORKER).
    if path and report.failed and "PYTEST_XDIST_WORKER" not in os.environ:
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


def pytest_report_header(config):
    """The implementations under test and the input seed of this run."""
    seed = os.environ.get("CHILL_JAX_TEST_SEED") or testing_utils.SESSION_SEED
    return (f"chill_jax implementations: {', '.join(testing_utils.IMPLEMENTATIONS)}; "
            f"inputs: CHILL_JAX_TEST_SEED={seed}")


@pytest.fixture(params=testing_utils.IMPLEMENTATIONS)
def implementation(request) -> str:
    """Every implementation this machine can run: ``"interpret"`` and
    ``"xla"``, plus ``"triton"`` when JAX's default backend is a CUDA GPU
    (``CHILL_JAX_TEST_IMPLEMENTATIONS`` narrows the set)."""
    return request.param


@pytest.fixture(params=testing_utils.KERNEL_IMPLEMENTATIONS)
def kernel_implementation(request) -> str:
    """The implementations that launch the Triton kernels."""
    return request.param


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A random generator seeded from the test's node id (see ``seed_for``)."""
    return np.random.default_rng(testing_utils.seed_for(request.node.nodeid))
