"""The ``ts.*`` import shim: TorchServe's usual imports resolve to inferd's classes when it is not installed."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from typing import Any

from inferd.runtimes.ts_context import Context, _RequestProcessor, send_intermediate_predict_response


def _timed(function: Any) -> Any:
    """``ts.handler_utils.timer.timed``: TorchServe records the step's time; inferd measures every
    call itself, so the step runs as it is."""
    return function


def install_torchserve_shim() -> None:
    """Make ``from ts.torch_handler.base_handler import BaseHandler`` (and the other usual imports)
    resolve to inferd's classes when TorchServe itself is not installed."""
    if "ts" in sys.modules:
        return  # installed already, or TorchServe itself is imported: use it
    if importlib.util.find_spec("ts") is not None:
        try:
            import ts.torch_handler.base_handler  # noqa: F401 - TorchServe is here: use it
            return
        except ImportError:
            pass
    from inferd.runtimes import builtin_handlers, ts_envelopes, ts_metrics, ts_text

    b, e, m = builtin_handlers, ts_envelopes, ts_metrics
    modules: dict[str, dict[str, Any]] = {
        "ts": {}, "ts.torch_handler": {},
        "ts.torch_handler.base_handler": {"BaseHandler": b.BaseHandler},
        "ts.torch_handler.vision_handler": {"VisionHandler": b.VisionHandler},
        "ts.torch_handler.image_classifier": {"ImageClassifier": b.ImageClassifier, "VisionHandler": b.VisionHandler},
        "ts.torch_handler.object_detector": {"ObjectDetector": b.ObjectDetector},
        "ts.torch_handler.image_segmenter": {"ImageSegmenter": b.ImageSegmenter},
        "ts.torch_handler.text_classifier": {"TextClassifier": ts_text.TextClassifier},
        "ts.torch_handler.request_envelope": {},
        "ts.torch_handler.request_envelope.base": {"BaseEnvelope": e.Envelope},
        "ts.torch_handler.request_envelope.body": {"BodyEnvelope": e.BodyEnvelope},
        "ts.torch_handler.request_envelope.json": {"JSONEnvelope": e.JSONEnvelope},
        "ts.torch_handler.request_envelope.kserve": {"KServeEnvelope": e.KServeEnvelope},
        "ts.torch_handler.request_envelope.kservev2": {"KServev2Envelope": e.KServeV2Envelope},
        "ts.handler_utils.text_utils": {"ngrams_iterator": ts_text.ngrams,
                                        "get_tokenizer": lambda name="basic_english": ts_text.basic_english},
        "ts.context": {"Context": Context, "RequestProcessor": _RequestProcessor},
        "ts.utils": {}, "ts.utils.util": {
            "map_class_to_label": b.map_class_to_label, "load_label_mapping": b.load_label_mapping,
            "list_classes_from_module": b.list_classes_from_module, "get_yaml_config": b.get_yaml_config,
            "PredictionException": b.PredictionException,
            "CLEANUP_REGEX": re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")},
        "ts.handler_utils": {}, "ts.handler_utils.timer": {"timed": _timed},
        "ts.handler_utils.utils": {"send_intermediate_predict_response": send_intermediate_predict_response},
        "ts.metrics": {}, "ts.metrics.dimension": {"Dimension": m.Dimension},
        "ts.metrics.metric_type_enum": {"MetricTypes": m.MetricTypes},
        "ts.metrics.caching_metric": {"CachingMetric": m.CachingMetric},
        "ts.metrics.metric_cache_yaml_impl": {"MetricsCacheYamlImpl": m.MetricsCache},
        "ts.metrics.metric_cache_errors": {"MetricsCacheKeyError": m.MetricsCacheKeyError,
                                           "MetricsCacheTypeError": m.MetricsCacheTypeError,
                                           "MetricsCacheValueError": m.MetricsCacheValueError},
        "ts.metrics.unit": {"Units": m.Units},
        "ts.protocol": {}, "ts.protocol.otf_message_handler": {
            "send_intermediate_predict_response": send_intermediate_predict_response},
    }
    for name, members in modules.items():
        if name in sys.modules and not getattr(sys.modules[name], "__inferd_shim__", False):
            continue
        module = types.ModuleType(name)
        module.__dict__.update(members, __inferd_shim__=True, __path__=[])
        sys.modules[name] = module
