"""The training library behind `train_scripts/train.py`, importable so that it can be tested, timed and reused.

* `arguments`: the script's flags, their checks before any work, and what they resolve to.
* `run_setup`: `prepare_run` resolves the UNet config, the noise scheduler, the data sets and the verified checkpoint
  to resume from (`RunSetup`), so that bad input fails before anything is trained.
* `launch`: torch threads and backends per process, an `Accelerator` that runs multi-process on CPUs (gloo) when no
  GPU is present, and `process_group_lifetime`, which leaves the process group without gloo's exit hang.
* `data_order`: a deterministic, resumable sharding of every epoch into optimizer steps, micro-batches and processes.
* `objective`: timesteps from a timestep sampler, noise from our own generators, x_t = q(x_t | x_0) (eq. 4) and the
  loss from `DDPMPlusScheduler.training_losses`, weighted by the sampler's importance weights.
* `step`: one optimizer step (gradient accumulation, clipping, learning-rate schedule, EMA); a step whose loss or
  gradient is not finite on any process changes nothing.
* `checkpoints`: atomic checkpoints with a manifest (step, run signature, size and SHA-256 of every file) that a
  resume verifies, the fallback of "latest" to the newest checkpoint that verifies, one-line errors for a full disk,
  the earlier run that a new one would replace, and the atomic save of the final pipeline.
* `resume`: the settings a checkpoint must share with the run that resumes it.
* `evaluation`: sample grids and the held-out bits/dim.
* `trainer`: `Trainer`, the state of a run and what is done with it (steps, checkpoints and resuming, divergence
  checks, evaluations), and `RunningLog`, the averages of the training log.
"""

from ddpm_plus.training.arguments import (
    build_parser,
    check_arguments,
    data_source,
    dataset_description,
    eval_split,
    hub_repo_id,
    inference_steps,
    parse_args,
    resolve_max_train_steps,
    tracker_config,
)
from ddpm_plus.training.checkpoints import (
    EMA_WEIGHTS_FILE,
    MANIFEST_FILE,
    TRAINING_STATE_FILE,
    EarlierRun,
    ResumeChoice,
    check_new_run,
    complete_checkpoints,
    disk_is_full,
    explained_write_errors,
    latest_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    remove_unfinished_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
    save_pipeline,
    verify_checkpoint,
)
from ddpm_plus.training.data_order import ShardedBatchSampler, optimizer_step_batches
from ddpm_plus.training.errors import CheckpointError, TrainingError
from ddpm_plus.training.launch import (
    check_world_size,
    configure_backends,
    create_accelerator,
    process_group_lifetime,
    torch_threads_per_process,
)
from ddpm_plus.training.objective import DiffusionObjective, ObjectiveOutput, TrainingGenerators
from ddpm_plus.training.resume import RESUME_SIGNATURE_KEYS, loss_scaler_difference, run_signature
from ddpm_plus.training.run_setup import RunSetup, prepare_run
from ddpm_plus.training.sample_quality import TrainingFid, prepare_training_fid
from ddpm_plus.training.step import StepOutput, TrainingStep, build_optimizer, set_optimizer_hyperparameters
from ddpm_plus.training.trainer import RunningLog, Trainer

__all__ = [
    "EMA_WEIGHTS_FILE",
    "MANIFEST_FILE",
    "RESUME_SIGNATURE_KEYS",
    "TRAINING_STATE_FILE",
    "CheckpointError",
    "DiffusionObjective",
    "EarlierRun",
    "ObjectiveOutput",
    "ResumeChoice",
    "RunSetup",
    "RunningLog",
    "ShardedBatchSampler",
    "StepOutput",
    "Trainer",
    "TrainingError",
    "TrainingFid",
    "TrainingGenerators",
    "TrainingStep",
    "build_optimizer",
    "build_parser",
    "check_arguments",
    "check_new_run",
    "check_world_size",
    "complete_checkpoints",
    "configure_backends",
    "create_accelerator",
    "data_source",
    "dataset_description",
    "disk_is_full",
    "eval_split",
    "explained_write_errors",
    "hub_repo_id",
    "inference_steps",
    "latest_checkpoint",
    "loss_scaler_difference",
    "optimizer_step_batches",
    "parse_args",
    "prepare_output_dir",
    "prepare_run",
    "prepare_training_fid",
    "process_group_lifetime",
    "prune_checkpoints",
    "remove_unfinished_checkpoints",
    "resolve_max_train_steps",
    "resolve_resume_checkpoint",
    "run_signature",
    "save_checkpoint",
    "save_pipeline",
    "set_optimizer_hyperparameters",
    "torch_threads_per_process",
    "tracker_config",
    "verify_checkpoint",
]
