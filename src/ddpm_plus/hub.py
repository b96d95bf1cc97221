"""Hub uploads of DDPM+ pipelines: the repository, the weights, configs and code files, and the model card.

`push_pipeline_to_hub(pipeline_or_directory, repo_id, ...)` is the one upload. `DDPMPlusPipeline.push_to_hub` and
`DDPMPlusPipeline.save_pretrained(..., push_to_hub=True)` run it through the entry point that pyproject.toml declares
(group "ddpm_plus.uploads"), so the pipeline file, which ships without the package, never imports this module. The
token is only handed to `huggingface_hub`: it is never logged or written to a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi

from ddpm_plus.model_card import write_model_card

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload DDPMPlusPipeline"


def push_pipeline_to_hub(
    pipeline: DDPMPlusPipeline | str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool = False,
    token: str | None = None,
    create_pr: bool = False,
    **model_card_kwargs: Any,
) -> CommitInfo:
    """Create the Hub repository `repo_id` and upload a pipeline, or a directory written by its `save_pretrained`.

    A pipeline is saved to a temporary directory first. The model card is written when `model_card_kwargs` are given
    or the directory has none, so a card written earlier with `write_model_card` (e.g. with the held-out bits/dim) is
    kept otherwise.

    Args:
        pipeline: a `DDPMPlusPipeline` (or `DDPMPlusPosteriorPipeline`), or the directory it was saved to.
        repo_id: "user/name" of the model repository (created if missing).
        commit_message: the commit message (default: "Upload DDPMPlusPipeline").
        private: create the repository as private.
        token: a Hub token; only passed to `huggingface_hub`, never written or logged.
        create_pr: open a pull request instead of committing to the main branch.
        model_card_kwargs: `ddpm_plus.model_card.write_model_card` arguments (bits_per_dim, training_args,
            dataset_name, sample_grid, bound_figure, license, ...).

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.
    """
    with _saved_directory(pipeline) as directory:
        if model_card_kwargs or not (directory / "README.md").is_file():
            write_model_card(directory, repo_id=repo_id, **model_card_kwargs)
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        logger.info("Uploading %s to the Hub repository %s", directory, repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=directory,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            create_pr=create_pr,
        )


@contextmanager
def _saved_directory(pipeline: DDPMPlusPipeline | str | os.PathLike) -> Iterator[Path]:
    """The directory of a saved pipeline: the given one, or a temporary directory that the pipeline is saved to."""
    if isinstance(pipeline, (str, os.PathLike)):
        yield Path(pipeline)
        return
    with tempfile.TemporaryDirectory() as directory:
        pipeline.save_pretrained(directory)
        yield Path(directory)
