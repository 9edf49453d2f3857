"""TorchServe's built-in ``text_classifier``: text in, ``{label: probability}`` out.

As TorchServe's handler (which dropped torchtext and carries torchtext's functions itself): strip
HTML, lowercase, expand contractions, drop accents and punctuation, torchtext's ``basic_english``
tokenizer, word 2-grams looked up in ``source_vocab.pt``, the model called as
``model(tokens, offsets=[0])`` (an EmbeddingBag model), softmax, labels from
``index_to_name.json``. One request at a time (TorchServe's handler takes the batch's first row).

The vocabulary is loaded with ``weights_only=True``: a ``{token: index}`` dict or a list of tokens
(index = position). A pickled ``torchtext`` ``Vocab`` object needs torchtext to unpickle; without
it the registration fails naming the package. Unknown tokens take ``<unk>``'s index (0 if absent).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.builtin_handlers import BaseHandler, map_class_to_label

_HTML = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")
# contraction suffixes as English expands them; the whole words first (won't -> will not)
_WHOLE = {"won't": "will not", "can't": "cannot", "shan't": "shall not", "ain't": "is not",
          "sha'n't": "shall not", "'cause": "because", "y'all": "you all", "let's": "let us",
          "so's": "so as", "how'd": "how did", "where'd": "where did", "ma'am": "madam", "o'clock": "of the clock"}
_SUFFIXES = {"n't": " not", "'re": " are", "'ve": " have", "'ll": " will", "'d": " would", "'m": " am",
             "'s": " is"}
# 's and 'd only after the words English contracts them with (John's stays a possessive: johns)
_CONTRACTION = re.compile("|".join([*map(re.escape, _WHOLE), r"\b\w+(?:n't|'re|'ve|'ll|'m)\b",
                                    r"\b(?:he|how|it|she|that|there|what|when|where|who|why)'s\b",
                                    r"\b(?:i|he|it|she|that|there|they|we|you)'d\b"]), flags=re.IGNORECASE)
# torchtext's basic_english: lowercase, space out . , ( ) ! ? and ', drop " ; : and <br />
_BASIC_ENGLISH = [(re.compile(p), r) for p, r in [
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " ")]]


def expand_contractions(text: str) -> str:
    def expand(match: re.Match[str]) -> str:
        word = match.group(0)
        whole = _WHOLE.get(word.lower())
        if whole is not None:
            return word[0] + whole[1:]
        for suffix, expanded in _SUFFIXES.items():
            if word.lower().endswith(suffix):
                return word[: -len(suffix)] + expanded
        return word

    return _CONTRACTION.sub(expand, text).replace("'", "")


def basic_english(text: str) -> list[str]:
    text = text.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        text = pattern.sub(replacement, text)
    return text.split()


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    """The tokens, then their 2-grams, ... n-grams joined by spaces (torchtext's ngrams_iterator)."""
    yield from tokens
    for size in range(2, n + 1):
        for gram in zip(*[tokens[i:] for i in range(size)], strict=False):
            yield " ".join(gram)


def normalize(text: str) -> list[str]:
    text = _HTML.sub("", text).lower()
    text = expand_contractions(text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")
    text = text.translate(str.maketrans("", "", string.punctuation))
    return basic_english(text)


def load_vocab(path: Path) -> dict[str, int]:
    import pickle

    import torch

    if not path.is_file():
        raise ConfigError("text_classifier needs source_vocab.pt in the archive (--extra-files source_vocab.pt)")
    try:
        vocab = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "torchtext" in str(exc):
            raise ConfigError("source_vocab.pt is a pickled torchtext Vocab, which needs the package "
                              "'torchtext' (not installed with inferd) and unpickling code (inferd loads "
                              "weights_only); save the vocabulary as a {token: index} dict instead") from None
        raise ConfigError(f"source_vocab.pt does not load as a {{token: index}} dict: {exc}") from None
    if isinstance(vocab, list | tuple):
        vocab = {str(token): index for index, token in enumerate(vocab)}
    if not isinstance(vocab, dict):
        raise ConfigError(f"source_vocab.pt must hold a {{token: index}} dict or a token list, got "
                          f"{type(vocab).__name__}")
    return {str(k): int(v) for k, v in vocab.items()}


class TextClassifier(BaseHandler):
    ngrams = 2

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: dict[str, int] = {}
        self.unknown = 0

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        model = (self.manifest or {}).get("model", {})
        model_dir = Path(str(context.system_properties["model_dir"]))
        self.source_vocab = load_vocab(model_dir / str(model.get("sourceVocab") or "source_vocab.pt"))
        self.unknown = self.source_vocab.get("<unk>", 0)

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        text = data[0].get("data") or data[0].get("body")
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("text_classifier expects UTF-8 text in the body") from None
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"text_classifier expects text in the body, got {type(text).__name__}")
        tokens = normalize(text)
        ids = [self.source_vocab.get(token, self.unknown) for token in ngrams(tokens, self.ngrams)]
        return torch.as_tensor(ids, dtype=torch.int64, device=self.device), tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        ids, _ = data
        return super().inference(ids, torch.as_tensor([0], device=self.device))

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch

        return map_class_to_label(torch.softmax(data, dim=-1).tolist(), self.mapping)

    def get_insights(self, text_preprocess: Any, _: Any, target: Any = 0) -> list[dict[str, Any]]:
        """TorchServe's text_classifier explanation: captum's LayerIntegratedGradients over the
        model's ``embedding`` against index 0 (its TokenReferenceBase), summarised as its
        ``summarize_attributions`` does, with the words."""
        import torch

        try:
            from captum.attr import LayerIntegratedGradients, TokenReferenceBase
        except ImportError:
            raise RuntimeError("explanations of text_classifier need captum (pip install captum), "
                               "which is not installed") from None
        ids, tokens = text_preprocess
        reference = TokenReferenceBase().generate_reference(ids.shape[0], device=self.device).squeeze(0)
        offsets = torch.as_tensor([0], device=self.device)
        attributions = LayerIntegratedGradients(self.model, self.model.embedding).attribute(
            ids, reference, additional_forward_args=(offsets), return_convergence_delta=False, target=target)
        # F.softmax without a dim, as TorchServe calls it: dim 0 for 0-, 1- and 3-d tensors, else 1
        attributions = torch.softmax(attributions, dim=0 if attributions.dim() in (0, 1, 3) else 1)
        attributions = attributions / torch.norm(attributions.sum(dim=-1))
        return [{"importances": attributions.tolist(), "words": [token.replace("\u0120", "") for token in tokens]}]
