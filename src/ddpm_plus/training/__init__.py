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

from ddpm_plus.extras import exports_on_first_use

# Public names and the modules that define them, imported on first use: `train.py --help` loads no torch.
_EXPORTS = {
    "build_parser": "arguments",
    "check_arguments": "arguments",
    "data_source": "arguments",
    "dataset_description": "arguments",
    "eval_split": "arguments",
    "hub_repo_id": "arguments",
    "inference_steps": "arguments",
    "parse_args": "arguments",
    "resolve_max_train_steps": "arguments",
    "tracker_config": "arguments",
    "EMA_WEIGHTS_FILE": "checkpoints",
    "EarlierRun": "checkpoints",
    "check_new_run": "checkpoints",
    "save_pipeline": "checkpoints",
    "MANIFEST_FILE": "checkpoints",
    "ResumeChoice": "checkpoints",
    "TRAINING_STATE_FILE": "checkpoints",
    "complete_checkpoints": "checkpoints",
    "disk_is_full": "checkpoints",
    "explained_write_errors": "checkpoints",
    "latest_checkpoint": "checkpoints",
    "prepare_output_dir": "checkpoints",
    "prune_checkpoints": "checkpoints",
    "remove_unfinished_checkpoints": "checkpoints",
    "resolve_resume_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "verify_checkpoint": "checkpoints",
    "ShardedBatchSampler": "data_order",
    "optimizer_step_batches": "data_order",
    "CheckpointError": "errors",
    "TrainingError": "errors",
    "check_world_size": "launch",
    "configure_backends": "launch",
    "create_accelerator": "launch",
    "process_group_lifetime": "launch",
    "torch_threads_per_process": "launch",
    "DiffusionObjective": "objective",
    "ObjectiveOutput": "objective",
    "TrainingGenerators": "objective",
    "RESUME_SIGNATURE_KEYS": "resume",
    "loss_scaler_difference": "resume",
    "run_signature": "resume",
    "RunSetup": "run_setup",
    "prepare_run": "run_setup",
    "TrainingFid": "sample_quality",
    "prepare_training_fid": "sample_quality",
    "StepOutput": "step",
    "TrainingStep": "step",
    "build_optimizer": "step",
    "set_optimizer_hyperparameters": "step",
    "RunningLog": "trainer",
    "Trainer": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = exports_on_first_use(__name__, _EXPORTS)
