"""TensorFlow SavedModels the tests build: one exported from Keras 3, one with tf.saved_model.save and
several signatures (numbers, two inputs, strings, a scalar string)."""

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

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="word")])
        def shout(self, word: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"loud": tf.strings.upper(word)}

    calculator = Calculator()
    tf.saved_model.save(calculator, str(root / "calculator" / "1" / "model.savedmodel"),
                        signatures={"serving_default": calculator.affine, "add": calculator.add,
                                    "lengths": calculator.lengths, "shout": calculator.shout})
    (root / "calculator" / "config.toml").write_text("[version_labels]\nstable = 1\n")


def run_signature(path: Path, signature: str, **inputs: object) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in result.items()}


def build_half_plus_two_tf1(version_dir: Path) -> None:
    """A TF1 graph as TF Serving's own saved_model_half_plus_two.py writes it: y = 0.5 * x + 2 fed
    directly (predict) or from serialized tf.Examples (classify, regress), plus an input of
    unknown rank (z -> 0.5 * z)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    utils = v1.saved_model.signature_def_utils
    with tf.Graph().as_default():
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32),
                                               "x2": v1.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        a, b, c = v1.Variable(0.5, name="a"), v1.Variable(2.0, name="b"), v1.Variable(3.0, name="c")
        x = tf.identity(tf.reshape(parsed["x"], [-1, 1]), name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        y2 = tf.add(tf.multiply(a, x), c, name="y2")
        z = v1.placeholder(tf.float32, shape=None, name="z")
        w = tf.multiply(a, z, name="w")
        info = v1.saved_model.utils.build_tensor_info
        signatures = {
            "serving_default": utils.build_signature_def({"x": info(x)}, {"y": info(y)},
                                                         v1.saved_model.signature_constants.PREDICT_METHOD_NAME),
            "classify_x_to_y": utils.classification_signature_def(serialized, None, y),
            "regress_x_to_y": utils.regression_signature_def(serialized, y),
            "regress_x_to_y2": utils.regression_signature_def(serialized, y2),
            "any_rank": utils.predict_signature_def({"z": z}, {"w": w}),
        }
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.builder.SavedModelBuilder(str(version_dir))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


def build_half_plus_two_tf2(version_dir: Path) -> None:
    """The same with tf.saved_model.save: every signature's method name is "predict" (TF2 writes no
    other), classify gives classes and scores, regress its outputs."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = tf.Variable(0.5), tf.Variable(2.0)

        def _x(self, inputs: tf.Tensor) -> tf.Tensor:
            return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = self.a * self._x(inputs) + self.b
            labels = tf.fill(tf.shape(scores), "half_plus_two")
            return {"scores": scores, "classes": labels}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": self.a * self._x(inputs) + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(version_dir), signatures={
        "serving_default": module.predict, "classify_x_to_y": module.classify, "regress_x_to_y": module.regress})


def build_offset_versions(model_dir: Path, offsets: dict[int, float]) -> None:
    """One SavedModel per version, y = x + offset (so an answer tells which version ran): classify
    and regress on tf.Examples (feature x), "sum" adding each example's float feature f (any number
    of values), and "total" whose output is a scalar."""
    import tensorflow as tf

    class Offset(tf.Module):
        def __init__(self, offset: float) -> None:
            super().__init__()
            self.offset = tf.Variable(offset)

        def _x(self, inputs: tf.Tensor) -> tf.Tensor:
            return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"] + self.offset

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = self._x(inputs)
            return {"scores": scores, "classes": tf.fill(tf.shape(scores), "c")}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": self._x(inputs)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def sum(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            f = tf.io.parse_example(inputs, {"f": tf.io.VarLenFeature(tf.float32)})["f"]
            return {"outputs": tf.sparse.reduce_sum(f, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def total(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"total": tf.reduce_sum(x)}

    for version, offset in offsets.items():
        module = Offset(offset)
        tf.saved_model.save(module, str(model_dir / str(version)), signatures={
            "serving_default": module.regress, "classify": module.classify, "regress": module.regress,
            "sum": module.sum, "total": module.total})
    (model_dir / "config.toml").write_text("[version_policy]\nall = true\n")


def example(**features: float) -> bytes:
    """A serialized tf.Example with float features, made by TensorFlow itself."""
    import tensorflow as tf

    feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
