"""scikit-learn's own MLP test suite (sklearn/neural_network/tests/test_mlp.py, shipped in its wheel) run
against fastbp's estimators: the file copied, its import line swapped for fastbp's, nothing else changed.

fastbp does not pass all of it yet (KNOWN_FAILING names each test left and why); this test runs it, and
holds the line: every other test must pass, and a known-failing test that starts passing is reported, so
the list shrinks with the work. About 15 s.
"""
import importlib.util
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("sklearn")

THEIR_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"

# Test (function name, parameters stripped) -> why fastbp fails it today. 55 of its 59 tests pass.
KNOWN_FAILING = {
    # scikit-learn's private attributes (the issue leaves these):
    "test_fit": "sets scikit-learn's private _coef_grads/_intercept_grads and assigns coefs_, then expects its "
                "float64 SGD arithmetic to the 1e-6",
    "test_gradient": "calls scikit-learn's private _loss_grad_lbfgs",
    "test_learning_rate_warmstart": "reads scikit-learn's private _optimizer.learning_rate",
    "test_adaptive_learning_rate": "reads scikit-learn's private _optimizer.learning_rate",
}


def their_suite():
    spec = importlib.util.find_spec("sklearn")
    return pathlib.Path(spec.origin).parent / "neural_network" / "tests" / "test_mlp.py"


def run_suite(folder):
    """{test function name: [outcome of each parametrization]} from a run of the swapped copy."""
    source = their_suite().read_text()
    assert THEIR_IMPORT in source, "scikit-learn's test file no longer imports the estimators as expected"
    copy = folder / "test_mlp_fastbp.py"
    copy.write_text(source.replace(THEIR_IMPORT, "from fastbp import MLPClassifier, MLPRegressor"))
    report = folder / "report.xml"
    # sklearn.conftest: the fixtures the file uses (global_random_seed, ...), as in scikit-learn's own runs.
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
                    "--rootdir", str(folder), f"--junitxml={report}", str(copy)],
                   cwd=folder, capture_output=True, text=True, timeout=1200)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name").split("[")[0]
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes.setdefault(name, []).append("failed" if failed else "skipped" if skipped else "passed")
    return outcomes


def test_scikit_learns_own_mlp_suite(tmp_path):
    outcomes = run_suite(tmp_path)
    assert len(outcomes) >= 40, f"collected only {sorted(outcomes)}"
    failing = sorted(n for n, o in outcomes.items() if "failed" in o)
    newly_failing = [n for n in failing if n not in KNOWN_FAILING]
    now_passing = sorted(n for n in KNOWN_FAILING if n in outcomes and "failed" not in outcomes[n])
    passed = sum(o.count("passed") for o in outcomes.values())
    total = sum(len(o) for o in outcomes.values())
    print(f"scikit-learn's MLP suite against fastbp: {passed} of {total} passed; failing: {failing}")
    assert not newly_failing, f"tests of scikit-learn's suite that passed before now fail: {newly_failing}"
    assert not now_passing, f"now passing, take them off KNOWN_FAILING: {now_passing}"
