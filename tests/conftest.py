import os

# CUDA tests run on the Numba CUDA simulator unless a real GPU is asked for; this must be
# set before numba is imported (it only changes numba.cuda, not the CPU kernels).
if os.environ.get("OPTFORGE_TEST_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Under pytest-xdist each worker keeps its own Numba cache (also before numba is imported; the
# subprocesses a test starts inherit it). Numba's cache is not safe for two processes that
# compile one function for different signatures at once: both may pick the same data file's
# number, and the index can end up naming another signature's machine code (numba issue 10128
# is the same race for gufuncs).
if "PYTEST_XDIST_WORKER" in os.environ and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ".numba-cache",
        os.environ["PYTEST_XDIST_WORKER"],
    )

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The fixture of mindspore-semantics.md section 10.2: w0 and five gradient rows,
# step t uses row (t - 1) mod 5.
W0 = np.array([0.5, -1.0, 1.5, -2.0, 0.25])
G = np.array(
    [
        [0.1, -0.2, 0.3, -0.4, 0.0],
        [0.2, 0.1, -0.3, 0.5, 0.05],
        [-0.1, 0.3, 0.2, -0.2, 0.1],
        [0.4, -0.1, 0.1, 0.3, -0.05],
        [0.0, 0.2, -0.4, 0.1, 0.2],
    ]
)

# Tolerance against MindSpore (issue 2): 1e-5 absolute + 2e-5 relative.
MS_TOL = dict(atol=1e-5, rtol=2e-5)


def golden_grad(step: int, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    """The gradient of step `step` (1-based), times `scale`."""
    return (G[(step - 1) % 5] * scale).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


@pytest.fixture(scope="session")
def built_files():
    """What `optforge build` gives for the built-in specs (relative path -> text), built once a
    session: every test that needs the whole build reads this one."""
    from optforge.compiler import build

    return build.build_files(build.load_specs())
