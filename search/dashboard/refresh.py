"""The worker's dashboard update after each trial, coalesced across workers.

Re-rendering the study's note and plots (``refresh_study``) takes a few hundred
milliseconds under the study lock. When many workers finish at once they would queue for it and
each render in turn, although the last rendering shows every finished trial anyway. So a
finishing worker writes its own trial's note, records a render request on the study, and tries
the refresher's lock without waiting:

- got it: it renders, then renders again for as long as new requests came in meanwhile;
- taken: it goes back to training at once; the holder sees the request and renders once more.

After releasing the lock the holder checks for a request once more, so a worker that found the
lock taken just before the release is never left unrendered. The stored note and plots end as
the rendering of a state that includes every finished trial, as before, with at most one render
running per study at a time.
"""

from __future__ import annotations

import hashlib
import uuid

import optuna
from optuna_dashboard import get_note, save_note, save_plotly_graph_object
from optuna.trial import FrozenTrial

from objectives.attributes import StudySystemAttr
from search.dashboard.notes import study_note, trial_note
from search.dashboard.plots import figures
from search.spec import StudySpec

REQUEST_ATTR = StudySystemAttr.RENDER_REQUEST


def write_trial_note(study: optuna.Study, spec: StudySpec, trial: FrozenTrial) -> None:
    # Only the worker that ran the trial writes its note: no concurrent writers.
    save_note(optuna.trial.Trial(study, trial._trial_id), trial_note(spec, trial))



def refresh_study(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage) -> None:
    """Re-render the study note and plots from the current state, under the study lock."""
    with storage.study_lock(study.study_name):
        note = study_note(study, spec)
        if get_note(study) != note:
            save_note(study, note)
        study_id = storage.get_study_id_from_name(study.study_name)
        attrs = storage.get_study_system_attrs(study_id)
        for key, fig in figures(study, spec).items():
            digest = hashlib.sha256(fig.to_json().encode()).hexdigest()
            if attrs.get(StudySystemAttr.PLOT_DIGEST_PREFIX + key) != digest:  # unchanged plots are not rewritten
                save_plotly_graph_object(study, fig, graph_object_id=key)
                storage.set_study_system_attr(study_id, StudySystemAttr.PLOT_DIGEST_PREFIX + key, digest)



def _request(storage: optuna.storages.BaseStorage, study_id: int) -> str | None:
    return storage.get_study_system_attrs(study_id).get(REQUEST_ATTR)


def refresh_coalesced(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage) -> None:
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(study_id, REQUEST_ATTR, uuid.uuid4().hex)
    while True:
        with storage.study_lock(f"{study.study_name}:refresher", wait=False) as held:
            if not held:
                return  # the holder renders again: it sees our request
            while True:
                seen = _request(storage, study_id)
                refresh_study(study, spec, storage)
                if _request(storage, study_id) == seen:
                    break
        if _request(storage, study_id) == seen:
            return


def dashboard_callback(spec: StudySpec, storage: optuna.storages.BaseStorage):
    """An ``optimize`` callback: the trial's note, then the study's note and plots (coalesced)."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        write_trial_note(study, spec, trial)
        refresh_coalesced(study, spec, storage)

    return callback
