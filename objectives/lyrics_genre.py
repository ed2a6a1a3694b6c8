"""Lyrics genre: name a song's genre from its lyrics alone (seed guide 001, TASKS.md section 5).

The data (``lyrics-genre/<genre>.csv``, one file per genre: the label is the file name) is
cleaned deterministically before anything sees it:
- lyrics: bracketed annotations (``[Chorus: X]``, ``{scratch}``, ``*laughs*``) and lines that
  only name a section (``(Chorus x2)``, ``Verse 1:``) are removed in every genre, so that a model
  cannot tell the hip_hop file (another crawl, annotated far more often) by its annotations;
  the scraper joined lines with commas, so every comma becomes a line break; the album column is
  never read (only hip_hop's is filled, with the year);
- songs with fewer than ``MIN_WORDS`` words left (empty rows, "INSTRUMENTAL") are dropped;
- a song is the set of rows sharing a (primary artist, title) or the same cleaned lyric: it is
  kept once, from its first row; one filed under several of the study's genres is dropped (its
  label is ambiguous);
- the split is by primary artist (the label is artist-level: no artist in two splits), 80/10/10,
  stratified by genre; ``samples_per_genre`` caps the training songs per genre (the seed's
  data-size knob); validation and test stay whole.
"""

from __future__ import annotations

import csv
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from objectives import _classification
from objectives._classification import Corpus, LabelledTexts
from objectives._data import DATA_ENV, cache_dir, task_files
from objectives.contract import Range, Reporter, SetupError

METRIC = "accuracy"
EXTRA_METRICS = ("macro_f1", "seconds_per_epoch")
TASK = "lyrics-genre"
GENRES = {"hip_hop": "Rap", "country": "Country", "rnb": "R&B", "rock": "Rock", "pop": "Pop", "blues": "Blues"}
MIN_WORDS = 10
N_FOLDS = 10  # artist-grouped folds: one for test, one for validation, eight for training
_REPO = "https://raw.githubusercontent.com/Tulip4attoo/learning-from-lyrics/dbc2fc9d0d9532a5626bdcb7c1151d7a2048b5df"
DOWNLOADS = {g: f"{_REPO}/{g}.csv" for g in ("blues", "country", "pop", "rnb", "rock")}  # hip_hop.csv: none

PARAMS: dict[str, Any] = {
    "model_name_or_path": "bert-base-multilingual-cased",  # the seed's; it also tries distilbert-base-multilingual-cased
    "genres": ["hip_hop", "country", "rnb", "rock", "pop"],  # file names; the seed's five (hip_hop is its Rap)
    "samples_per_genre": 10000,  # at most this many training songs per genre (the seed's first run; here: all)
    "split_seed": 0,
    "max_length": 256,
    "learning_rate": 2e-5,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.1,
    "weight_decay": 0.0,
    "dropout": None,  # None: the checkpoint's own
    "max_grad_norm": 1.0,
    "mixed_precision": "auto",
    "seed": 42,
    "max_eval_samples": None,  # score only the first N validation songs (quick checks; never for a study)
}
ACCEPTS = {
    **_classification.accepts(PARAMS),
    "samples_per_genre": Range(ge=1),
    "max_length": Range(ge=8),
}


# --- cleaning -------------------------------------------------------------------------------

_ANNOTATION = re.compile(r"\[[^\]]*\]|\{[^}]*\}|\*[^*\n]{0,80}\*")  # [Chorus: X], {scratch}, *laughs*
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "*": " "})
_SECTION = r"(?:pre[- ]?)?(?:chorus|hook|verse|bridge|refrain|intro|outro|interlude)"
_STARTS_WITH_SECTION = re.compile(rf"^[\s(\-/]*{_SECTION}\b(?P<rest>.*)$", re.IGNORECASE)
_ENDS_WITH_SECTION = re.compile(rf"[(/]\s*{_SECTION}\s*\)?\s*:?\s*$", re.IGNORECASE)  # "Kanye (verse):"
_COUNT_ONLY = re.compile(r"^\(?\s*(?:repeat\s*)?(?:\d+\s*x|x\s*\d+|repeat)?\s*\)?\s*:?$", re.IGNORECASE)  # "(2x)"
_LABEL_TAIL = re.compile(r"^(?:$|[:\-)(/#]|\d|x\s*\d|repeat|once|twice)", re.IGNORECASE)


def is_section_label(line: str) -> bool:
    """A short line that only names a part of the song: "(Chorus x2)", "Verse 1: Bow Wow",
    "Chorus (Repeat)", "Kid Cudi (chorus):", "(2x)"; not "Bridge over troubled water"."""
    if len(line.split()) > 6:
        return False
    if _COUNT_ONLY.match(line) or _ENDS_WITH_SECTION.search(line):
        return True
    start = _STARTS_WITH_SECTION.match(line)
    return bool(start) and (line.lstrip().startswith("(") or bool(_LABEL_TAIL.match(start["rest"].strip())))


def clean_lyric(raw: str) -> str:
    """The lyric as the model sees it: annotations and section labels gone, one line per line."""
    text = _ANNOTATION.sub(" ", raw).translate(_QUOTES)
    lines = (" ".join(piece.split()) for piece in text.split(","))
    return "\n".join(line for line in lines if line and not is_section_label(line))


def primary_artist(singer: str) -> str:
    """The first name of a comma-joined singer list (the rest are features or cover credits)."""
    return singer.split(",")[0].strip().casefold()


@dataclass(frozen=True)
class Song:
    artist: str  # primary artist, case-folded: the split groups on it
    title: str
    genre: str
    text: str


def data_root(genres: tuple[str, ...]) -> Path:
    unknown = [g for g in genres if g not in GENRES]
    if unknown or len(set(genres)) < 2 or len(set(genres)) != len(genres):
        raise SetupError(f"genres must be two or more distinct names of {', '.join(GENRES)}; got {list(genres)}")
    if "hip_hop" in genres and not os.environ.get(DATA_ENV) and not (cache_dir() / TASK / "hip_hop.csv").is_file():
        raise SetupError(f"{TASK} data not found: hip_hop.csv has no download (it was converted from another crawl); "
                         f"set {DATA_ENV} to a folder whose {TASK}/ holds it, or leave hip_hop out of genres")
    return task_files(TASK, {f"{g}.csv": DOWNLOADS.get(g, "") for g in genres})


def load_songs(genres: tuple[str, ...]) -> tuple[list[Song], dict[str, int]]:
    """The cleaned songs of the given genres, and counts of what cleaning removed."""
    return _cleaned_songs(data_root(genres), genres)


@functools.lru_cache(maxsize=4)
def _cleaned_songs(root: Path, genres: tuple[str, ...]) -> tuple[list[Song], dict[str, int]]:
    rows: list[Song] = []
    for genre in genres:
        try:
            with open(root / f"{genre}.csv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    rows.append(Song(primary_artist(row["singer"]), row["song"].strip().casefold(), genre,
                                     clean_lyric(row["lyric"])))
        except (OSError, KeyError, UnicodeDecodeError, csv.Error) as e:
            raise SetupError(f"{TASK} data in {root / f'{genre}.csv'} is unreadable: {type(e).__name__}: {e}") from None
    kept = [r for r in rows if len(r.text.split()) >= MIN_WORDS]
    # A song = rows linked by (artist, title) or by the same cleaned lyric (union-find).
    parent = list(range(len(kept)))

    def root_of(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[Any, int] = {}
    for i, song in enumerate(kept):
        for key in ((song.artist, song.title), song.text.casefold()):
            if key in first_of:
                parent[root_of(i)] = root_of(first_of[key])
            else:
                first_of[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(kept)):
        groups.setdefault(root_of(i), []).append(i)
    songs, ambiguous = [], 0
    for members in sorted(groups.values()):
        if len({kept[i].genre for i in members}) > 1:
            ambiguous += 1
            continue
        songs.append(kept[members[0]])
    counts = {"rows": len(rows), "too_short": len(rows) - len(kept), "duplicate_rows": len(kept) - len(groups),
              "multi_genre_songs": ambiguous, "songs": len(songs)}
    return songs, counts


# --- splits ---------------------------------------------------------------------------------


def labelled(params: dict[str, Any]) -> LabelledTexts:
    """The study's songs, labels and artist-grouped splits (computed once per worker)."""
    cap = params["samples_per_genre"]
    if not isinstance(cap, int) or cap < 1:
        raise SetupError(f"samples_per_genre must be a positive integer, not {cap!r}")
    genres = tuple(params["genres"])
    return _labelled(data_root(genres), genres, params["split_seed"], cap, params["max_eval_samples"])


@functools.lru_cache(maxsize=8)
def _labelled(root: Path, genres: tuple[str, ...], split_seed: int, cap: int, max_eval: int | None) -> LabelledTexts:
    songs, _ = _cleaned_songs(root, genres)
    labels = [genres.index(s.genre) for s in songs]
    from sklearn.model_selection import StratifiedGroupKFold  # seconds to import: only when splitting

    folds = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=split_seed)
    held = [list(part) for _, part in folds.split(np.zeros(len(songs)), labels, [s.artist for s in songs])]
    test, validation = held[0], held[1]
    rest = sorted(set(range(len(songs))) - set(test) - set(validation))
    rng = np.random.default_rng(split_seed)
    by_genre = [[i for i in rest if labels[i] == g] for g in range(len(genres))]
    train = sorted(int(i) for members in by_genre for i in rng.permutation(members)[:cap])
    validation = [int(i) for i in rng.permutation(validation)][:max_eval]
    return LabelledTexts(Corpus.of(TASK, [s.text for s in songs]), tuple(labels),
                         tuple(GENRES[g] for g in genres), {"train": train, "validation": validation, "test": sorted(test)})


# --- the objective --------------------------------------------------------------------------


def prepare(params: dict[str, Any]) -> None:
    _classification.prepare(labelled(params), params, max_length=params["max_length"])


def train(params: dict[str, Any], reporter: Reporter | None = None, *, on_test: bool = False) -> dict[str, Any]:
    return _classification.train(labelled(params), params, reporter, max_length=params["max_length"],
                                 slice_key="per_genre", on_test=on_test)


def compute_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """The seed's TF-IDF + logistic regression, on the trials' training and validation splits."""
    return _classification.baseline_record(labelled(params), params, slice_key="per_genre", items="songs")
