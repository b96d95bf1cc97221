"""The state of a training run and what is done with it: optimizer steps, checkpoints and resuming, the divergence
checks that keep anything non-finite from being saved, and the evaluations (sample grids, held-out bits/dim)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ddpm_plus.training.arguments import dataset_description, eval_split, inference_steps
from ddpm_plus.training.checkpoints import (
    EMA_WEIGHTS_FILE,
    TRAINING_STATE_FILE,
    ResumeChoice,
    ema_settings,
    latest_checkpoint,
    load_ema_state,
    load_generators,
    remove_replaced_checkpoints,
    save_checkpoint,
    save_ema_weights,
    save_generators,
)
from ddpm_plus.training.data_order import ShardedBatchSampler, optimizer_step_batches
from ddpm_plus.training.errors import TrainingError
from ddpm_plus.training.evaluation import (
    bpd_record,
    evaluation_pipeline,
    heldout_bound_figure,
    heldout_bpd,
    log_figure,
    log_image,
    sample_grid,
)
from ddpm_plus.training.launch import log_on_main_process
from ddpm_plus.training.resume import changed_settings, check_resumable, run_signature
from ddpm_plus.training.sample_quality import FID_RECORD_FILE, TrainingFid
from ddpm_plus.training.step import StepOutput, TrainingStep, all_finite, set_optimizer_hyperparameters
from ddpm_plus.utils import public_settings, write_json

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from ddpm_plus.bound_estimation import BoundEstimate, PilotTerms
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
    from ddpm_plus.training.run_setup import RunSetup


@dataclass
class Trainer:
    """The objects of a run (built by the training script from its arguments) and the code that trains, saves,
    restores and evaluates them. Messages are logged by the main process only."""

    args: argparse.Namespace
    setup: RunSetup
    accelerator: Accelerator
    unet: UNet2DModel  # the raw network whose parameters the prepared model trains
    step_fn: TrainingStep
    batch_sampler: ShardedBatchSampler
    max_train_steps: int
    # The main process (every process with --eval_fid_every) receives the EMA weights for sampling and bits/dim.
    eval_unet: UNet2DModel | None = None
    fid: TrainingFid | None = None  # with --eval_fid_every
    global_step: int = 0
    skipped_steps: list[dict[str, Any]] = field(default_factory=list)  # {"step", "reason"} of each skipped batch

    @property
    def ema(self) -> EMAModel | None:
        return self.step_fn.ema

    def parameter_names(self) -> list[str]:
        return [name for name, parameter in self.unet.named_parameters() if parameter.requires_grad]

    # ----------------------------------------------------------------------------------------- training

    def remaining_batches(self) -> Iterator[list[torch.Tensor]]:
        """This process's micro-batches of each optimizer step from the current one to the last."""
        batches = optimizer_step_batches(
            self.setup.train_set,
            self.batch_sampler,
            first_step=self.global_step,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
        )
        return itertools.islice(batches, max(0, self.max_train_steps - self.global_step))

    def train_step(self, micro_batches: list[torch.Tensor]) -> StepOutput:
        """One optimizer step on this process's micro-batches; the global step advances even when a non-finite loss
        or gradient made the step change nothing (see `record_nonfinite_step`)."""
        output = self.step_fn(micro_batches)
        self.global_step += 1
        return output

    # ----------------------------------------------------------------------------------------- checkpoints

    def training_state(self) -> dict[str, Any]:
        """The JSON part of a checkpoint: step, data position, schedules, run signature and public settings."""
        epoch, step_in_epoch = divmod(self.global_step, self.batch_sampler.steps_per_epoch)
        state = {
            "global_step": self.global_step,
            "data_position": {"epoch": epoch, "step_in_epoch": step_in_epoch},
            "lr_scheduler": self.step_fn.lr_scheduler.state_dict(),
            "timestep_sampler": self.step_fn.objective.timestep_sampler.state_dict(),
            "run": run_signature(self.args, self.setup, self.accelerator.num_processes),
            "settings": public_settings(self.args),
            "skipped_steps": self.skipped_steps,
        }
        if self.ema is not None:
            state["ema"] = ema_settings(self.ema)
        return state

    def write_extra_state(self, directory: Path) -> None:
        """Our part of a checkpoint: generators (every process), EMA weights and the JSON state (main process)."""
        save_generators(self.step_fn.generators, directory, self.accelerator.process_index)
        if self.accelerator.is_main_process:
            if self.ema is not None:
                save_ema_weights(self.ema, self.parameter_names(), directory / EMA_WEIGHTS_FILE)
            write_json(directory / TRAINING_STATE_FILE, self.training_state())

    def save_checkpoint(self) -> None:
        """Checkpoint the current step (finite weights only), keeping the newest --checkpoints_total_limit."""
        self.check_finite_weights()
        path = save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            self.global_step,
            self.write_extra_state,
            run=run_signature(self.args, self.setup, self.accelerator.num_processes),
            total_limit=self.args.checkpoints_total_limit,
        )
        log_on_main_process(__name__, logging.INFO, f"Saved checkpoint {path}")
        self.remove_replaced_checkpoints(keep=path)

    def remove_replaced_checkpoints(self, keep: Path | None = None) -> None:
        """With --overwrite_output_dir, once this run has written its first checkpoint (`keep`) or its pipeline: the
        earlier run's checkpoints go (main process), so that "latest" never resumes the earlier run."""
        replaced = self.setup.replaced
        if replaced is None or not replaced.checkpoints or not self.accelerator.is_main_process:
            return
        removed = remove_replaced_checkpoints(replaced, keep)
        if removed:
            names = ", ".join(path.name for path in removed)
            log_on_main_process(__name__, logging.INFO, f"Removed the earlier run's checkpoints {names}.")

    def resume(self) -> None:
        """Restore the verified checkpoint chosen in `prepare_run`, if any: weights, optimizer, RNGs, EMA, sampler,
        position; then apply the settings that may change on resume (learning rate, AdamW and EMA settings, ...)."""
        choice = self.setup.resume
        if choice is None:
            if self.args.resume_from_checkpoint is not None:
                log_on_main_process(__name__, logging.INFO, "No checkpoint to resume from: starting a new run.")
            return
        self._log_resume_choice(choice)
        path = choice.path
        state = json.loads((path / TRAINING_STATE_FILE).read_text())
        self._check_resumable(state, path)
        self.accelerator.load_state(str(path))
        self._restore_state(state, path)
        log_on_main_process(__name__, logging.INFO, f"Resumed from {path} at step {self.global_step}.")
        changed = changed_settings(state, self.args)
        if changed:
            message = f"Changed settings, applied from step {self.global_step} on: {'; '.join(changed)}."
            log_on_main_process(__name__, logging.INFO, message)

    def _restore_state(self, state: dict[str, Any], path: Path) -> None:
        """Our part of a checkpoint, with this run's learning rate, AdamW and EMA decay settings."""
        args = self.args
        lr_scheduler = self.step_fn.lr_scheduler
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        set_optimizer_hyperparameters(
            self.step_fn.optimizer,
            lr_scheduler,
            learning_rate=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        self.step_fn.objective.timestep_sampler.load_state_dict(state["timestep_sampler"])
        if self.ema is not None:
            # The checkpoint's step count, with the decay settings of this run.
            decay = {"decay": args.ema_max_decay, "inv_gamma": args.ema_inv_gamma, "power": args.ema_power}
            load_ema_state(self.ema, self.parameter_names(), path / EMA_WEIGHTS_FILE, {**state["ema"], **decay})
        load_generators(self.step_fn.generators, path, self.accelerator.process_index)
        self.global_step = state["global_step"]
        self.skipped_steps = state.get("skipped_steps", [])

    def _log_resume_choice(self, choice: ResumeChoice) -> None:
        for path, reason in choice.rejected:
            log_on_main_process(__name__, logging.WARNING, f"Not resuming from {path}: {reason}")
        if not choice.verified:
            log_on_main_process(
                __name__,
                logging.WARNING,
                f"{choice.path} has no manifest (written by an earlier version): its files parse, but their "
                "integrity cannot be verified.",
            )

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        current = run_signature(self.args, self.setup, self.accelerator.num_processes)
        unrecorded = check_resumable(path, state, current, self.args.mixed_precision)
        if unrecorded:
            message = f"{path} does not record {', '.join(unrecorded)} (an earlier version): not checked."
            log_on_main_process(__name__, logging.WARNING, message)

    # ----------------------------------------------------------------------------------------- divergence

    def check_finite_weights(self) -> None:
        """TrainingError unless the weights (and their EMA) are finite on every process: nothing non-finite is saved."""
        tensors = [*self.unet.parameters(), *(self.ema.shadow_params if self.ema is not None else ())]
        bad = torch.tensor(float(not all_finite(tensors)), device=self.accelerator.device)
        if self.accelerator.reduce(bad, "sum").item():
            raise TrainingError(self.divergence_message("the weights are not finite"))

    def record_nonfinite_step(self, part: str) -> None:
        """After a step whose `part` ("loss", "gradient") was not finite, and which therefore changed nothing: log
        it as skipped while --skip_nonfinite_steps allows, else stop with a TrainingError."""
        self.skipped_steps.append({"step": self.global_step, "reason": f"non-finite {part}"})
        allowed = self.args.skip_nonfinite_steps
        if len(self.skipped_steps) > allowed:
            what = f"the {part} is not finite"
            if allowed:
                what += f" ({len(self.skipped_steps)} bad batches, more than --skip_nonfinite_steps {allowed})"
            raise TrainingError(self.divergence_message(what))
        log_on_main_process(
            __name__,
            logging.WARNING,
            f"step {self.global_step}: the {part} is not finite; skipped the batch without an update "
            f"({len(self.skipped_steps)} of at most {allowed}, --skip_nonfinite_steps).",
        )

    def divergence_message(self, what: str) -> str:
        """One line: the step, what is not finite, the likely causes and the checkpoint to resume from."""
        args = self.args
        causes = [f"a learning rate too high (--learning_rate {args.learning_rate:g})"]
        if args.max_grad_norm == 0:
            causes.append("no gradient clipping (--max_grad_norm 0)")
        if args.mixed_precision == "fp16":
            causes.append("fp16 overflow (try --mixed_precision bf16 or no)")
        causes.append("bad data (NaN or infinite pixels)")
        latest = latest_checkpoint(args.output_dir)
        resume = (
            f"the last checkpoint, {latest}, is finite: change the settings and resume with "
            f"--resume_from_checkpoint {latest}"
            if latest is not None
            else "there is no checkpoint to resume from"
        )
        return (
            f"Training diverged at step {self.global_step}: {what}. Likely causes: {'; '.join(causes)}. No checkpoint "
            f"or pipeline was written from it; {resume}, or skip up to N bad batches with --skip_nonfinite_steps N."
        )

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluation_unet(self) -> UNet2DModel:
        """The float32 evaluation network, loaded with the EMA weights (or the raw weights without EMA)."""
        if self.ema is not None:
            self.ema.copy_to(self.eval_unet.parameters())
        else:
            self.eval_unet.load_state_dict(self.unet.state_dict())
        return self.eval_unet

    def pipeline(self, unet: UNet2DModel) -> DDPMPlusPipeline:
        """The pipeline of `unet` with the training scheduler's config."""
        return evaluation_pipeline(unet, self.setup.noise_scheduler)

    def evaluate(self, *, images: bool, bpd: bool, fid: bool = False, final: bool = False) -> dict[str, Any]:
        """Sample grid and/or held-out bits/dim (with its figure, logged to TensorBoard) on the main process, and the
        FID (with --eval_fid_every) on all processes; the others wait. The results ("grid": the grid's path, "bpd":
        the bits/dim record, "bound_figure": the figure's path or None, "fid": the FID record) are the final outputs
        `samples.png`, `bpd.json`, `bound.png` and `fid.json` with `final`."""
        results: dict[str, Any] = {}
        if self.accelerator.is_main_process and (images or (bpd and self.setup.eval_images is not None)):
            unet = self.evaluation_unet()
            if images:
                results["grid"] = self._save_grid(self._sample_grid(unet), final)
            if bpd and self.setup.eval_images is not None:
                estimate, pilot = self._heldout_bpd(unet)
                results["bpd"] = self._record_bpd(estimate, final)
                results["bound_figure"] = self._log_bound_figure(estimate, pilot, final)
        if fid and self.fid is not None:
            results["fid"] = self._record_fid(self.fid(self.pipeline(self.evaluation_unet())), final)
        self.accelerator.wait_for_everyone()
        return results

    def _sample_grid(self, unet: UNet2DModel) -> Image.Image:
        args = self.args
        steps = inference_steps(args)
        log_on_main_process(
            __name__,
            logging.INFO,
            f"step {self.global_step}: sampling the grid ({args.num_grid_images} images, {steps} steps)",
        )
        return sample_grid(
            evaluation_pipeline(unet, self.setup.noise_scheduler, progress=f"step {self.global_step}: sample grid"),
            num_images=args.num_grid_images,
            num_inference_steps=steps,
            seed=args.seed,
            device=self.accelerator.device,
        )

    def _heldout_bpd(self, unet: UNet2DModel) -> tuple[BoundEstimate, PilotTerms]:
        args = self.args
        log_on_main_process(
            __name__,
            logging.INFO,
            f"step {self.global_step}: held-out bits/dim of {len(self.setup.eval_images)} images",
        )
        return heldout_bpd(
            unet,
            self.setup.eval_images.to(self.accelerator.device),
            self.setup.noise_scheduler,
            num_strata=args.bpd_strata,
            samples_per_stratum=args.bpd_samples_per_stratum,
            max_batch_size=args.eval_batch_size,
            seed=args.seed,
            progress=True,
        )

    def _save_grid(self, grid: Image.Image, final: bool) -> Path:
        output_dir = Path(self.args.output_dir)
        path = output_dir / "samples.png" if final else output_dir / "samples" / f"step-{self.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        log_image(self.accelerator, "samples", grid, self.global_step)
        return path

    def _log_bound_figure(self, estimate: BoundEstimate, pilot: PilotTerms, final: bool) -> Path | None:
        """Log the figure of the held-out bound to TensorBoard; the final one is also written as `bound.png`."""
        output_dir = Path(self.args.output_dir)
        figure = heldout_bound_figure(estimate, pilot, run_name=output_dir.absolute().name, step=self.global_step)
        log_figure(self.accelerator, "bound", figure, self.global_step)
        if not final:
            return None
        path = output_dir / "bound.png"
        figure.savefig(path)
        return path

    def _record_bpd(self, estimate: BoundEstimate, final: bool) -> dict[str, Any]:
        record = bpd_record(
            estimate,
            step=self.global_step,
            split=eval_split(self.args),
            weights="ema" if self.ema is not None else "raw",
            num_strata=self.args.bpd_strata,
            samples_per_stratum=self.args.bpd_samples_per_stratum,
        )
        self.accelerator.log(
            {"bpd/heldout": record["bits_per_dim"], "bpd/standard_error": record["standard_error"]},
            step=self.global_step,
        )
        log_on_main_process(
            __name__,
            logging.INFO,
            f"step {self.global_step}: held-out {record['bits_per_dim']:.4f} ± {record['standard_error']:.4f} bits/dim",
        )
        if final:
            write_json(Path(self.args.output_dir) / "bpd.json", record)
        return record

    def _record_fid(self, fid: float, final: bool) -> dict[str, Any]:
        """Log the FID of this step (TensorBoard `fid/training_data`, a log line); the final one goes to `fid.json`."""
        dataset_name = dataset_description(self.args, self.setup.resolution)
        record = self.fid.record(fid, step=self.global_step, dataset_name=dataset_name)
        self.accelerator.log({"fid/training_data": fid}, step=self.global_step)
        log_on_main_process(
            __name__,
            logging.INFO,
            f"step {self.global_step}: FID {fid:.4f} ({record['num_samples']} samples of "
            f"{record['num_inference_steps']} steps against {record['num_reference_images']} training images)",
        )
        if final and self.accelerator.is_main_process:
            write_json(Path(self.args.output_dir) / FID_RECORD_FILE, record)
        return record


class RunningLog:
    """Loss, gradient norm and throughput since the last log line, kept on the device until logged."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.trainer.accelerator.device)
        self.steps = 0
        self.grad_norm: torch.Tensor | None = None
        self.started = time.perf_counter()

    def add(self, output: StepOutput) -> None:
        """Count a step that updated the weights (skipped steps are logged as such, not averaged)."""
        self.loss_sum += output.loss
        self.steps += 1
        self.grad_norm = output.grad_norm

    def flush(self, progress: tqdm) -> None:
        """Log the averages over all processes of the steps since the last line (skipped steps excluded)."""
        trainer = self.trainer
        if self.steps == 0:  # every step since the last line was skipped (and logged as such)
            return
        loss = (trainer.accelerator.reduce(self.loss_sum, "mean") / self.steps).item()
        elapsed = time.perf_counter() - self.started
        values = {
            "train/loss": loss,
            "train/lr": trainer.step_fn.lr_scheduler.get_last_lr()[0],
            "train/images_per_second": self.steps * trainer.batch_sampler.images_per_step / elapsed,
            "train/epoch": trainer.global_step / trainer.batch_sampler.steps_per_epoch,
        }
        if self.grad_norm is not None:
            values["train/grad_norm"] = float(self.grad_norm)
        trainer.accelerator.log(values, step=trainer.global_step)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{values['train/lr']:.2e}")
        self.reset()
