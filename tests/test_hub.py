"""Saving and loading DDPMPlusPipeline: safetensors round trips, self-contained directories that load with plain
diffusers (ddpm_plus hidden), plain DDPM directories, the community folder, model cards and Hub uploads."""

import ast
import importlib.metadata
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from fresh_process import BLOCK_DDPM_PLUS, fresh_process
from huggingface_hub import ModelCard
from pipeline_fixtures import SCHEDULER_CONFIG, generators, random_uint8_images, tiny_unet

import ddpm_plus
import ddpm_plus.pipeline_ddpm_plus as pipeline_module
from ddpm_plus import community, likelihood
from ddpm_plus.hub import push_pipeline_to_hub
from ddpm_plus.model_card import MODEL_CARD_TEMPLATE, write_model_card
from ddpm_plus.pipeline_ddpm_plus import HUB_UPLOAD_ENTRY_POINT, DDPMPlusPipeline, source_file
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler
from ddpm_plus.utils import public_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
SEEDS = [1, 2]
# A non-default configuration, so that a lossy round trip would show.
CUSTOM_CONFIG = {
    **SCHEDULER_CONFIG,
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "learned_range",
    "prediction_type": "v_prediction",
    "clip_sample": False,
}
SAVED_FILES = {
    "model_index.json",
    "pipeline_ddpm_plus.py",
    "scheduling_ddpm_plus.py",
    "likelihood.py",
    "scheduler/scheduler_config.json",
    "scheduler/scheduling_ddpm_plus.py",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
FAKE_TOKEN = "hf_" + "FakeTokenThatMustNeverBeWritten0123"


def custom_pipeline(pipeline_class: type[DDPMPlusPipeline] = DDPMPlusPipeline) -> DDPMPlusPipeline:
    pipe = pipeline_class(unet=tiny_unet(learn_sigma=True), scheduler=DDPMPlusScheduler(**CUSTOM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_pipeline(pipe: DDPMPlusPipeline, tmp_path_factory) -> tuple[Path, DDPMPlusPipeline]:
    directory = tmp_path_factory.mktemp("saved") / "pipeline"
    pipe.save_pretrained(directory)
    return directory, pipe


def sample(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=generators(SEEDS), num_inference_steps=STEPS, output_type="np").images


def public_config(component) -> dict:
    """The configuration without diffusers' bookkeeping keys, tuples as lists (as JSON stores them)."""
    return json.loads(json.dumps({key: value for key, value in component.config.items() if not key.startswith("_")}))


def relative_files(directory: Path) -> set[str]:
    return {path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained with ddpm_plus
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, DDPMPlusPipeline]:
    return saved_pipeline(custom_pipeline(), tmp_path_factory)


def test_saved_directory_is_self_contained_safetensors_only(saved):
    directory, _ = saved
    assert relative_files(directory) == SAVED_FILES
    code_files = [
        ("pipeline_ddpm_plus.py", "pipeline"),
        ("scheduling_ddpm_plus.py", "scheduler"),
        ("likelihood.py", "likelihood"),
    ]
    for copy, kind in code_files:
        assert (directory / copy).read_bytes() == source_file(kind).read_bytes()
    assert (directory / "scheduler" / "scheduling_ddpm_plus.py").read_bytes() == source_file("scheduler").read_bytes()
    package = Path(ddpm_plus.__file__).parent  # the installed package: a checkout's src/ or site-packages
    assert source_file("pipeline") == package / "pipeline_ddpm_plus.py"
    assert source_file("likelihood") == package / "likelihood.py"
    model_index = json.loads((directory / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_ddpm_plus", "DDPMPlusPipeline"]
    assert model_index["scheduler"] == ["scheduling_ddpm_plus", "DDPMPlusScheduler"]
    assert model_index["unet"] == ["diffusers", "UNet2DModel"]


def test_round_trip_with_ddpm_plus_is_exact(saved):
    directory, pipe = saved
    loaded = DDPMPlusPipeline.from_pretrained(directory)
    assert type(loaded) is DDPMPlusPipeline and type(loaded.scheduler) is DDPMPlusScheduler
    assert public_config(loaded.scheduler) == public_config(pipe.scheduler)
    assert public_config(loaded.unet) == public_config(pipe.unet)
    for name, weight in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], weight), name
    assert np.array_equal(sample(loaded), sample(pipe))


def test_loaded_pipeline_saves_without_its_source_path(saved, tmp_path):
    directory, _ = saved
    DDPMPlusPipeline.from_pretrained(directory).save_pretrained(tmp_path / "again")
    model_index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert "_name_or_path" not in model_index and str(directory) not in json.dumps(model_index)


def test_pickle_serialization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        custom_pipeline().save_pretrained(tmp_path, safe_serialization=False)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def plain_ddpm_directory(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A directory written by diffusers' own DDPMPipeline (DDPMScheduler), and its samples."""
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
    directory = tmp_path_factory.mktemp("plain") / "ddpm"
    pipe.save_pretrained(directory)
    return directory, sample(pipe)


def test_plain_ddpm_pipeline_directory_loads(plain_ddpm_directory):
    directory, images = plain_ddpm_directory
    loaded = DDPMPlusPipeline.from_pretrained(directory)
    assert type(loaded.scheduler) is DDPMPlusScheduler
    assert public_config(loaded.scheduler) == public_config(DDPMPlusScheduler(**SCHEDULER_CONFIG))
    assert np.array_equal(sample(loaded), images)
    bound = loaded.log_likelihood(random_uint8_images(1), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bound.bits_per_dim).all()


_SWAPPED_SCHEDULER_SCRIPT = """
import sys

import numpy as np
import torch
from diffusers import DDPMPipeline

import ddpm_plus  # noqa: F401

torch.set_num_threads(1)
pipe = DDPMPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
generator = [torch.Generator().manual_seed(seed) for seed in {seeds}]
np.save(sys.argv[2], pipe(batch_size=2, generator=generator, num_inference_steps={steps}, output_type="np").images)
print(type(pipe.scheduler).__module__, type(pipe.scheduler).__name__)
"""


def test_ddpm_pipeline_with_our_scheduler_reloads_in_a_fresh_process(tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(learn_sigma=True), scheduler=DDPMPlusScheduler(**CUSTOM_CONFIG))
    pipe.save_pretrained(tmp_path / "swapped")
    model_index = json.loads((tmp_path / "swapped" / "model_index.json").read_text())
    assert model_index["scheduler"] == ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"]
    script = _SWAPPED_SCHEDULER_SCRIPT.format(seeds=SEEDS, steps=STEPS)
    result = fresh_process(script, str(tmp_path / "swapped"), str(tmp_path / "images.npy"), cwd=tmp_path)
    assert result.stdout.split() == ["ddpm_plus.scheduling_ddpm_plus", "DDPMPlusScheduler"]
    assert np.array_equal(np.load(tmp_path / "images.npy"), sample(pipe))


# ------------------------------------------------------------------------------------------------------------------
# Plain diffusers, ddpm_plus not importable: trust_remote_code and custom_pipeline
# ------------------------------------------------------------------------------------------------------------------

_PLAIN_DIFFUSERS_SCRIPT = """
import json
import os
import sys

import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
saved, plain, community, out = sys.argv[1:5]
seeds, steps = {seeds}, {steps}


def images(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipe(batch_size=len(seeds), generator=generator, num_inference_steps=steps, output_type="np").images


def name(obj):
    return type(obj).__module__ + "." + type(obj).__name__


pixels = np.load(os.path.join(out, "pixels.npy"))
# The community folder first, as the first remote code of the process: nothing is in diffusers' module cache yet.
community_pipe = DiffusionPipeline.from_pretrained(plain, custom_pipeline=community, trust_remote_code=True)
np.save(os.path.join(out, "community_images.npy"), images(community_pipe))
community_pipe.set_progress_bar_config(disable=True)
community_bound = community_pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0)).bits_per_dim
np.save(os.path.join(out, "community_bits_per_dim.npy"), community_bound.numpy())

pipe = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
np.save(os.path.join(out, "images.npy"), images(pipe))
bound = pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0)).bits_per_dim
np.save(os.path.join(out, "bits_per_dim.npy"), bound.numpy())
pipe.save_pretrained(os.path.join(out, "resaved"))

report = {{
    "hidden": hidden,
    "imported": sorted(module for module in sys.modules if module.split(".")[0] == "ddpm_plus"),
    "pipeline": name(pipe),
    "scheduler": name(pipe.scheduler),
    "community_pipeline": name(community_pipe),
    "community_scheduler": name(community_pipe.scheduler),
}}
with open(os.path.join(out, "report.json"), "w") as file:
    json.dump(report, file)
"""


@pytest.fixture(scope="module")
def plain_diffusers_run(saved, plain_ddpm_directory, tmp_path_factory) -> tuple[Path, dict]:
    """Run the community folder and a freshly saved directory in a fresh process that cannot import ddpm_plus."""
    out = tmp_path_factory.mktemp("plain_run")
    np.save(out / "pixels.npy", random_uint8_images(2))
    script = BLOCK_DDPM_PLUS + _PLAIN_DIFFUSERS_SCRIPT.format(seeds=SEEDS, steps=STEPS)
    folder = REPO_ROOT / "pipelines" / "ddpm_plus"
    fresh_process(script, str(saved[0]), str(plain_ddpm_directory[0]), str(folder), str(out), cwd=out)
    return out, json.loads((out / "report.json").read_text())


def test_fresh_process_cannot_import_ddpm_plus(plain_diffusers_run):
    _, report = plain_diffusers_run
    assert report["hidden"] is True and report["imported"] == []


def test_saved_directory_loads_with_plain_diffusers_and_trust_remote_code(saved, plain_diffusers_run):
    out, report = plain_diffusers_run
    assert report["pipeline"] == "diffusers_modules.local.pipeline_ddpm_plus.DDPMPlusPipeline"
    assert report["scheduler"] == "diffusers_modules.local.scheduling_ddpm_plus.DDPMPlusScheduler"
    _, pipe = saved
    assert np.array_equal(np.load(out / "images.npy"), sample(pipe))
    bound = pipe.log_likelihood(np.load(out / "pixels.npy"), generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.load(out / "bits_per_dim.npy"), bound.bits_per_dim.numpy())


def test_directory_saved_without_ddpm_plus_round_trips(saved, plain_diffusers_run):
    out, _ = plain_diffusers_run
    resaved = out / "resaved"
    assert relative_files(resaved) == SAVED_FILES
    assert (resaved / "pipeline_ddpm_plus.py").read_bytes() == source_file("pipeline").read_bytes()
    assert (resaved / "scheduler" / "scheduling_ddpm_plus.py").read_bytes() == source_file("scheduler").read_bytes()
    assert (resaved / "likelihood.py").read_bytes() == source_file("likelihood").read_bytes()
    loaded = DDPMPlusPipeline.from_pretrained(resaved)
    assert type(loaded.scheduler) is DDPMPlusScheduler
    assert np.array_equal(sample(loaded), sample(saved[1]))


def test_community_folder_loads_a_plain_ddpm_directory(plain_ddpm_directory, plain_diffusers_run):
    """`custom_pipeline="pipelines/ddpm_plus"` runs the folder's `pipeline.py`, which imports DDPMPlusPipeline."""
    out, report = plain_diffusers_run
    assert report["community_pipeline"] == "diffusers_modules.local.pipeline_ddpm_plus.DDPMPlusPipeline"
    assert report["community_scheduler"] == "diffusers_modules.local.scheduling_ddpm_plus.DDPMPlusScheduler"
    directory, ddpm_images = plain_ddpm_directory
    assert np.array_equal(np.load(out / "community_images.npy"), ddpm_images)
    pipe = DDPMPlusPipeline.from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    bound = pipe.log_likelihood(np.load(out / "pixels.npy"), generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.load(out / "community_bits_per_dim.npy"), bound.bits_per_dim.numpy())


_POSTERIOR_COMMUNITY_SCRIPT = """
import os
import sys

assert hidden
import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
plain, community, out = sys.argv[1:4]
pipe = DiffusionPipeline.from_pretrained(plain, custom_pipeline=community, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print(type(pipe).__module__ + "." + type(pipe).__name__)
measurement = torch.from_numpy(np.load(os.path.join(out, "measurement.npy")))
images = pipe(measurement, "super_resolution", factor=2, num_inference_steps={steps},
              generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(os.path.join(out, "posterior_images.npy"), images)
pixels = np.load(os.path.join(out, "pixels.npy"))
bound = pipe.log_likelihood(pixels, generator=torch.Generator().manual_seed(0)).bits_per_dim
np.save(os.path.join(out, "posterior_bits_per_dim.npy"), bound.numpy())
"""


def test_posterior_community_file_loads_with_an_empty_module_cache(plain_ddpm_directory, tmp_path):
    """`custom_pipeline="pipelines/ddpm_plus/pipeline_ddpm_plus_posterior.py"`: diffusers copies only the modules that
    the file it runs names itself, so the posterior pipeline must load from the community folder, sample and compute
    bits/dim as the first remote code of a fresh process (nothing cached before it)."""
    from ddpm_plus.pipeline_ddpm_plus_posterior import DDPMPlusPosteriorPipeline

    directory, _ = plain_ddpm_directory
    measurement = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    np.save(tmp_path / "measurement.npy", measurement.numpy())
    np.save(tmp_path / "pixels.npy", random_uint8_images(1))
    module = REPO_ROOT / "pipelines" / "ddpm_plus" / "pipeline_ddpm_plus_posterior.py"
    script = BLOCK_DDPM_PLUS + _POSTERIOR_COMMUNITY_SCRIPT.format(steps=STEPS)
    result = fresh_process(script, str(directory), str(module), str(tmp_path), cwd=tmp_path)
    assert result.stdout.split() == ["diffusers_modules.local.pipeline_ddpm_plus_posterior.DDPMPlusPosteriorPipeline"]

    pipe = DDPMPlusPosteriorPipeline.from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        measurement,
        "super_resolution",
        factor=2,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert np.array_equal(np.load(tmp_path / "posterior_images.npy"), images)
    bound = pipe.log_likelihood(random_uint8_images(1), generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.load(tmp_path / "posterior_bits_per_dim.npy"), bound.bits_per_dim.numpy())


# ------------------------------------------------------------------------------------------------------------------
# The posterior pipeline saves and reloads as itself
# ------------------------------------------------------------------------------------------------------------------

POSTERIOR_SAVED_FILES = SAVED_FILES | {"pipeline_ddpm_plus_posterior.py"}


def posterior_samples(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    measurement = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return pipe(
        measurement,
        "super_resolution",
        factor=2,
        num_inference_steps=STEPS,
        generator=generators(SEEDS),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def saved_posterior(tmp_path_factory):
    from ddpm_plus.pipeline_ddpm_plus_posterior import DDPMPlusPosteriorPipeline

    return saved_pipeline(custom_pipeline(DDPMPlusPosteriorPipeline), tmp_path_factory)


def test_posterior_pipeline_saves_its_own_class_and_files(saved_posterior):
    directory, pipe = saved_posterior
    assert relative_files(directory) == POSTERIOR_SAVED_FILES
    model_index = json.loads((directory / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_ddpm_plus_posterior", "DDPMPlusPosteriorPipeline"]
    module_file = Path(sys.modules[type(pipe).__module__].__file__)
    assert (directory / "pipeline_ddpm_plus_posterior.py").read_bytes() == module_file.read_bytes()
    assert (directory / "pipeline_ddpm_plus.py").read_bytes() == source_file("pipeline").read_bytes()


def test_posterior_pipeline_reloads_as_itself_with_ddpm_plus(saved_posterior):
    directory, pipe = saved_posterior
    loaded = type(pipe).from_pretrained(directory)
    assert type(loaded) is type(pipe) and type(loaded.scheduler) is DDPMPlusScheduler
    assert np.array_equal(posterior_samples(loaded), posterior_samples(pipe))


_POSTERIOR_SAVED_SCRIPT = """
import os
import sys

assert hidden
import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
saved, out = sys.argv[1:3]
pipe = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print(type(pipe).__module__ + "." + type(pipe).__name__)
measurement = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
generator = [torch.Generator().manual_seed(seed) for seed in {seeds}]
images = pipe(measurement, "super_resolution", factor=2, num_inference_steps={steps}, generator=generator,
              output_type="np").images
np.save(os.path.join(out, "images.npy"), images)
pipe.save_pretrained(os.path.join(out, "resaved"))
"""


def test_posterior_pipeline_reloads_as_itself_with_plain_diffusers(saved_posterior, tmp_path):
    directory, pipe = saved_posterior
    script = BLOCK_DDPM_PLUS + _POSTERIOR_SAVED_SCRIPT.format(seeds=SEEDS, steps=STEPS)
    result = fresh_process(script, str(directory), str(tmp_path), cwd=tmp_path)
    assert result.stdout.split() == ["diffusers_modules.local.pipeline_ddpm_plus_posterior.DDPMPlusPosteriorPipeline"]
    assert np.array_equal(np.load(tmp_path / "images.npy"), posterior_samples(pipe))
    resaved = tmp_path / "resaved"  # saved again without ddpm_plus: still the posterior pipeline, same code
    assert relative_files(resaved) == POSTERIOR_SAVED_FILES
    for name in ("pipeline_ddpm_plus_posterior.py", "pipeline_ddpm_plus.py", "likelihood.py"):
        assert (resaved / name).read_bytes() == (directory / name).read_bytes()
    assert json.loads((resaved / "model_index.json").read_text())["_class_name"][1] == "DDPMPlusPosteriorPipeline"


# ------------------------------------------------------------------------------------------------------------------
# Hub repositories: configurations and safetensors weights are downloaded, never code
# ------------------------------------------------------------------------------------------------------------------


def fake_snapshot_download(repository: Path, calls: list[dict]):
    """`snapshot_download` over a local directory standing in for a Hub repository: copies the allowed files."""
    import fnmatch
    import shutil

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None, **options):
        calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "cache_dir": cache_dir, **options})
        snapshot = Path(cache_dir) / repo_id.replace("/", "--")
        for path in repository.rglob("*"):
            relative = path.relative_to(repository).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in allow_patterns):
                (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / relative)
        return str(snapshot)

    return snapshot_download


def test_hub_repository_loads_without_downloading_code(saved, monkeypatch, tmp_path):
    import huggingface_hub

    directory, pipe = saved
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(directory, calls))
    loaded = DDPMPlusPipeline.from_pretrained("user/ddpm-plus", cache_dir=str(tmp_path), revision="main")
    assert [(call["repo_id"], call["revision"]) for call in calls] == [("user/ddpm-plus", "main")]
    snapshot = tmp_path / "user--ddpm-plus"
    assert not list(snapshot.rglob("*.py"))
    assert relative_files(snapshot) == {name for name in SAVED_FILES if not name.endswith(".py")}
    assert type(loaded) is DDPMPlusPipeline and type(loaded.scheduler) is DDPMPlusScheduler
    assert np.array_equal(sample(loaded), sample(pipe))


def test_no_private_diffusers_method_is_overridden():
    """Our classes override only public methods of their diffusers bases (diffusers' internals change freely)."""
    from diffusers import ConfigMixin

    from ddpm_plus.pipeline_ddpm_plus_posterior import DDPMPlusPosteriorPipeline

    for ours in (DDPMPlusScheduler, DDPMPlusPipeline, DDPMPlusPosteriorPipeline):
        bases = [base for base in ours.__mro__ if base.__module__.startswith("diffusers.") or base is ConfigMixin]
        for name in vars(ours):
            if name.startswith("_") and not name.endswith("__"):
                assert not any(name in vars(base) for base in bases), f"{ours.__name__}.{name} overrides diffusers"
    for module in ("scheduling_ddpm_plus", "pipeline_ddpm_plus", "pipeline_ddpm_plus_posterior", "likelihood"):
        assert "__wrapped__" not in (Path(ddpm_plus.__file__).parent / f"{module}.py").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------------
# What ships: the community folder, generated from the package sources, and one-way imports
# ------------------------------------------------------------------------------------------------------------------

SHIPPED_FILES = {"pipeline_ddpm_plus.py", "pipeline_ddpm_plus_posterior.py", "scheduling_ddpm_plus.py", "likelihood.py"}
# What shipped code may import besides its sibling modules: the standard library and the libraries it runs on.
SHIPPED_CODE_LIBRARIES = {"torch", "numpy", "diffusers", "huggingface_hub", "safetensors", "tqdm", "torch_xla"}


def test_the_community_folder_is_what_the_package_exports():
    files = community.community_files()
    assert set(files) == {"pipeline.py", *SHIPPED_FILES}
    pipelines = REPO_ROOT / "pipelines"
    assert sorted(path.name for path in pipelines.iterdir()) == ["README.md", "ddpm_plus"]
    folder = pipelines / "ddpm_plus"
    assert {path.name for path in folder.iterdir() if path.is_file()} == set(files)
    for name, content in files.items():
        assert (folder / name).read_bytes() == content, (
            f"pipelines/ddpm_plus/{name} is stale: run `python -m ddpm_plus.community --out pipelines`"
        )
    for name in SHIPPED_FILES:  # byte-for-byte copies of the package's modules
        assert files[name] == (Path(ddpm_plus.__file__).parent / name).read_bytes()


def test_the_entry_module_names_every_module_of_ddpm_plus_pipeline():
    """diffusers copies only the sibling modules that `pipeline.py` imports itself: all those DDPMPlusPipeline needs."""
    imported = re.findall(r"^from \.(\w+) import (\w+)  # noqa: F401$", community.entry_module(), re.MULTILINE)
    assert {f"{module}.py" for module, _ in imported} == set(DDPMPlusPipeline.shipped_code_files())
    assert ("pipeline_ddpm_plus", "DDPMPlusPipeline") in imported


def test_export_command_writes_the_folder(tmp_path, capsys):
    assert community.main(["--out", str(tmp_path / "community")]) == 0
    printed = capsys.readouterr().out
    for name, content in community.community_files().items():
        assert (tmp_path / "community" / "ddpm_plus" / name).read_bytes() == content
        assert str(tmp_path / "community" / "ddpm_plus" / name) in printed


def imports_of(source: str) -> tuple[set[str], set[str]]:
    """(top-level packages of the absolute imports, modules of the relative imports) of Python source."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            relative |= {node.module} if node.module else {alias.name for alias in node.names}
    return absolute, relative


def test_shipped_code_imports_its_sibling_modules_and_libraries_only():
    """Imports go one way: the files that saved directories and the community folder carry import one another and
    the libraries they run on, never the package (whose Hub upload, model cards, estimator and CLI import them), not
    even by name at run time."""
    for name, content in community.community_files().items():
        source = content.decode("utf-8")
        absolute, relative = imports_of(source)
        assert absolute <= sys.stdlib_module_names | SHIPPED_CODE_LIBRARIES, (name, absolute)
        assert {f"{module}.py" for module in relative} <= SHIPPED_FILES, (name, relative)
        called = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
        assert not called & {"import_module", "__import__"}, name


def test_the_shipped_likelihood_module_holds_the_exact_bound_only():
    assert callable(likelihood.variational_bound)
    estimator = (
        "estimate_bound",
        "BoundEstimate",
        "evaluate_terms",
        "make_strata",
        "pilot_profile",
        "student_t_quantile",
    )
    assert [name for name in estimator if hasattr(likelihood, name)] == []


# ------------------------------------------------------------------------------------------------------------------
# Model cards
# ------------------------------------------------------------------------------------------------------------------


def test_model_card_template_has_one_source():
    """The package's template (a link to model_cards/ in a checkout, a copy in a wheel) is model_cards/'s file."""
    template = MODEL_CARD_TEMPLATE
    assert template.read_bytes() == (REPO_ROOT / "model_cards" / "ddpm_plus_model_card.md").read_bytes()


def test_model_card_with_bits_per_dim_settings_and_samples(saved, tmp_path):
    directory, pipe = saved
    grid = PIL.Image.new("RGB", (12, 12), (10, 200, 30))
    settings = {"learning_rate": 2e-4, "train_steps": 800, "hub_token": FAKE_TOKEN, "loss": "a|b"}
    card = write_model_card(
        directory, repo_id="me/tiny-ddpm", bits_per_dim=3.14159, training_args=settings, dataset_name="digits",
        sample_grid=grid,
    )  # fmt: skip
    written = ModelCard.load(directory / "README.md")
    assert written.content == card.content
    data = written.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "apache-2.0"
    assert {"ddpm_plus", "unconditional-image-generation"} <= set(data["tags"])
    assert data["pipeline_tag"] == "unconditional-image-generation"
    assert data["datasets"] == ["digits"] and data["metrics"] == ["bits_per_dim"]
    result = data["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "bits_per_dim", "value": 3.14159, "name": "NLL bound (bits/dim)"}
    body = written.text
    num_parameters = sum(p.numel() for p in pipe.unet.parameters())
    assert f"{num_parameters:,} parameters" in body and "T = 20 steps" in body and "`squaredcos_cap_v2`" in body
    assert "`v_prediction`" in body and "`learned_range`" in body and "8x8 images with 3 channel(s)" in body
    assert "**3.1416 bits/dim**" in body and "computed exactly" in body
    assert "![Samples from the model](sample_grid.png)" in body
    assert np.array_equal(np.asarray(PIL.Image.open(directory / "sample_grid.png")), np.asarray(grid))
    assert "| `learning_rate` | `0.0002` |" in body and "| `loss` | `a\\|b` |" in body
    assert "hub_token" not in body and FAKE_TOKEN not in body
    public = public_settings(settings)  # what a training script may pass: the same card
    again = write_model_card(
        directory, repo_id="me/tiny-ddpm", bits_per_dim=3.14159, training_args=public, dataset_name="digits",
        sample_grid=grid,
    )  # fmt: skip
    assert again.content == card.content
    assert 'DDPMPlusPipeline.from_pretrained("me/tiny-ddpm")' in body
    assert 'DiffusionPipeline.from_pretrained("me/tiny-ddpm", trust_remote_code=True)' in body


def test_model_card_states_an_estimated_bound_with_its_standard_error(saved):
    directory, _ = saved
    card = write_model_card(directory, bits_per_dim=2.6081, bits_per_dim_standard_error=0.00327)
    assert "**2.6081 bits/dim**" in card.text and "estimated without bias" in card.text
    assert "standard error ± 0.0033 bits/dim" in card.text and "computed exactly" not in card.text


def test_model_card_without_optional_facts(saved, tmp_path):
    directory, _ = saved
    card = write_model_card(directory)
    data = card.data.to_dict()
    assert "metrics" not in data and "datasets" not in data and "model-index" not in data
    for section in ("## Likelihood", "## Samples", "## The bound per timestep", "## Training settings"):
        assert section not in card.text
    assert f'DDPMPlusPipeline.from_pretrained("{directory}")' in card.text  # the folder itself, not a Hub id


def test_model_card_shows_the_figure_of_the_bound_next_to_the_samples(tmp_path_factory, tmp_path):
    """The figure (a file or a PIL image) is stored as bound.png beside the card, which shows it after the samples."""
    directory, _ = saved_pipeline(custom_pipeline(), tmp_path_factory)
    figure = PIL.Image.new("RGB", (30, 12), (200, 10, 30))
    figure.save(tmp_path / "figure.png")
    grid = PIL.Image.new("RGB", (12, 12))
    for given in (tmp_path / "figure.png", figure):
        card = write_model_card(directory, bits_per_dim=2.6, sample_grid=grid, bound_figure=given)
        shown = "![Terms of the variational bound per timestep and the rate-distortion curve](bound.png)"
        assert shown in card.text and card.text.index("## Samples") < card.text.index("## The bound per timestep")
        assert np.array_equal(np.asarray(PIL.Image.open(directory / "bound.png")), np.asarray(figure))


def test_model_card_needs_a_saved_pipeline(tmp_path):
    with pytest.raises(ValueError, match="write the pipeline with `save_pretrained`"):
        write_model_card(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# push_to_hub, intercepted at huggingface_hub's API boundary
# ------------------------------------------------------------------------------------------------------------------


def assert_token_nowhere(texts: list[str], files: dict[str, bytes]) -> None:
    for text in texts:
        assert FAKE_TOKEN not in text
    for name, content in files.items():
        assert FAKE_TOKEN.encode() not in content, name


def test_push_to_hub_uploads_weights_configs_code_and_card(hub_calls, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    pipe = custom_pipeline()
    result = pipe.push_to_hub(
        "me/tiny-ddpm", token=FAKE_TOKEN, private=True, commit_message="first upload", bits_per_dim=2.5,
        training_args={"learning_rate": 1e-4, "hub_token": FAKE_TOKEN}, dataset_name="digits",
        sample_grid=PIL.Image.new("RGB", (4, 4)),
    )  # fmt: skip
    assert result == "commit-info"
    assert hub_calls["create_repo"] == [
        {"repo_id": "me/tiny-ddpm", "private": True, "exist_ok": True, "token": FAKE_TOKEN}
    ]
    (upload,) = hub_calls["uploads"]
    assert upload["repo_id"] == "me/tiny-ddpm" and upload["message"] == "first upload" and upload["pr"] is False
    assert upload["token"] == FAKE_TOKEN
    assert set(upload["files"]) == SAVED_FILES | {"README.md", "sample_grid.png"}
    assert upload["files"]["pipeline_ddpm_plus.py"] == source_file("pipeline").read_bytes()
    card = ModelCard(upload["files"]["README.md"].decode())
    assert card.data.library_name == "diffusers" and "ddpm_plus" in card.data.tags
    assert "**2.5000 bits/dim**" in card.text and "| `learning_rate` | `0.0001` |" in card.text
    assert 'DiffusionPipeline.from_pretrained("me/tiny-ddpm", trust_remote_code=True)' in card.text
    captured = capsys.readouterr()
    assert_token_nowhere([caplog.text, captured.out, captured.err], upload["files"])


def test_save_pretrained_with_push_to_hub_uploads_the_directory(hub_calls, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    directory = tmp_path / "tiny-ddpm"
    custom_pipeline().save_pretrained(directory, push_to_hub=True, token=FAKE_TOKEN, bits_per_dim=1.25)
    assert hub_calls["create_repo"][0]["repo_id"] == "tiny-ddpm" and hub_calls["create_repo"][0]["private"] is False
    (upload,) = hub_calls["uploads"]
    assert upload["repo_id"] == "me/tiny-ddpm"
    assert set(upload["files"]) == SAVED_FILES | {"README.md"} == relative_files(directory)
    assert "**1.2500 bits/dim**" in upload["files"]["README.md"].decode()
    local_files = {name: (directory / name).read_bytes() for name in relative_files(directory)}
    assert_token_nowhere([caplog.text], {**upload["files"], **local_files})


def test_push_saved_pipeline_keeps_an_existing_card(hub_calls, saved, tmp_path):
    directory, pipe = saved
    pipe.save_pretrained(tmp_path / "run")
    write_model_card(tmp_path / "run", repo_id="me/run", bits_per_dim=0.875)
    push_pipeline_to_hub(tmp_path / "run", "me/run", token=FAKE_TOKEN)
    (upload,) = hub_calls["uploads"]
    assert "**0.8750 bits/dim**" in upload["files"]["README.md"].decode()
    assert upload["message"] == "Upload DDPMPlusPipeline"


def test_push_to_hub_runs_the_upload_of_the_installed_package():
    """The pipeline file finds `ddpm_plus.hub.push_pipeline_to_hub` through the entry point pyproject.toml declares."""
    (entry_point,) = importlib.metadata.entry_points(**HUB_UPLOAD_ENTRY_POINT)
    assert entry_point.load() is push_pipeline_to_hub


@pytest.mark.parametrize(
    "installed",
    [[], [importlib.metadata.EntryPoint("push_pipeline_to_hub", "no_such_module:push", "ddpm_plus.uploads")]],
    ids=["not-installed", "not-importable"],
)
def test_push_to_hub_without_the_package_asks_for_it(monkeypatch, hub_calls, installed):
    monkeypatch.setattr(pipeline_module, "entry_points", lambda **selection: installed)
    with pytest.raises(ImportError, match=r"model card .* install ddpm_plus \(`pip install ddpm_plus`\)"):
        custom_pipeline().push_to_hub("me/tiny-ddpm", token=FAKE_TOKEN)
    assert hub_calls == {"create_repo": [], "uploads": []}
