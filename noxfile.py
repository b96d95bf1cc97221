"""The support matrix of ddpm_plus: each session is one row of the README's "Supported versions" table.

    pip install nox                             # or: pip install -e ".[matrix]"
    nox                                         # CI's sessions: minimum, wheel, python_floor, eval
    nox -s latest                               # the README's test environment, newest releases
    nox -s tests-3.10 tests-3.12 tests-3.13     # other interpreters (python3.X on PATH)

The lower bounds that pyproject.toml declares are read from it, so the minimum sessions install exactly the
versions it states.
"""

import shutil
from pathlib import Path

import nox
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent
# The CPU build of torch for Python 3.11 that the README's commands install; other interpreters get PyPI's build.
LOCAL_TORCH = "torch==2.13.0"
# torch-fidelity (the extra `eval`) needs torchvision, and PyPI's torchvision needs PyPI's torch of its release: these
# two are PyPI's builds (CUDA, they run on CPUs too).
EVAL_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
# The default markers of pyproject.toml's pytest options, with the tests of the extra `eval`.
WITH_EVAL = ("-m", "not slow and not bare_install")
# The packages whose lower bounds the matrix tests (torch's in the oldest-interpreter session).
FLOORED = ("diffusers", "torch", "accelerate", "huggingface-hub", "transformers", "matplotlib")
# All code but this file (nox itself runs on Python >= 3.11 here, for tomllib).
VERMIN_PATHS = ("src", "pipelines", "train_scripts", "bench", "tests")
# vermin takes `bytes.decode` on a subscripted value for Python 2's `str.decode`.
VERMIN_FALSE_POSITIVES = ("--exclude", "str.decode")

nox.options.sessions = ["minimum", "wheel", "python_floor", "eval"]
nox.options.default_venv_backend = "venv"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared_minimums(floored: tuple[str, ...] = FLOORED) -> dict[str, str]:
    """`name==version` for each package of `floored`, at the `>=` bound that pyproject.toml declares for it."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(text for extra in extras for text in extra)]
    minimums = {}
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if name in floored and floors:
            minimums[name] = f"{name}=={floors[0]}"
    missing = set(floored) - set(minimums)
    if missing:
        raise ValueError(f"pyproject.toml declares no lower bound for {sorted(missing)}")
    return minimums


def oldest_python() -> str:
    """The interpreter version that `requires-python = ">=X.Y"` names."""
    return pyproject()["project"]["requires-python"].removeprefix(">=")


# Prints where ddpm_plus was imported from and the versions that the README's matrix lists.
REPORT_VERSIONS = """
import importlib.metadata, importlib.util, platform, ddpm_plus
names = ["torch", "torchvision", "torch_fidelity", "diffusers", "huggingface_hub", "accelerate", "transformers"]
names += ["matplotlib", "numpy"]
versions = [f"{name} {importlib.metadata.version(name)}" for name in names if importlib.util.find_spec(name)]
print(ddpm_plus.__file__)
print("Python", platform.python_version(), *versions)
"""


def run_suite(session: nox.Session, *args: str) -> None:
    session.run("python", "-c", REPORT_VERSIONS)
    session.run("python", "-m", "pytest", "-q", *args, *session.posargs)


@nox.session(python="3.11")
def latest(session: nox.Session) -> None:
    """(a) The README's test environment: local CPU torch, newest releases of everything else."""
    session.install(LOCAL_TORCH)
    session.install("-e", ".[test]")
    run_suite(session)


@nox.session(python="3.11")
def minimum(session: nox.Session) -> None:
    """(b) The declared minimum versions of diffusers, accelerate, huggingface_hub, transformers and matplotlib,
    local torch."""
    pins = declared_minimums()
    session.install(LOCAL_TORCH)
    session.install("-e", ".[test]", *(pin for name, pin in pins.items() if name != "torch"))
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    run_suite(session)


@nox.session(python="3.11", reuse_venv=False)
def wheel(session: nox.Session) -> None:
    """(c) A wheel built from the checkout, installed non-editable: first bare (no extras), then with `[test]`.

    The wheel is built from the sdist (not from the checkout, where a stale `build/` directory would add modules
    that no longer exist), into a fresh virtual environment (a reused one would not be bare).
    """
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    (built,) = dist.glob("ddpm_plus-*.whl")
    session.install(LOCAL_TORCH)
    session.install(str(built), "pytest", "pytest-xdist")
    # The suite must run against site-packages, not the checkout's src/.
    session.run("python", "-c", "import ddpm_plus; assert 'site-packages' in ddpm_plus.__file__, ddpm_plus.__file__")
    run_suite(session, "-m", "bare_install", "tests/test_install.py")
    session.install(f"{built}[test]")
    run_suite(session)


@nox.session
def python_floor(session: nox.Session) -> None:
    """(d) vermin: all code, with what saved directories and community folders carry, runs on the oldest Python."""
    session.install("vermin")
    options = ("--no-tips", "--violations", "--eval-annotations", *VERMIN_FALSE_POSITIVES)
    session.run("vermin", *options, f"-t={oldest_python()}-", *VERMIN_PATHS)


@nox.session(name="eval", python="3.11")
def eval_extra(session: nox.Session) -> None:
    """(e) The tests of the extra `eval` (sample quality), with the torchvision it needs and the declared minimum
    torch-fidelity."""
    session.install(*EVAL_TORCH)
    session.install("-e", ".[test,eval]", *declared_minimums(("torch-fidelity",)).values())
    run_suite(session, "-m", "eval")


@nox.session(python=["3.10", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    """Other interpreters, with PyPI's torch and torchvision, the whole suite with the extra `eval`: the oldest Python
    also gets the declared minimum torch (and the torchvision of its release)."""
    torch = declared_minimums()["torch"] if session.python == oldest_python() else "torch"
    session.install(torch, "torchvision")
    session.install("-e", ".[test,eval]")
    run_suite(session, *WITH_EVAL)
