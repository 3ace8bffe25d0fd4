"""Analysis: evaluation per source and task, saliency maps per head, photos to answers (:func:`analyze`), plots.

Example:
    >>> from kfacemtl.analysis import headline_metric
    >>> from kfacemtl.tasks import get_task
    >>> headline_metric(get_task("age"))
    'mae'
"""
from kfacemtl.analysis.evaluation import (compare_results, evaluate_sources, format_table, headline_metric,
                                          task_metrics, to_json)
from kfacemtl.analysis.photos import analyze, photo_paths, write_records

__all__ = ["compare_results", "evaluate_sources", "format_table", "headline_metric", "task_metrics", "to_json",
           "analyze", "photo_paths", "write_records"]
