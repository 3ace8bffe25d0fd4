"""Server-side batching as TF Serving's ``--enable_batching`` does it: concurrent requests for one signature are
merged into one call (up to ``max_batch_size`` images, waiting at most ``batch_timeout_micros`` for more), the
merged batch is padded to the next of the ``allowed_batch_sizes`` by repeating its first row, and each request
gets its own rows back. A request of more than ``max_batch_size`` images runs alone.

Example:
    >>> params = batching_parameters("max_batch_size { value: 8 }\\nallowed_batch_sizes: 4\\nallowed_batch_sizes: 8")
    >>> params["max_batch_size"], params["allowed_batch_sizes"]
    (8, [4, 8])
"""
from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

DEFAULTS = {"max_batch_size": 64, "batch_timeout_micros": 2000, "allowed_batch_sizes": []}


def batching_parameters(text: str) -> dict:
    """The fields of a ``batching_parameters.txt`` (TF Serving's ``BatchingParameters`` text format) that the
    stand-in uses; the others (threads, queue length) are read by TF Serving only.

    Example:
        >>> batching_parameters("batch_timeout_micros { value: 500 }")["batch_timeout_micros"]
        500
    """
    params = dict(DEFAULTS, allowed_batch_sizes=[])
    for key in ("max_batch_size", "batch_timeout_micros"):
        m = re.search(rf"\b{key}\s*{{\s*value\s*:\s*(\d+)\s*}}", text)
        if m:
            params[key] = int(m.group(1))
    params["allowed_batch_sizes"] = [int(v) for v in re.findall(r"\ballowed_batch_sizes\s*:\s*(\d+)", text)]
    return params


@dataclass
class _Request:
    inputs: dict
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict | None = None
    error: BaseException | None = None


class Batcher:
    """Merges concurrent calls of ``run(key, inputs) -> outputs`` that share a ``key`` (model, version,
    signature); ``batches`` records the size of each merged call and how many requests it held.

    Example:
        >>> batcher = Batcher(lambda key, x: {"y": x["x"] * 2}, max_batch_size=8, batch_timeout_micros=1000)
        >>> batcher("double", {"x": np.array([1, 2])})["y"].tolist()
        [2, 4]
    """

    def __init__(self, run, max_batch_size: int = 64, batch_timeout_micros: int = 2000, allowed_batch_sizes=()):
        self.run, self.max_batch_size = run, int(max_batch_size)
        self.timeout = batch_timeout_micros / 1e6
        self.allowed = sorted(allowed_batch_sizes)
        self.batches: list[tuple[int, int]] = []  # (rows run, requests merged)
        self._queues, self._lock = {}, threading.Lock()

    def __call__(self, key, inputs: dict) -> dict:
        rows = {len(v) for v in inputs.values()}
        if len(rows) != 1 or rows.pop() > self.max_batch_size:  # inconsistent (the model says why) or too large
            return self.run(key, inputs)
        request = _Request(inputs, len(next(iter(inputs.values()))))
        with self._lock:
            if key not in self._queues:
                self._queues[key] = queue.Queue()
                threading.Thread(target=self._serve, args=(key,), daemon=True).start()
            self._queues[key].put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outputs

    def _serve(self, key):
        pending, carry = self._queues[key], None
        while True:
            batch = [carry or pending.get()]
            carry, rows, deadline = None, batch[0].rows, time.monotonic() + self.timeout
            while rows < self.max_batch_size:
                try:
                    item = pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if rows + item.rows > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._run(key, batch, rows)

    def _run(self, key, batch: list[_Request], rows: int):
        size = next((s for s in self.allowed if s >= rows), rows)
        merged = {}
        for name in batch[0].inputs:
            x = np.concatenate([np.asarray(r.inputs[name]) for r in batch])
            merged[name] = np.concatenate([x, np.repeat(x[:1], size - rows, axis=0)]) if size > rows else x
        self.batches.append((size, len(batch)))
        try:
            outputs = self.run(key, merged)
        except BaseException as e:  # noqa: BLE001 - every request of the batch gets the batch's error
            for r in batch:
                r.error = e
                r.done.set()
            return
        start = 0
        for r in batch:
            r.outputs = {k: v[start:start + r.rows] for k, v in outputs.items()}
            start += r.rows
            r.done.set()
