"""Shared test settings."""

from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, RepoUrl

# The suite runs on small CPUs, often with one pytest-xdist worker per core: one intra-op thread per process
# avoids oversubscription (tiny models are slower with more threads under load). Tests that change the thread
# count (the in-process training runs) restore it.
torch.set_num_threads(1)


@pytest.fixture
def hub_calls(monkeypatch) -> dict:
    """Record create_repo and the files upload_folder would send; no request leaves the process."""
    calls: dict = {"create_repo": [], "uploads": []}

    def create_repo(self, repo_id, *, private=False, exist_ok=False, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "token": self.token})
        full_id = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts bare names in the token's namespace
        return RepoUrl(f"https://huggingface.co/{full_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, create_pr=None, **kwargs):
        folder = Path(folder_path)
        files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        calls["uploads"].append(
            {"repo_id": repo_id, "files": files, "message": commit_message, "pr": create_pr, "token": self.token}
        )
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls
