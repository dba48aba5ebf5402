"""Pre-training: phased recipes, schedules, StableAdamW, checkpoints, DDP/FSDP2.

``pretrain(recipe, out_dir, resume=False, variant=None) -> RunResult`` is the entry point;
``export(checkpoint, out)`` writes an HF directory from a training checkpoint.
"""

from mmbert.train.trainer import PhaseResult, RunResult, export, load_run_recipe, pretrain

__all__ = ["PhaseResult", "RunResult", "export", "load_run_recipe", "pretrain"]
