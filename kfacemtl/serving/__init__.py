"""Serving: versioned SavedModels for TF Serving, the clients that call them, and a local stand-in server.

Example:
    >>> from kfacemtl.serving import next_version
    >>> next_version("saved_models/none-yet")
    1
"""
from kfacemtl.serving.client import (Client, InvalidInputError, LocalPredictor, ModelNotFoundError,
                                     ServerUnavailableError, ServingError, format_results)
from kfacemtl.serving.export import ExportError, export_model, list_versions, next_version
from kfacemtl.models.answers import output_names
from kfacemtl.serving.signatures import check_images, decode_batch, serving_functions

__all__ = ["Client", "InvalidInputError", "LocalPredictor", "ModelNotFoundError", "ServerUnavailableError",
           "ServingError", "format_results", "ExportError", "export_model", "list_versions", "next_version",
           "check_images", "decode_batch", "output_names", "serving_functions"]
