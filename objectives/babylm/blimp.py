"""BLiMP (Warstadt et al. 2020) scored by pseudo-log-likelihood, as for a masked LM.

A sentence's PLL masks each of its tokens in turn and sums the log-probabilities of the true
tokens (Salazar et al. 2020; ltg-bert ``evaluation/blimp/blimp.py``, TASKS.md 3.4). A minimal
pair is right only when the good sentence scores strictly higher: a tie is wrong (a model that
gives both sentences the same score learns nothing from BLiMP). The score is the macro average
over the 67 paradigms.

The scorer is batched: every masked copy of every sentence of one token length goes through the
model together, in forward passes of about ``tokens_per_batch`` tokens, with no padding at all;
each distinct sentence is scored once. ``pll_one_by_one`` is the plain loop (one masked copy per
forward pass, full logits) that it is checked and benchmarked against.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from objectives._data import task_files
from objectives.contract import SetupError

_COMMIT = "3e56b06fcabca9b30822fc66435fca6b1aa40bb1"  # alexwarstadt/blimp; data/ unchanged since 2019
PARADIGMS = (
    'adjunct_island', 'anaphor_gender_agreement', 'anaphor_number_agreement', 'animate_subject_passive',
    'animate_subject_trans', 'causative', 'complex_NP_island',
    'coordinate_structure_constraint_complex_left_branch',
    'coordinate_structure_constraint_object_extraction', 'determiner_noun_agreement_1',
    'determiner_noun_agreement_2', 'determiner_noun_agreement_irregular_1',
    'determiner_noun_agreement_irregular_2', 'determiner_noun_agreement_with_adj_2',
    'determiner_noun_agreement_with_adj_irregular_1', 'determiner_noun_agreement_with_adj_irregular_2',
    'determiner_noun_agreement_with_adjective_1', 'distractor_agreement_relational_noun',
    'distractor_agreement_relative_clause', 'drop_argument', 'ellipsis_n_bar_1', 'ellipsis_n_bar_2',
    'existential_there_object_raising', 'existential_there_quantifiers_1', 'existential_there_quantifiers_2',
    'existential_there_subject_raising', 'expletive_it_object_raising', 'inchoative', 'intransitive',
    'irregular_past_participle_adjectives', 'irregular_past_participle_verbs',
    'irregular_plural_subject_verb_agreement_1', 'irregular_plural_subject_verb_agreement_2',
    'left_branch_island_echo_question', 'left_branch_island_simple_question',
    'matrix_question_npi_licensor_present', 'npi_present_1', 'npi_present_2', 'only_npi_licensor_present',
    'only_npi_scope', 'passive_1', 'passive_2', 'principle_A_c_command', 'principle_A_case_1',
    'principle_A_case_2', 'principle_A_domain_1', 'principle_A_domain_2', 'principle_A_domain_3',
    'principle_A_reconstruction', 'regular_plural_subject_verb_agreement_1',
    'regular_plural_subject_verb_agreement_2', 'sentential_negation_npi_licensor_present',
    'sentential_negation_npi_scope', 'sentential_subject_island', 'superlative_quantifiers_1',
    'superlative_quantifiers_2', 'tough_vs_raising_1', 'tough_vs_raising_2', 'transitive', 'wh_island',
    'wh_questions_object_gap', 'wh_questions_subject_gap', 'wh_questions_subject_gap_long_distance',
    'wh_vs_that_no_gap', 'wh_vs_that_no_gap_long_distance', 'wh_vs_that_with_gap',
    'wh_vs_that_with_gap_long_distance',
)
FILES = {f"data/{uid}.jsonl": f"https://raw.githubusercontent.com/alexwarstadt/blimp/{_COMMIT}/data/{uid}.jsonl"
         for uid in PARADIGMS}


@dataclass(frozen=True)
class Pair:
    uid: str  # the paradigm (one of 67)
    field: str  # syntax, morphology, syntax_semantics, semantics
    phenomenon: str  # the linguistics_term (13 of them)
    good: str
    bad: str


def blimp_folder(path: str = "") -> Path:
    """The folder of the 67 ``<UID>.jsonl`` files: ``path`` if given, else
    ``$SEARCH_DATA_DIR/blimp/data``, else downloaded once into ``~/.cache/search/blimp/data``."""
    if not path:
        return task_files("blimp", FILES) / "data"
    folder = Path(path)
    missing = [uid for uid in PARADIGMS if not (folder / f"{uid}.jsonl").is_file()]
    if missing:
        raise SetupError(f"BLiMP data not found: {folder / (missing[0] + '.jsonl')} is missing "
                         f"({len(missing)} of 67 paradigm files; blimp_path names the folder of <UID>.jsonl files)")
    return folder


@functools.lru_cache(maxsize=4)
def load_pairs(folder: Path) -> tuple[Pair, ...]:
    """Every pair of the 67 paradigms, paradigm by paradigm in file order."""
    pairs = []
    for uid in PARADIGMS:
        file = folder / f"{uid}.jsonl"
        try:
            rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
            # One paradigm spells its field "syntax/semantics"; it is the field called syntax_semantics.
            pairs += [Pair(uid, r["field"].replace("/", "_"), r["linguistics_term"], r["sentence_good"], r["sentence_bad"])
                      for r in rows]
        except (OSError, ValueError, KeyError) as e:
            raise SetupError(f"BLiMP file {file} is unreadable: {type(e).__name__}: {e}") from None
        if not rows:
            raise SetupError(f"BLiMP file {file} holds no pairs")
    return tuple(pairs)


def stratified_subset(pairs: Sequence[Pair], per_paradigm: int, seed: int) -> tuple[Pair, ...]:
    """The same ``per_paradigm`` pairs of every paradigm for every trial (a seeded draw);
    0 or more than a paradigm has: all of them."""
    by_uid: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_uid[pair.uid].append(pair)
    out = []
    for index, (uid, group) in enumerate(by_uid.items()):
        if 0 < per_paradigm < len(group):
            order = np.random.default_rng([seed, index]).permutation(len(group))[:per_paradigm]
            group = [group[i] for i in sorted(order)]
        out += group
    return tuple(out)


# --- pseudo-log-likelihood ----------------------------------------------------------------------


def _logits_at(model: torch.nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at one position per row; the head runs only there when the model
    can (LTG-BERT's ``logits_at``), else any masked LM's full logits are indexed."""
    if hasattr(model, "logits_at"):
        return model.logits_at(input_ids, None, positions)
    logits = model(input_ids=input_ids).logits
    return logits[torch.arange(len(positions), device=logits.device), positions]


@torch.no_grad()
def pll_scores(model: torch.nn.Module, sentences: Sequence[Sequence[int]], *, cls_id: int, sep_id: int, mask_id: int,
               tokens_per_batch: int = 16384, dtype: torch.dtype | None = None) -> np.ndarray:
    """The PLL of each sentence (token ids without specials), batched across sentences."""
    dev = next(model.parameters()).device
    model.eval()
    unique: dict[tuple[int, ...], int] = {}
    for sentence in sentences:
        unique.setdefault(tuple(sentence), len(unique))
    scores = np.zeros(len(unique))
    by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for sentence in unique:
        by_length[len(sentence)].append(sentence)
    for n, group in by_length.items():
        if n == 0:
            continue
        ids = torch.tensor([[cls_id, *s, sep_id] for s in group], device=dev)  # [S, n + 2]
        copies = len(group) * n  # copy k masks token k % n of sentence k // n
        log_p = torch.empty(copies, device=dev)
        rows = max(1, tokens_per_batch // (n + 2))
        for start in range(0, copies, rows):
            k = torch.arange(start, min(start + rows, copies), device=dev)
            which, position = k // n, k % n + 1
            batch = ids[which]
            target = batch[torch.arange(len(k), device=dev), position]
            batch[torch.arange(len(k), device=dev), position] = mask_id
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                logits = _logits_at(model, batch, position)
            log_p[start:start + len(k)] = torch.log_softmax(logits.float(), -1).gather(1, target[:, None])[:, 0]
        sums = log_p.view(len(group), n).double().sum(1).cpu().numpy()  # fixed order: the same every run
        for s, value in zip(group, sums):
            scores[unique[s]] = value
    return np.array([scores[unique[tuple(s)]] for s in sentences])


@torch.no_grad()
def pll_one_by_one(model: torch.nn.Module, sentences: Sequence[Sequence[int]], *, cls_id: int, sep_id: int,
                   mask_id: int) -> np.ndarray:
    """The reference loop: one masked copy per forward pass, the full logits of the model."""
    dev = next(model.parameters()).device
    model.eval()
    out = []
    for sentence in sentences:
        ids = torch.tensor([[cls_id, *sentence, sep_id]], device=dev)
        total = 0.0
        for position in range(1, len(sentence) + 1):
            masked = ids.clone()
            masked[0, position] = mask_id
            logits = model(input_ids=masked).logits[0, position]
            total += torch.log_softmax(logits.float(), -1)[ids[0, position]].item()
        out.append(total)
    return np.array(out)


# --- accuracy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlimpResult:
    macro: float  # mean over paradigms of the paradigm's accuracy
    correct: tuple[bool, ...]  # per pair, in the order given
    per_paradigm: dict[str, dict[str, Any]]
    per_field: dict[str, dict[str, Any]]
    per_phenomenon: dict[str, dict[str, Any]]


def summarize(pairs: Sequence[Pair], good: np.ndarray, bad: np.ndarray) -> BlimpResult:
    """Accuracy with strict ``>`` (ties are wrong), per paradigm, and macro averages by field and
    by phenomenon (the mean of their paradigms' accuracies; ``accuracy`` there is over pairs)."""
    correct = [bool(g > b) for g, b in zip(good, bad)]
    hits: dict[str, list[bool]] = defaultdict(list)
    for pair, right in zip(pairs, correct):
        hits[pair.uid].append(right)
    meta = {p.uid: p for p in pairs}
    per_paradigm = {uid: {"blimp": float(np.mean(h)), "n": len(h), "field": meta[uid].field,
                          "phenomenon": meta[uid].phenomenon} for uid, h in hits.items()}

    def grouped(key: Callable[[Pair], str]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for uid in hits:
            groups[key(meta[uid])].append(uid)
        return {name: {"blimp": float(np.mean([per_paradigm[u]["blimp"] for u in uids])),
                       "accuracy": float(np.mean([x for u in uids for x in hits[u]])),
                       "n": sum(len(hits[u]) for u in uids), "paradigms": len(uids)}
                for name, uids in sorted(groups.items())}

    macro = float(np.mean([v["blimp"] for v in per_paradigm.values()])) if per_paradigm else float("nan")
    return BlimpResult(macro, tuple(correct), per_paradigm, grouped(lambda p: p.field), grouped(lambda p: p.phenomenon))


def score_pairs(model: torch.nn.Module, encode: Callable[[list[str]], list[list[int]]], pairs: Sequence[Pair], *,
                cls_id: int, sep_id: int, mask_id: int, tokens_per_batch: int = 16384,
                dtype: torch.dtype | None = None) -> BlimpResult:
    """BLiMP accuracy of ``model`` on ``pairs``; ``encode`` turns sentences into token ids."""
    ids = encode([p.good for p in pairs] + [p.bad for p in pairs])
    scores = pll_scores(model, ids, cls_id=cls_id, sep_id=sep_id, mask_id=mask_id,
                        tokens_per_batch=tokens_per_batch, dtype=dtype)
    return summarize(pairs, scores[: len(pairs)], scores[len(pairs):])
