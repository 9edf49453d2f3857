"""TensorFlow SavedModels the tests build: one exported from Keras 3, one with tf.saved_model.save and
several signatures (numbers, two inputs, strings)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(root: Path) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(shape=(4,), name="features"), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model(np.zeros((1, 4), np.float32))
    model.export(str(root / "keras_mlp" / "1"), format="tf_saved_model", verbose=False)

    class Calculator(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def affine(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * self.scale + 1.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="a"),
                                      tf.TensorSpec([None], tf.int64, name="b")])
        def add(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"total": a + b, "product": a * b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def lengths(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(text), "upper_bytes": tf.strings.upper(text)}

    calculator = Calculator()
    tf.saved_model.save(calculator, str(root / "calculator" / "1" / "model.savedmodel"),
                        signatures={"serving_default": calculator.affine, "add": calculator.add,
                                    "lengths": calculator.lengths})
    (root / "calculator" / "config.toml").write_text("[version_labels]\nstable = 1\n")


def run_signature(path: Path, signature: str, **inputs: object) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in result.items()}
