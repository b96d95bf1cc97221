#!/usr/bin/env python
# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""Train a DDPM (Ho et al. 2020) with 🤗 accelerate, from a laptop CPU to many GPUs.

    accelerate launch train_scripts/train.py --output_dir runs/digits

With no data argument it trains the ~1M-parameter `digits-16` UNet on the embedded digits (the UCI handwritten
digits shipped in the package, at 16x16, fixed held-out split) and writes a `DDPMPlusPipeline` with the EMA weights,
its model card, a sample grid `samples.png`, the held-out bits/dim `bpd.json` and its figure `bound.png` (the terms
per timestep and the rate-distortion curve) to `--output_dir`.

Several processes: `accelerate launch --multi_gpu --num_processes N train_scripts/train.py ...` (DDP; on a machine
without GPUs the processes form a gloo group on the CPUs). Checkpoints (`--checkpointing_steps`) are written
atomically and `--resume_from_checkpoint latest` continues bitwise-identically on the CPU.
"""

# ruff: noqa: E402  (the OpenMP setting below must precede the imports that load torch)
from __future__ import annotations

import os

# Idle torch (GNU OpenMP) threads spin 300,000 times before they sleep. On a CPU shared with other jobs a spinning
# thread takes the core its partner needs: on 2 cores, next to another torch job, a digits-16 step took 2.1 s instead
# of 0.49 s with 5,000 spins, which cost ~6% on an idle machine (0.176 s instead of 0.166 s). An explicit
# GOMP_SPINCOUNT (or OMP_WAIT_POLICY) in the environment wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "5000")

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ddpm_plus.training.arguments import check_arguments, parse_args


def user_error(error: Exception) -> int:
    """Print `error` as one line on stderr (naming the process under `accelerate launch`); returns exit code 2."""
    rank = os.environ.get("RANK", "0")
    where = Path(__file__).name if rank == "0" else f"{Path(__file__).name} (process {rank})"
    print(f"{where}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # --help, malformed flags and values out of range answer before torch and diffusers load
    COMMAND_LINE = parse_args(description=__doc__)
    try:
        check_arguments(COMMAND_LINE)
    except ValueError as early_error:
        raise SystemExit(user_error(early_error)) from None

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ddpm_plus.hub import push_pipeline_to_hub
from ddpm_plus.model_card import write_model_card
from ddpm_plus.ownership import folder_lock_file, owned
from ddpm_plus.timestep_samplers import create_timestep_sampler
from ddpm_plus.training import (
    DiffusionObjective,
    RunningLog,
    RunSetup,
    ShardedBatchSampler,
    Trainer,
    TrainingError,
    TrainingGenerators,
    TrainingStep,
    build_optimizer,
    configure_backends,
    create_accelerator,
    dataset_description,
    eval_split,
    explained_write_errors,
    hub_repo_id,
    inference_steps,
    prepare_output_dir,
    prepare_run,
    prepare_training_fid,
    process_group_lifetime,
    resolve_max_train_steps,
    save_pipeline,
    tracker_config,
)
from ddpm_plus.utils import public_settings

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------- arguments
# `parse_args` (ddpm_plus.training) defines every flag: `--help` lists them under this docstring. `prepare_run` checks
# them, resolves the model config, loads the data and verifies the checkpoint to resume from, before any work. The
# other building blocks live in `ddpm_plus.training` as well; this script puts them together.


# --------------------------------------------------------------------------------------------- setup


def build_trainer(args: argparse.Namespace, setup: RunSetup, accelerator: Accelerator) -> Trainer:
    """The UNet, its optimizer, learning-rate schedule and EMA, the objective and this process's data order."""
    batch_sampler = ShardedBatchSampler(
        len(setup.train_set),
        args.train_batch_size,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
    )
    max_train_steps = resolve_max_train_steps(args, batch_sampler.steps_per_epoch)
    set_seed(args.seed)  # the same initial weights on every process
    if setup.pretrained is None:
        unet = UNet2DModel.from_config(setup.unet_config)
    else:  # fine-tuning: the pretrained weights (resuming then loads the checkpoint's)
        unet = UNet2DModel.from_pretrained(setup.pretrained.directory, subfolder="unet", torch_dtype=torch.float32)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(
        list(unet.parameters()),
        learning_rate=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        device=accelerator.device,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    if args.compile:  # after prepare: checkpoints keep the plain parameter names, with or without --compile
        model = torch.compile(model)
    eval_unet = None
    # Built here, so that evaluations never draw from the training RNG; on every process for the shared FID.
    if accelerator.is_main_process or args.eval_fid_every:
        eval_unet = UNet2DModel.from_config(setup.unet_config).to(accelerator.device).float().eval()
    set_seed(args.seed, device_specific=True)  # dropout and augmentation differ between processes
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
        )
    objective = DiffusionObjective(
        setup.noise_scheduler,
        create_timestep_sampler(args.timestep_sampler, args.num_train_timesteps),
        loss_type=args.loss,
        snr_gamma=args.snr_gamma,
        vlb_weight=args.vlb_weight,
        channels_last=args.channels_last,
    )
    step_fn = TrainingStep(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        objective,
        TrainingGenerators.create(args.seed, accelerator.process_index, accelerator.device),
        ema=ema,
        max_grad_norm=args.max_grad_norm,
    )
    return Trainer(args, setup, accelerator, unet, step_fn, batch_sampler, max_train_steps, eval_unet)


# --------------------------------------------------------------------------------------------- the loop


def due(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps (0: never) and not at the last step."""
    return every > 0 and step % every == 0 and step != last_step


def train(trainer: Trainer) -> None:
    """Optimizer steps up to the last one, with logs, periodic evaluations and checkpoints."""
    args, accelerator = trainer.args, trainer.accelerator
    running = RunningLog(trainer)
    # As a context, the bar is closed before an error is printed.
    with tqdm(
        total=trainer.max_train_steps,
        initial=trainer.global_step,
        desc="training",
        unit="step",
        disable=not accelerator.is_local_main_process,
    ) as progress:
        for micro_batches in trainer.remaining_batches():
            output = trainer.train_step(micro_batches)
            progress.update(1)
            if output.nonfinite is None:
                running.add(output)
            else:
                trainer.record_nonfinite_step(output.nonfinite)
            step, last = trainer.global_step, trainer.max_train_steps
            if step % args.logging_steps == 0 or step == last:
                running.flush(progress)
            images, bpd = due(step, args.save_images_steps, last), due(step, args.bpd_steps, last)
            fid = due(step, args.eval_fid_every, last)
            if images or bpd or fid:
                trainer.check_finite_weights()
                trainer.evaluate(images=images, bpd=bpd, fid=fid)
            if args.checkpointing_steps and (step % args.checkpointing_steps == 0 or step == last):
                trainer.save_checkpoint()


# --------------------------------------------------------------------------------------------- outputs


def save_outputs(trainer: Trainer) -> None:
    """The EMA pipeline, `samples.png`, `bpd.json`, `bound.png`, `fid.json` (with --eval_fid_every) and the model
    card in --output_dir; optionally push to the Hub.

    Only finite weights are evaluated and saved; a failed write (a full disk) is one line naming the intact checkpoint.
    """
    trainer.check_finite_weights()
    args = trainer.args
    with explained_write_errors("the final outputs", Path(args.output_dir)):
        results = trainer.evaluate(images=True, bpd=True, fid=True, final=True)
        if not trainer.accelerator.is_main_process:
            return
        pipeline = trainer.pipeline(trainer.evaluation_unet())
        save_pipeline(pipeline, args.output_dir)  # atomically: an earlier pipeline stays until this one is complete
        card = model_card_arguments(trainer, results)
        write_model_card(args.output_dir, repo_id=args.hub_model_id, **card)
    trainer.remove_replaced_checkpoints()  # with --overwrite_output_dir and no checkpoint of this run
    if args.push_to_hub:
        repo_id = hub_repo_id(args)
        push_pipeline_to_hub(pipeline, repo_id, token=args.hub_token, private=args.hub_private_repo, **card)
        logger.info(f"Pushed the pipeline to the Hub repository {repo_id}.", main_process_only=True)


def model_card_arguments(trainer: Trainer, results: dict[str, Any]) -> dict[str, Any]:
    """Held-out bits/dim and its figure, the FID, public training settings, data set name and sample grid for
    `write_model_card`."""
    bpd = results.get("bpd")
    return {
        "bits_per_dim": None if bpd is None else bpd["bits_per_dim"],
        "bits_per_dim_standard_error": None if bpd is None else bpd["standard_error"],
        "training_args": resolved_settings(trainer),
        "dataset_name": dataset_description(trainer.args, trainer.setup.resolution),
        "sample_grid": results["grid"],
        "bound_figure": results.get("bound_figure"),
        "fid": results.get("fid"),
        "base_model": trainer.args.pretrained_model_name_or_path,
    }


def resolved_settings(trainer: Trainer) -> dict[str, Any]:
    """The public training settings as the run applied them: the values that flags left to the run resolved, and
    the unset ones (None: no value, nothing applied) left out."""
    args = trainer.args
    resolved = {
        "resolution": trainer.setup.resolution,
        "variance_type": trainer.setup.noise_scheduler.config.variance_type,
        "num_inference_steps": inference_steps(args),
        "max_train_steps": trainer.max_train_steps,
        "eval_split": eval_split(args),
        "num_threads": torch.get_num_threads(),
    }
    settings = {**public_settings(args), **resolved}
    return {name: value for name, value in settings.items() if value is not None}


# --------------------------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    """Train as `args` say and write the outputs; returns the exit status (0). Errors propagate (see `run`)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_arguments(args)
    # The run owns --output_dir from here to its end: a second run into it is refused before reading it.
    with owned(folder_lock_file(Path(args.output_dir)), f"--output_dir {args.output_dir}", Path(__file__).name):
        setup = prepare_run(args)  # everything else that can fail on bad input, before any work
        train_and_save(args, setup)
    return 0


def train_and_save(args: argparse.Namespace, setup: RunSetup) -> None:
    """Build the run on this process's accelerator, train it and write the outputs."""
    threads = configure_backends(args)
    accelerator = create_accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        project_dir=args.output_dir,
        report_to=None if args.report_to == "none" else args.report_to,
    )
    with process_group_lifetime(accelerator):
        trainer = build_trainer(args, setup, accelerator)
        prepare_output_dir(args.output_dir, accelerator, setup.replaced)
        if args.eval_fid_every:
            trainer.fid = prepare_training_fid(
                args, setup.fid_reference_set, accelerator, num_inference_steps=inference_steps(args)
            )
        trainer.resume()
        accelerator.init_trackers("ddpm_plus", config=tracker_config(args))
        logger.info(
            f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} torch thread(s) each; "
            f"{len(setup.train_set)} training images, {trainer.batch_sampler.images_per_step} per step, "
            f"{trainer.batch_sampler.steps_per_epoch} steps per epoch, {trainer.max_train_steps} steps; "
            f"{sum(p.numel() for p in trainer.unet.parameters()):,} parameters.",
            main_process_only=True,
        )
        started = time.perf_counter()
        train(trainer)
        save_outputs(trainer)
        logger.info(
            f"Done in {time.perf_counter() - started:.0f} s; outputs in {args.output_dir}.", main_process_only=True
        )


def run(args: argparse.Namespace) -> int:
    """The command line: `main`, with a user error or an explained failure (divergence, a full disk, a corrupt
    checkpoint) printed as one line on stderr and exit code 2; unexpected errors keep their traceback."""
    try:
        return main(args)
    except (ValueError, TrainingError) as error:
        return user_error(error)


if __name__ == "__main__":
    raise SystemExit(run(COMMAND_LINE))
