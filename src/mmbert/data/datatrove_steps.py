"""The two datatrove pipeline steps of ``mmbert data prepare --executor ...`` (see
:mod:`mmbert.data.executors`). This module imports datatrove: import it only once the ``scale``
extra is known to be installed (:func:`mmbert.data.executors.require`)."""

from __future__ import annotations

from typing import Any, Iterator

from datatrove.pipeline.base import PipelineStep

from mmbert.data.shards import Manifest
from mmbert.data.units import UnitPlan, merge_rank, tokenize_unit, write_manifest


class TokenizeUnits(PipelineStep):
    """datatrove step: tokenise task ``rank``'s units into part files."""

    name = "mmbert tokenize"
    type = "Tokenizer"

    def __init__(self, plan: UnitPlan) -> None:
        super().__init__()
        self.plan = plan

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        for unit in self.plan.units_of(rank):
            with self.track_time("unit"):
                part = tokenize_unit(self.plan, unit)
            self.stat_update("units")
            self.stat_update("documents", value=sum(sp.documents for sp in part.splits.values()))
            self.stat_update("tokens", value=part.tokens)
            self.stat_update("input_bytes", value=unit.size, unit="unit")
        yield from ()


class MergeShards(PipelineStep):
    """datatrove step: merge task ``rank``'s languages from their parts into shards."""

    name = "mmbert merge"
    type = "Writer"

    def __init__(self, plan: UnitPlan) -> None:
        super().__init__()
        self.plan = plan

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        for entry in merge_rank(self.plan, rank):
            self.stat_update("languages")
            self.stat_update("tokens", value=entry.tokens)
            self.stat_update("replacements", value=entry.replacements)
        yield from ()


class WriteManifest(PipelineStep):
    """datatrove step (one task): ``manifest.json`` from the merged languages."""

    name = "mmbert manifest"
    type = "Writer"

    def __init__(self, plan: UnitPlan, manifest: Manifest) -> None:
        super().__init__()
        self.plan, self.manifest = plan, manifest

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        m = write_manifest(self.plan, self.manifest)
        self.stat_update("languages", value=len(m.languages))
        yield from ()
