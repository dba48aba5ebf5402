"""Fine-tuning: sequence classification, token classification, contrastive sentence embeddings.

``finetune(task, model_dir, train, out, eval=None, **options)`` is what ``mmbert finetune``
calls; each task module also has its own typed entry point (``finetune_sequence``,
``finetune_token``, ``finetune_embedding``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbert.errors import MmbertError

TASKS = ("sequence", "token", "embedding")


def finetune(task: str, model_dir: str | Path, train: str | Path, out: str | Path,
             eval: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Dispatch to the task's fine-tuning function; options are its keyword arguments."""
    if task == "sequence":
        from mmbert.tasks.sequence import finetune_sequence as fn
    elif task == "token":
        from mmbert.tasks.token import finetune_token as fn
    elif task == "embedding":
        from mmbert.tasks.embedding import finetune_embedding as fn
    else:
        raise MmbertError(f"--task {task!r}: expected one of {list(TASKS)}")
    if task != "token":
        options.pop("label_column", None)
    if task != "embedding":
        options.pop("temperature", None)
    return fn(model_dir, train, out, eval, **options)
