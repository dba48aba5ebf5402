"""Fine-tuning: sequence classification, token classification, contrastive sentence embeddings.

``finetune(task, model_dir, train, out, eval=None, **options)`` is what ``mmbert finetune``
calls; each task module also has its own typed entry point (``finetune_sequence``,
``finetune_token``, ``finetune_embedding``) whose keyword defaults are the task's defaults.
Each builds its task object and hands it to the one runner (:mod:`mmbert.tasks.runner`);
``score_file`` (``mmbert eval --data``) scores a fine-tuned classifier through the same objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbert.errors import MmbertError

TASKS = ("sequence", "token", "embedding")


def task_function(task: str):
    """The fine-tuning function of ``task`` (its keyword defaults are the CLI's defaults)."""
    if task == "sequence":
        from mmbert.tasks.sequence import finetune_sequence as fn
    elif task == "token":
        from mmbert.tasks.token import finetune_token as fn
    elif task == "embedding":
        from mmbert.tasks.embedding import finetune_embedding as fn
    else:
        raise MmbertError(f"--task {task!r}: expected one of {list(TASKS)}")
    return fn


def finetune(task: str, model_dir: str | Path, train: str | Path, out: str | Path,
             eval: str | Path | None = None, *, overwrite: bool = False,
             **options: Any) -> dict[str, Any]:
    """Dispatch to the task's fine-tuning function; options are its keyword arguments (an
    option the task does not take, such as ``temperature`` for classification, is refused).
    ``out`` is an output directory (:class:`mmbert.outputs.OutputDir`)."""
    import inspect

    fn = task_function(task)
    known = inspect.signature(fn).parameters
    for k in options:
        if k not in known:
            raise MmbertError(f"--{k.replace('_', '-')}: not an option of the {task} task; "
                              f"expected one of its options")
    if overwrite:  # passed on only when given, like the options
        options = {**options, "overwrite": True}
    return fn(model_dir, train, out, eval, **options)


def score_file(task: str, model_dir: str | Path, path: str | Path, *,
               max_length: int | None = None, label_column: str = "upos") -> dict[str, float]:
    """Score a fine-tuned ``sequence`` or ``token`` classifier on a labelled file
    (``label_column``: the CoNLL-U column of a token task)."""
    if task == "sequence":
        from mmbert.tasks.sequence import SequenceTask

        return SequenceTask().score(model_dir, path, max_length=max_length)
    if task == "token":
        from mmbert.tasks.token import TokenTask

        return TokenTask(label_column).score(model_dir, path, max_length=max_length)
    raise MmbertError(f"--task {task!r}: expected sequence or token (a classifier)")
