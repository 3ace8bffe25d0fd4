"""Where training runs: ``tf.distribute`` strategies, mixed precision and XLA.

``training.strategy`` in a config (or ``train_run``'s config in Python) picks one of
:data:`STRATEGIES`:

- ``default``: one device (the first GPU if there is one, else the CPU).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the GPUs of one host (or the devices in
  ``training.strategy_devices``); each batch is split between the devices, gradients are summed.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across hosts, each running the same
  command; the cluster and this host's place in it come from the ``TF_CONFIG`` environment variable
  (:func:`tf_config`). Each worker reads all the data and keeps its share of every batch
  (``AutoShardPolicy.DATA``). Only the chief (``chief`` 0, or ``worker`` 0 when there is no chief)
  writes the run directory; the other workers run in a scratch folder of their own
  (:func:`worker_dir`, kept after the run), so a second worker never clobbers the chief's files, and a
  restarted worker resumes from its own last epoch.

Masked losses are scaled per replica so that the summed gradients are those of the global batch
(:func:`~kfacemtl.models.MaskedTaskLoss`), and task weighting, distribution matching, callbacks,
checkpoints and ``--resume`` run unchanged under every strategy.

``model.mixed_precision: true`` computes in float16 (keeping float32 weights, outputs and
losses, with loss scaling); it pays on GPUs with tensor cores and is slower on CPUs.
``training.jit_compile`` compiles the train step with XLA: ``auto`` (the default) where a GPU is and the
strategy is ``default`` (4.6× faster steps on an H100 at batch 64), not on a CPU (0.57-1.11× on 2-core CPUs,
after about 10 s of compiling per run) nor under ``mirrored``/``multi_worker``; ``true`` or ``false`` force it (see
``benchmarks/throughput.py``).

Example:
    >>> strategy = make_strategy("default")
    >>> strategy.num_replicas_in_sync, is_chief(strategy)
    (1, True)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import keras
import tensorflow as tf

from kfacemtl.errors import ConfigError, expect_one_of

STRATEGIES = ("default", "mirrored", "multi_worker")


def tf_config() -> dict | None:
    """The parsed ``TF_CONFIG`` environment variable (None when unset or empty).

    Raises:
        ConfigError: ``TF_CONFIG`` is not JSON with a ``cluster`` mapping and a ``task`` {type, index}.

    Example:
        >>> os.environ["TF_CONFIG"] = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
        >>> tf_config()["task"]
        {'type': 'worker', 'index': 1}
        >>> del os.environ["TF_CONFIG"]
        >>> tf_config() is None
        True
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError("TF_CONFIG", f"not valid JSON ({e.msg} at character {e.pos})") from None
    cluster, task = cfg.get("cluster") if isinstance(cfg, dict) else None, cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError("TF_CONFIG.cluster", 'expected {"worker": ["host:port", ...]} (optionally a "chief" list)')
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ConfigError("TF_CONFIG.task", f"expected {{\"type\": one of {sorted(cluster)}, \"index\": a position "
                                            f"in that list}}, got {task!r}")
    return cfg


def make_strategy(name: str = "default", devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``training.strategy``.

    Args:
        name: one of :data:`STRATEGIES`.
        devices: ``mirrored`` only: the devices to mirror over (default: every GPU, or the CPU).

    Create it before anything else runs in TensorFlow: ``multi_worker`` starts this host's gRPC
    server and must configure the runtime first. A process gets one strategy per setting (the same
    object on every call).

    Example:
        >>> make_strategy("default").num_replicas_in_sync
        1
    """
    expect_one_of("name", name, STRATEGIES)
    if devices is not None and name != "mirrored":
        raise ValueError(f"devices: only the mirrored strategy takes devices, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, tuple(_device_name(d) for d in devices) if devices is not None else None)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _new_strategy(name, devices)
    return _STRATEGIES[key]


# One strategy per setting and process: two strategies over the same devices would reuse each other's
# collective-op keys (TensorFlow then mixes up their all-reduces), and a process can start one gRPC server.
_STRATEGIES: dict = {}


def _new_strategy(name, devices):
    if name == "mirrored":
        if devices is not None:
            known = {_device_name(d.name) for d in tf.config.list_logical_devices()}
            missing = [d for d in devices if _device_name(d) not in known]
            if missing or not devices:
                raise ValueError(f"devices: {missing or 'an empty list'}: not devices of this machine {sorted(known)}")
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices is not None else None)
    tf_config()  # a clear error for a malformed TF_CONFIG before TensorFlow's own
    return tf.distribute.MultiWorkerMirroredStrategy()


def _device_name(device: str) -> str:
    """``/cpu:1``, ``CPU:1``, ``/device:CPU:1``, ``/job:localhost/.../device:CPU:1`` → ``CPU:1``."""
    kind, _, index = device.rstrip("/").split("/")[-1].replace("device:", "").partition(":")
    return f"{kind.upper()}:{index or 0}"


def split_cpu(n: int) -> list[str]:
    """Split the CPU into ``n`` logical devices (to try ``mirrored`` without GPUs); returns their names.

    Must run before TensorFlow initialises its devices (before any tensor is made).

    Example:
        >>> import subprocess, sys                    # in a fresh process: before TensorFlow made any tensor
        >>> code = "from kfacemtl.training.distribute import split_cpu; print(split_cpu(2))"
        >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        "['/cpu:0', '/cpu:1']\\n"
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(n))])
    return [f"/cpu:{i}" for i in range(int(n))]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: always, except a non-chief worker of ``multi_worker``.

    Example:
        >>> is_chief(tf.distribute.get_strategy())   # one process: it writes the run
        True
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:  # no TF_CONFIG: a cluster of one
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_dir(out_dir, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes: ``out_dir`` for the chief; for another worker, a scratch folder named after
    ``out_dir`` and the worker's place (so a restarted worker finds its own last epoch), in the system's
    temporary folder.

    Example:
        >>> worker_dir("runs/a", make_strategy("default"))
        PosixPath('runs/a')
    """
    out_dir = Path(out_dir)
    if is_chief(strategy):
        return out_dir
    r = strategy.cluster_resolver
    key = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"kfacemtl-{r.task_type}{r.task_id}-{key}"


def synchronize_batch_norm(model) -> int:
    """Make the model's batch normalisation use the statistics of the global batch (all replicas); returns how
    many layers it changed. Without it each replica normalises by its own share and updates its own moving
    statistics, so the workers of a multi-worker run would end with different models. Layers of nested models (the
    backbone) count.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
        >>> synchronize_batch_norm(m), m.layers[0].synchronized
        (1, True)
    """
    layers, stack = [], list(model.layers)
    while stack:  # nested models too (the backbone)
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization):
            layers.append(layer)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def distribute_options() -> tf.data.Options:
    """Dataset options for a distributed run: shard by data (each worker keeps its share of every batch).

    Example:
        >>> ds = tf.data.Dataset.range(8).batch(4).with_options(distribute_options())
        >>> ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
        True
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
