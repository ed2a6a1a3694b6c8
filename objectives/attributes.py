"""Every study and trial attribute key the service writes or reads, declared once.

Optuna keeps free-form attributes on studies and trials; these are the ones this service gives a
meaning to. The engine and the objectives write trial user attributes (optuna-dashboard shows
them); the worker, confirmation, export and the dashboard notes read them. Writers and readers
name a key through these classes, never as a bare string, so a renamed key cannot leave a reader
behind.

Objectives add their own figures too: whatever ``evaluate`` returns next to the metric is stored
under its own name (``dev_loss``, ``n_parameters``, ...), and per-slice figures under
``per_<what>`` (``SLICE_PREFIX``) as ``{slice: {METRIC: value or None, "n": items}}``.
"""

from __future__ import annotations


class TrialAttr:
    """User attributes of a trial: what it ran with, how it went, why it ended."""

    PARAMS = "params"  # every parameter the trial ran with: objective defaults < fixed < tuned
    END_REASON = "end_reason"  # "completed", "pruned at epoch E", "failed: Error: message", ...
    EPOCHS = "epochs"  # one entry per evaluation: epoch (and step), train_loss, value, seconds
    N_ITEMS = "n_items"  # items the value was measured on
    SPLIT = "split"  # the split the value was measured on ("validation")
    DEVICE = "device"  # cuda | cpu
    MIXED_PRECISION = "mixed_precision_used"  # bfloat16 | float16 | fp32
    WORLD_SIZE = "world_size"  # processes of a data-parallel trial (absent: 1)
    SECONDS_TO_FIRST_STEP = "seconds_to_first_step"
    KNOWN_CONFIG = "known_config"  # the spec's name of an enqueued known configuration
    OOM_RETRY = "oom_retry"  # {error, from, to}: re-run at half the micro-batch
    STEP_LOG = "step_log"  # per-step loss and gradient norm (opt-in)
    WARNING_SIGNS = "warning_signs"  # loss spikes and exploding gradient norms in that log
    CHECKPOINT_IGNORED = "checkpoint_ignored"  # a checkpoint of another configuration was found
    RESUMED_FROM_STEP = "resumed_from_step"
    RESUMED_WITH_CHANGES = "resumed_with_changes"  # {param: [checkpoint's, this run's]}
    CONFUSION_MATRIX = "confusion_matrix"  # {labels, matrix}: rows true, columns predicted
    TEST = "test"  # a confirmation run's held-out test figures
    SLICE_PREFIX = "per_"  # per_query_type, per_genre, per_polarity, ...


class TrialSystemAttr:
    """System attributes of a trial (not shown by the dashboard)."""

    WORKER = "search:worker"  # HOST:PID of the worker running the trial
    # Written by Optuna itself: a re-run of a dead worker's trial names it, an enqueued trial
    # holds its fixed parameters.
    FAILED_TRIAL = "failed_trial"
    RETRY_HISTORY = "retry_history"
    FIXED_PARAMS = "fixed_params"


class StudyAttr:
    """User attributes of a study."""

    SPEC = "search:spec"  # the spec it was created with (with its --set values)
    DEFAULTS = "search:defaults"  # the objective's defaults when it was created: what its runs fill in
    BASELINE = "search:baseline"  # a computed baseline: {value, source, slices}
    READY = "search:ready"  # its creator has recorded the spec and enqueued the known configs
    CONFIRMED = "search:confirmed"  # per source trial: confirmed test figures (search confirm)


class StudySystemAttr:
    """System attributes of a study."""

    RENDER_REQUEST = "search:render_request"  # a worker asks for the dashboard to be re-rendered
    PLOT_DIGEST_PREFIX = "search:plot_digest:"  # + plot id: the digest of the stored plot
