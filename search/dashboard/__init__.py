"""What optuna-dashboard shows: the study's and each trial's note (``notes``), the plots against
target and baseline (``plots``), written after every trial with concurrent workers' renders
coalesced (``refresh``), and the multi-GPU speed-up (``scaling``); how ``search dashboard``
serves it: read-only unless told, to its own names only (``serve``)."""
