"""Fixtures for the Ray engine tests: a small corpus with corrupt files, and the local engine's output."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_ray import base_config, make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("ray_corpus"))


@pytest.fixture(scope="session")
def local_reference(corpus, tmp_path_factory) -> Path:
    """The local engine's output for `corpus`: what every Ray run must reproduce."""
    from resize_pipeline import convert

    dest = tmp_path_factory.mktemp("ray_ref") / "local"
    convert(base_config(corpus, dest, engine="local", workers=1))
    return dest
