import os

import pytest


@pytest.fixture(scope="session")
def sample_model():
    """Path of SmolLM2-135M-Instruct Q4_1 (fetched once into the cache)."""
    from pyllama_q.sample import sample_model_path

    return sample_model_path(quiet=True)
