import subprocess
import sys

import inferd


def test_public_surface() -> None:
    assert sorted(inferd.__all__) == sorted([
        "ErrorCode", "InferRequest", "InferResponse", "InferdError", "ModelMetadata", "Tensor",
        "TensorSpec", "__version__"])
    for name in inferd.__all__:
        assert hasattr(inferd, name)


def test_importing_inferd_imports_no_framework() -> None:
    code = ("import sys, inferd.server, inferd.cli; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
