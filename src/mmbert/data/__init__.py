"""The multilingual corpus pipeline: sources -> shards -> sampler -> packer -> masker -> loader.

Submodules (import them directly; this package imports nothing heavy):
``langcodes`` (ISO 639-3 + script codes), ``sources`` (text/JSONL/parquet/UDHR/gettext),
``demo`` (the demo corpus), ``shards`` (token shards + manifest), ``sampler`` (tau sampling,
epochs), ``packing`` (rows + cu_seqlens), ``masking`` (80/10/10), ``loader`` (``MLMLoader``).
"""
