"""One entry point for the study of each real model: load it (checked, from the cache) and run its study."""

from __future__ import annotations

from .corpus import Corpus
from .study import MODELS, ModelStudy, Progress, StudyConfig

__all__ = ["study_model"]


def study_model(
    name: str, corpus: Corpus, config: StudyConfig, *, progress: Progress | None = None, workers: int = 1
) -> ModelStudy:
    """The study of registry model `name` (one of MODELS), its runs spread over `workers` processes
    (`study.run_plan`). FileNotFoundError when it is not fetched (the message names the `normfuse fetch`
    command), ValueError for a damaged file or a corpus too short for `config`."""
    if name == "smollm2-135m":
        from ..models.llama.model import load_model
        from .smollm2 import study_llama

        return study_llama(load_model(name, "float32"), corpus, config, name=name, progress=progress, workers=workers)
    if name == "all-minilm-l6-v2":
        from ..models.bert.model import load_model as load_bert
        from .minilm import study_bert

        return study_bert(load_bert(name, "float32"), corpus, config, name=name, progress=progress, workers=workers)
    raise ValueError(f"unknown model {name!r}; the study covers {', '.join(MODELS)}")
