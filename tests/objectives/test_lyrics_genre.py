"""The lyrics-genre objective: deterministic cleaning, artist-grouped splits, per-genre metrics,
the computed TF-IDF baseline stored on the study, and the search as users run it."""

from __future__ import annotations

import collections
import csv
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna_dashboard import get_note

from helpers import REPO, Recording, minilm_epoch, ok, shared_data
from objectives import SetupError
from search.spec import load_spec
from storage import open_storage

SHIPPED = REPO / "spaces" / "lyrics-genre.yaml"
FIVE = ["hip_hop", "country", "rnb", "rock", "pop"]


@pytest.fixture(scope="module")
def lyrics_dir() -> Path:
    return shared_data("lyrics-genre/hip_hop.csv")


@pytest.fixture
def lyrics(lyrics_dir, monkeypatch):
    monkeypatch.setenv("SEARCH_DATA_DIR", str(lyrics_dir))
    from objectives import lyrics_genre

    return lyrics_genre


def raw_rows(lyrics_dir: Path, genre: str) -> list[dict[str, str]]:
    with open(lyrics_dir / "lyrics-genre" / f"{genre}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- cleaning (no data needed) ---------------------------------------------------------------


def test_cleaning_strips_annotations_and_section_labels_and_splits_lines():
    from objectives.lyrics_genre import clean_lyric

    raw = ("[LT Hutton talking],Uh oh, Uh oh ,(Chorus x2),They ain't ready {*scratch*} for this ,"
           "[Chorus: Ashanti],Pac\u2019s life ,Verse 1: Bow Wow,Bridge over troubled water,*laughs*,\n,\n,\n")
    assert clean_lyric(raw) == "Uh oh\nUh oh\nThey ain't ready for this\nPac's life\nBridge over troubled water"


def test_section_labels_are_recognised_but_lyrics_that_mention_them_are_kept():
    from objectives.lyrics_genre import is_section_label

    for label in ("Chorus:", "(Verse 2:)", "Chorus (Repeat)", "Kid Cudi (chorus):", "BabyFace // Hook", "(2x)",
                  "-PRE CHORUS", "Hook: Nate Dogg", "(Chorus - Pharrell (Kanye West))"):
        assert is_section_label(label), label
    for line in ("Bridge over troubled water", "hook it up", "London Bridge wanna go down", "(Outlawz)",
                 "Real niggas all feel the hook", "Take the bridge! (Whoah!)"):
        assert not is_section_label(line), line


# --- the real data: loading, cleaning, splits ------------------------------------------------------


@pytest.mark.realdata
def test_cleaned_songs_have_no_annotations_no_duplicates_and_enough_words(lyrics):
    songs, counts = lyrics.load_songs(tuple(FIVE))
    assert counts["songs"] == len(songs) and counts["rows"] == 8107  # the five files' rows (SOURCE.md + hip_hop)
    assert counts["too_short"] > 0 and counts["duplicate_rows"] > 0 and counts["multi_genre_songs"] > 0
    assert all(len(s.text.split()) >= lyrics.MIN_WORDS for s in songs)
    assert not any(re.search(r"\[[^\]]*\]|\{[^}]*\}", s.text) for s in songs), "bracketed annotations are gone"
    assert not any(lyrics.is_section_label(line) for s in songs for line in s.text.split("\n"))
    keys = collections.Counter((s.artist, s.title) for s in songs)
    assert max(keys.values()) == 1, keys.most_common(1)
    assert len({s.text.casefold() for s in songs}) == len(songs), "no lyric twice"
    # SOURCE.md's two duplicate hip_hop pairs are there once each.
    assert keys[("ludacris", "mvp")] == 1 and keys[("t.i.", "what you know")] == 1
    assert set(collections.Counter(s.genre for s in songs)) == set(FIVE)


@pytest.mark.realdata
def test_a_song_filed_under_two_of_the_studys_genres_is_dropped(lyrics, lyrics_dir):
    def keys(genre):
        return {(lyrics.primary_artist(r["singer"]), r["song"].strip().casefold()) for r in raw_rows(lyrics_dir, genre)
                if len(lyrics.clean_lyric(r["lyric"]).split()) >= lyrics.MIN_WORDS}

    both = sorted(keys("pop") & keys("rock"))
    assert len(both) > 100, "SOURCE.md: hundreds of songs are in both pop.csv and rock.csv"
    with_both = {(s.artist, s.title) for s in lyrics.load_songs(("pop", "rock", "country"))[0]}
    assert not with_both & set(both), "ambiguous label: dropped"
    # Without rock among the study's genres the same songs are simply pop songs.
    pop_only = {(s.artist, s.title): s.genre for s in lyrics.load_songs(("pop", "country"))[0]}
    kept = [k for k in both if k in pop_only]
    assert len(kept) > 0.8 * len(both) and {pop_only[k] for k in kept} == {"pop"}


@pytest.mark.realdata
def test_splits_are_by_artist_disjoint_stratified_and_deterministic(lyrics):
    params = dict(lyrics.PARAMS)
    data = lyrics.labelled(params)
    songs, _ = lyrics.load_songs(tuple(FIVE))
    artists = {part: {songs[i].artist for i in data.splits[part]} for part in ("train", "validation", "test")}
    assert not artists["train"] & artists["validation"] and not artists["train"] & artists["test"]
    assert not artists["validation"] & artists["test"], "no artist in two splits"
    everything = [i for part in data.splits.values() for i in part]
    assert sorted(everything) == list(range(len(songs))), "every song in exactly one split (no cap hit)"
    for part in ("validation", "test"):
        share = len(data.splits[part]) / len(songs)
        assert 0.08 < share < 0.12, (part, share)
        per_genre = collections.Counter(data.labels[i] for i in data.splits[part])
        assert len(per_genre) == 5 and min(per_genre.values()) > 50
    assert data.label_names == ("Rap", "Country", "R&B", "Rock", "Pop")
    again = lyrics.labelled(params)
    assert {k: list(v) for k, v in again.splits.items()} == {k: list(v) for k, v in data.splits.items()}
    other = lyrics.labelled({**params, "split_seed": 1})
    assert set(other.splits["test"]) != set(data.splits["test"])


@pytest.mark.realdata
def test_samples_per_genre_caps_training_songs_only(lyrics):
    full = lyrics.labelled(dict(lyrics.PARAMS))
    capped = lyrics.labelled({**lyrics.PARAMS, "samples_per_genre": 100})
    assert collections.Counter(capped.labels[i] for i in capped.splits["train"]) == {g: 100 for g in range(5)}
    assert set(capped.splits["train"]) < set(full.splits["train"])
    assert capped.splits["validation"] == full.splits["validation"] and capped.splits["test"] == full.splits["test"]


@pytest.mark.realdata
def test_genres_are_configurable_and_checked(lyrics):
    six = lyrics.labelled({**lyrics.PARAMS, "genres": [*FIVE, "blues"]})
    assert six.label_names[-1] == "Blues" and len(set(six.labels)) == 6
    for bad in (["jazz", "pop"], ["pop"], ["pop", "pop"]):
        with pytest.raises(SetupError, match="genres must be two or more distinct names of hip_hop, country"):
            lyrics.labelled({**lyrics.PARAMS, "genres": bad})


# --- training on the tiny model ---------------------------------------------------------------


def test_a_trial_records_accuracy_macro_f1_per_genre_and_the_confusion_matrix(lyrics, tiny_model):
    params = {**lyrics.PARAMS, "model_name_or_path": str(tiny_model), "max_length": 32, "samples_per_genre": 40,
              "num_train_epochs": 2, "learning_rate": 3e-3, "max_eval_samples": 120}
    reporter = Recording()
    result = lyrics.train(params, reporter, on_test=True)
    assert [step for step, _ in reporter.reports] == [1, 2] and result["accuracy"] == reporter.reports[-1][1]
    assert result["split"] == "validation" and result["n_items"] == 120
    confusion = reporter.attrs["confusion_matrix"]
    assert confusion["labels"] == ["Rap", "Country", "R&B", "Rock", "Pop"]
    matrix = confusion["matrix"]
    assert sum(map(sum, matrix)) == 120
    assert result["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(5)) / 120)
    per = reporter.attrs["per_genre"]
    for i, genre in enumerate(confusion["labels"]):
        assert per[genre]["n"] == sum(matrix[i])
        assert per[genre]["accuracy"] == per[genre]["recall"] == pytest.approx(matrix[i][i] / sum(matrix[i]))
    assert 0.0 <= reporter.attrs["macro_f1"] <= 1.0
    assert len(reporter.attrs["train_seconds_per_epoch"]) == 2 and reporter.attrs["seconds_per_epoch"] > 0
    test = result["test"]
    assert test["n_items"] == len(lyrics.labelled(params).splits["test"]) and set(test["per_genre"]) == set(per)


# --- the spec ------------------------------------------------------------------------------------


def test_shipped_spec_beats_a_computed_baseline_and_searches_the_seeds_knobs():
    spec = load_spec(str(SHIPPED))
    assert spec.objective == "lyrics_genre" and spec.metric.name == "accuracy"
    assert spec.target.beat == "baseline" and spec.baseline.computed
    assert {(r.name, r.value, r.metric) for r in spec.references} >= {
        ("seed hoped-for (low)", 0.64, None), ("seed hoped-for (high)", 0.66, None),
        ("seed TF-IDF (its data)", 0.6093, None), ("seed TF-IDF macro-F1 (its data)", 0.605, "macro_f1")}
    assert spec.space["model_name_or_path"].choices == ["bert-base-multilingual-cased", "distilbert-base-multilingual-cased"]
    assert spec.space["max_length"].choices == [256, 512]
    assert {"learning_rate", "num_train_epochs", "samples_per_genre", "warmup_ratio", "weight_decay",
            "per_device_train_batch_size", "gradient_accumulation_steps"} <= set(spec.space)
    assert spec.fixed["genres"] == FIVE
    for config in spec.known_configs:
        assert set(config.params) == set(spec.space), f"{config.name} sets every searched parameter"
    pinned = load_spec(str(SHIPPED), {"model_name_or_path": "minilm"})
    assert "model_name_or_path" not in pinned.space and pinned.fixed["model_name_or_path"] == "minilm"


# --- the search as users run it -----------------------------------------------------------------


def baseline_writes(journal: Path, study: str) -> int:
    """How many times the study's computed baseline was written, read from the journal's log."""
    ops = [json.loads(line) for line in journal.read_text().splitlines()]
    study_ids = [i for i, op in enumerate(op for op in ops if op.get("op_code") == 0) if op.get("study_name") == study]
    return sum(1 for op in ops if op.get("op_code") == 2 and op.get("study_id") in study_ids
               and "search:baseline" in op.get("user_attr", {}))


def test_worker_stores_the_computed_baseline_once_and_status_export_confirm_show_it(
        lyrics, tiny_model, cli, tmp_path, monkeypatch):
    spec = yaml.safe_load(SHIPPED.read_text())
    spec["name"] = "lyrics-e2e"
    spec["fixed"].update(model_name_or_path=str(tiny_model), max_length=32, samples_per_genre=30, max_eval_samples=100)
    spec["space"] = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                     "num_train_epochs": {"type": "int", "low": 1, "high": 2}}
    spec["known_configs"] = [{"name": "baseline", "params": {"learning_rate": 3e-3, "num_train_epochs": 1}}]
    spec["pruner"] = {"type": "MedianPruner"}
    path = tmp_path / "lyrics-e2e.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    journal = tmp_path / "studies.journal"

    worker = ok(cli("worker", "--study", str(path), "--storage", str(journal), "--n-trials", "1"))
    assert worker.stderr == ""
    storage = open_storage(str(journal))  # the service's store: it holds the study lock the worker takes
    study = optuna.load_study(study_name="lyrics-e2e", storage=storage)
    stored = study.user_attrs["search:baseline"]
    expected = lyrics.compute_baseline(load_spec(str(path)).params({}))
    assert stored["value"] == pytest.approx(expected["value"]) and stored["slices"] == pytest.approx(expected["slices"])
    assert "TF-IDF" in stored["source"] and "trained on the 150 training songs" in stored["source"]
    assert set(stored["slices"]) == {"Rap", "Country", "R&B", "Rock", "Pop"}
    (trial,) = study.trials
    assert set(trial.user_attrs["per_genre"]) == set(stored["slices"]) and "confusion_matrix" in trial.user_attrs
    assert f"baseline {stored['value']:g}" in worker.stdout

    status = json.loads(ok(cli("status", "--study", "lyrics-e2e", "--storage", str(journal), "--format", "json")).stdout)
    assert status["target"]["beat_baseline"] is True and status["target"]["value"] == stored["value"]
    assert status["baseline"] == {"value": stored["value"], "source": stored["source"]}
    assert {"name": "seed hoped-for (low)", "metric": "accuracy", "value": 0.64} in [
        {k: line[k] for k in ("name", "metric", "value")} for line in status["references"]]
    shown = f"{stored['value']:.4f}"
    ok(cli("export", "--study", "lyrics-e2e", "--storage", str(journal), "-o", "best.yaml"))
    record = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert record["baseline"] == {"value": stored["value"], "source": stored["source"]}
    assert record["target"]["value"] == stored["value"]
    assert record["params"]["genres"] == FIVE and set(record["slices"]["per_genre"]) == set(stored["slices"])
    note = get_note(study)
    assert f"| baseline | {shown} |" in note and "Confusion matrix" in note and "| genre | precision | recall | F1 | n |" in note

    # A second worker joins the study: it trains, and it does not measure the baseline again.
    from objectives import lyrics_genre
    from search.running.worker import run_worker

    measured = []
    real = lyrics_genre.compute_baseline
    monkeypatch.setattr(lyrics_genre, "compute_baseline", lambda params: measured.append(params) or real(params))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    joined = run_worker(load_spec(str(path)), storage, n_trials=1)
    assert measured == [] and len(joined.trials) == 2
    assert joined.user_attrs["search:baseline"] == stored
    assert baseline_writes(journal, "lyrics-e2e") == 1

    # Confirmation: no folds, so one run per seed on the test songs.
    confirm = ok(cli("confirm", "--study", "lyrics-e2e", "--storage", str(journal), "--top", "1", "--seeds", "1"))
    confirmed = optuna.load_study(study_name="lyrics-e2e", storage=storage).user_attrs["search:confirmed"]
    (figures,) = confirmed.values()
    n_test = len(lyrics.labelled(load_spec(str(path)).params({})).splits["test"])
    assert figures["n_items"] == n_test and set(figures["slices"]) == set(stored["slices"])
    assert f"test accuracy over {n_test} items" in confirm.stdout


def test_an_unknown_genre_is_one_line_exit_2(cli, tmp_path, lyrics_dir):
    journal = tmp_path / "studies.journal"
    result = cli("worker", "--study", str(SHIPPED), "--storage", str(journal), "--n-trials", "1",
                 "--set", "model_name_or_path=minilm", "--set", "genres=[jazz, pop]")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "genres must be two or more distinct names of hip_hop" in result.stderr and "jazz" in result.stderr
    assert not journal.exists()


# --- the real backbone ---------------------------------------------------------------------------


@pytest.mark.realdata
def test_one_short_epoch_of_minilm_on_the_lyrics(lyrics_dir, cli, tmp_path):
    config = {"objective": "lyrics_genre",
              "params": {"model_name_or_path": "minilm", "num_train_epochs": 1, "learning_rate": 5e-5,
                         "samples_per_genre": 24, "max_length": 64, "per_device_train_batch_size": 16,
                         "max_eval_samples": 100}}
    minilm_epoch(cli, tmp_path, config, ("Rap", "Country", "R&B", "Rock", "Pop"))
