"""The default embedder, fast: the bundled model's own weights exported to ONNX once (from its
safetensors, by torch, offline) and run by onnxruntime with the model's own tokenizer.

The export is cached in the data directory under a name that includes a hash of the
weights, so a new model version exports again; concurrent first starts export once (a file
lock). Mean pooling and L2 normalisation are part of the exported graph: the output is
what sentence-transformers would give (tests compare the two).

Queries may run on a second export beside it, its weights dynamically quantised to 8 bits
(`query_encoder: int8`): 1.8x faster per query on this machine's CPU, its vectors within
cosine 0.97 of the full model's, and LoCoMo dev recall@10 within 0.001 (docs/benchmarks.md).
Memories are always embedded by the full model.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from somafractalmemory.embedding.base import Vectors, normalise
from somafractalmemory.embedding.catalog import BUNDLED_MODEL, locked, model_directory, sha256_of

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def weights_digest(model_dir: Path) -> str:
    return sha256_of(model_dir / "model.safetensors")[:16]


def export(model_dir: Path, target: Path) -> None:
    """Write the model (with mean pooling and normalisation) as ONNX to `target`."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    # BERT-like models take segment ids; MPNet's forward has none.
    inputs = [n for n in INPUTS if n in inspect.signature(model.forward).parameters]

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *feeds: Any) -> Any:
            named = dict(zip(inputs, feeds, strict=True))
            out = self.model(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    sample = torch.ones((2, 8), dtype=torch.int64)
    mask = sample.clone()
    mask[1, 5:] = 0  # a padded row: the trace must take the masking path
    samples = {"input_ids": sample, "attention_mask": mask, "token_type_ids": sample * 0}
    partial = target.with_suffix(".partial")
    axes = {name: {0: "batch", 1: "tokens"} for name in inputs}
    with warnings.catch_warnings():
        # The TorchScript exporter (deprecated in favour of torch.export, which needs
        # onnxscript besides) warns about tracing in general terms; that the graph gives
        # the torch model's vectors, padded batches included, is what the tests check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(),
            tuple(samples[n] for n in inputs),
            str(partial),
            input_names=inputs,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(partial, target)


def quantize(source: Path, target: Path) -> None:
    """Write `source` with its weights quantised to int8 (dynamic: activations stay float)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = target.with_suffix(".partial")
    quantizer = logging.getLogger()  # it advises pre-processing on the root logger
    level = quantizer.level
    quantizer.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(partial), weight_type=QuantType.QInt8)
    finally:
        quantizer.setLevel(level)
    os.replace(partial, target)


class OnnxEmbedder:
    """The bundled model on onnxruntime (CPU), loaded once per process, thread-safe."""

    def __init__(
        self,
        model: str = BUNDLED_MODEL,
        *,
        cache_dir: Path,
        batch_size: int = 64,
        threads: int = 0,
        int8_queries: bool = False,
    ) -> None:
        self.name = model
        self.int8_queries = int8_queries
        self._queries: Any = None
        self._cache_dir = cache_dir
        self._inputs: tuple[str, ...] = ()
        self._batch_size = batch_size
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._dim = 0
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime
                from tokenizers import Tokenizer

                model_dir = model_directory(self.name, self._cache_dir)
                target = (
                    self._cache_dir / f"{Path(self.name).name}-{weights_digest(model_dir)}.onnx"
                )
                quantized = target.with_suffix(".int8.onnx")
                with locked(self._cache_dir / ".export.lock"):
                    if not target.is_file():
                        export(model_dir, target)
                    if self.int8_queries and not quantized.is_file():
                        quantize(target, quantized)
                options = onnxruntime.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                self._session = onnxruntime.InferenceSession(
                    str(target), options, providers=["CPUExecutionProvider"]
                )
                self._queries = self._session
                if self.int8_queries:
                    self._queries = onnxruntime.InferenceSession(
                        str(quantized), options, providers=["CPUExecutionProvider"]
                    )
                config = json.loads((model_dir / "sentence_bert_config.json").read_text())
                tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
                tokenizer.enable_truncation(max_length=int(config.get("max_seq_length", 256)))
                # The tokenizer's own pad token (MPNet's is `<pad>`, id 1), to the longest.
                pad = tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]"}
                tokenizer.enable_padding(pad_id=pad["pad_id"], pad_token=pad["pad_token"])
                self._inputs = tuple(i.name for i in self._session.get_inputs())
                self._tokenizer = tokenizer
                self._dim = int(self._run(["dimension"]).shape[1])
            return self._session

    def _run(self, texts: Sequence[str], session: Any = None) -> Vectors:
        encoded = self._tokenizer.encode_batch(list(texts))
        columns = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        feeds = {name: np.array(columns[name], dtype=np.int64) for name in self._inputs}
        run = (session or self._session).run
        return np.asarray(run(None, feeds)[0], dtype=np.float32)

    @property
    def dim(self) -> int:
        self._load()
        return self._dim

    @property
    def query_name(self) -> str:
        return f"{self.name}+int8" if self.int8_queries else self.name

    def embed(self, texts: Sequence[str]) -> Vectors:
        self._load()
        return self._embed(texts, self._session)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        self._load()
        return self._embed(texts, self._queries)

    def _embed(self, texts: Sequence[str], session: Any) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        # Similar lengths batched together: less padding to compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            picked = order[start : start + self._batch_size]
            out[picked] = self._run([texts[i] for i in picked], session)
        return normalise(out)
