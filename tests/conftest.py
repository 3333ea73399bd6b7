"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

#: LIBERO's assets are found (``$TRC_LIBERO_ASSETS`` or ``../shared/libero-assets``) and robosuite imports.
HAVE_LIBERO_ASSETS = False
if importlib.util.find_spec("robosuite") is not None:
    from dynamics import libero as _libero

    HAVE_LIBERO_ASSETS = bool(os.environ.get(_libero.ASSETS_ENV)) or _libero.default_assets_path().is_dir()


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny networks run faster on one thread than on two on a shared
    machine, and deterministically; the previous number is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def libero_config(tmp_path_factory):
    """A private LIBERO config folder, inherited by subprocesses: the tests never read or write ~/.libero."""
    from dynamics import libero

    folder = tmp_path_factory.mktemp("libero_config")
    old = os.environ.get("LIBERO_CONFIG_PATH")
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    yield libero.configure_libero(config_dir=folder)
    if old is None:
        os.environ.pop("LIBERO_CONFIG_PATH", None)
    else:
        os.environ["LIBERO_CONFIG_PATH"] = old
