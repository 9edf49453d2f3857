"""The ``ts.*`` import shim: TorchServe's usual imports resolve to inferd's classes when it is not installed."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

from inferd.runtimes.ts_context import Context


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
    from inferd.runtimes import builtin_handlers

    modules: dict[str, dict[str, Any]] = {
        "ts": {}, "ts.torch_handler": {},
        "ts.torch_handler.base_handler": {"BaseHandler": builtin_handlers.BaseHandler},
        "ts.torch_handler.image_classifier": {"ImageClassifier": builtin_handlers.ImageClassifier},
        "ts.torch_handler.vision_handler": {"VisionHandler": builtin_handlers.ImageClassifier},
        "ts.context": {"Context": Context},
        "ts.utils": {}, "ts.utils.util": {"map_class_to_label": builtin_handlers.map_class_to_label,
                                          "load_label_mapping": builtin_handlers.load_label_mapping},
    }
    for name, members in modules.items():
        if name in sys.modules and not getattr(sys.modules[name], "__inferd_shim__", False):
            continue
        module = types.ModuleType(name)
        module.__dict__.update(members, __inferd_shim__=True, __path__=[])
        sys.modules[name] = module
