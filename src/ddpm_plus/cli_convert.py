"""`ddpm-plus convert`: an improved-/guided-diffusion checkpoint as a DDPM+ pipeline folder (see ddpm_plus.convert)."""

import argparse
import sys

from ddpm_plus.convert import convert_checkpoint, save_conversion


def run(args: argparse.Namespace) -> int:
    conversion = convert_checkpoint(args.checkpoint, args.flags, args.source)
    for note in conversion.notes:
        print(f"ddpm-plus convert: note: {note}", file=sys.stderr)
    try:
        save_conversion(conversion, args.out)
    except OSError as error:
        raise ValueError(f"could not write --out {args.out} ({error}); it is as it was before.") from None
    config = conversion.pipeline.scheduler.config
    print(
        f"wrote {args.out}: {conversion.model.source} model, T = {config.num_train_timesteps}, "
        f"{config.beta_schedule} betas, {config.prediction_type} prediction, {config.variance_type} variance "
        f"(checkpoint sha256 {conversion.checkpoint_sha256[:12]})"
    )
    return 0
