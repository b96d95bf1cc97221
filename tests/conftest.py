"""Shared test settings."""

import torch

# The suite runs on small CPUs, often with one pytest-xdist worker per core: one intra-op thread per process
# avoids oversubscription (tiny models are slower with more threads under load). Tests that change the thread
# count (the in-process training runs) restore it.
torch.set_num_threads(1)
