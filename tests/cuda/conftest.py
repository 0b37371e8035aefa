"""Stress mode for the CUDA tests: `python -m pytest tests/cuda --stress 20` runs each of them 20 times."""
import pytest


def pytest_generate_tests(metafunc):
    rounds = metafunc.config.getoption("stress")
    if rounds > 1:
        metafunc.fixturenames.append("stress_round")
        metafunc.parametrize("stress_round", range(rounds), ids=lambda r: f"round{r}")


@pytest.fixture
def stress_round(request):
    return request.param
