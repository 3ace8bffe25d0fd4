"""Analysis: evaluation per source and task, saliency maps per head, and plots.

Example:
    >>> from kfacemtl.analysis import headline_metric
    >>> from kfacemtl.tasks import get_task
    >>> headline_metric(get_task("age"))
    'mae'
"""
from kfacemtl.analysis.evaluation import (compare_results, evaluate_sources, format_table, headline_metric,
                                          task_metrics, to_json)

__all__ = ["compare_results", "evaluate_sources", "format_table", "headline_metric", "task_metrics", "to_json"]
