"""Classification by a sequence classifier (vLLM's classify, and its score with a cross-encoder).

A classifier's checkpoint (registry.CLASSIFIERS: LlamaForSequenceClassification and the others, as
transformers saves a classifier, a reward model or a cross-encoder such as a reranker) is the
decoder with a `score` head (hidden -> num_labels) in place of the LM head. Its engine pools (the
last prompt token's final hidden state, not normalized) and the head turns the pooled state into
the classes' logits:

    Engine(model).classify(prompts)    outputs.probs: softmax over the classes (one class: sigmoid;
                                       PoolingParams(use_activation=False): the logits)
    Engine(model).score(query, docs)   a cross-encoder's (one class): each pair is one prompt, the
                                       tokenizer's pair encoding of (text_1, text_2), scored by the
                                       sigmoid of its logit

as vLLM applies them (its classify and score over a classification model). The head runs on the
host in float32 on the pooled state, which the engine hands over in float32. A causal LM's
checkpoint read as a classifier (vLLM's hf_overrides {"architectures": [...ForSequenceClassification],
"classifier_from_token": ["no", "yes"]}, Qwen3-Reranker's recipe) gets a head of one class made of
its LM head's rows: the second token's less the first's (one token: its row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Classifier:
    weight: torch.Tensor  # float32 [num_labels, hidden], on the host
    labels: tuple[str, ...]  # by class index (config.json's id2label)

    @classmethod
    def of_model(cls, model: torch.nn.Module, labels: tuple[str, ...]) -> Classifier:
        return cls(model.score.weight.detach().float().cpu(), labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def classes(self, pooled: torch.Tensor, use_activation: bool | None = None) -> torch.Tensor:
        """Each class's probability for a pooled state [hidden], or for each row of [tokens, hidden]
        (a token_classify request's): softmax over the classes; a single class's sigmoid (with
        use_activation False, as PoolingParams and the requests carry it: the logits)."""
        logits = pooled.float().cpu() @ self.weight.T
        if use_activation is not False:
            logits = logits.sigmoid() if self.num_labels == 1 else logits.softmax(-1)
        return logits

    def probs(self, pooled: torch.Tensor, use_activation: bool | None = None) -> list[float]:
        """classes() of one pooled state, as a list."""
        return self.classes(pooled, use_activation).tolist()

    def check_cross_encoder(self) -> None:
        """ValueError unless it scores pairs: a cross-encoder has one class."""
        if self.num_labels != 1:
            raise ValueError(f"scoring pairs needs a cross-encoder (one class); this classifier has "
                             f"{self.num_labels}: {list(self.labels)}")

    def relevance(self, pooled: torch.Tensor, use_activation: bool | None = None) -> float:
        """A cross-encoder's score of the pair it pooled: the sigmoid of its one logit (with
        use_activation False: the logit)."""
        self.check_cross_encoder()
        return self.probs(pooled, use_activation)[0]
