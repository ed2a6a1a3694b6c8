"""Running trials on one machine: the worker loop (``worker``), the one trial runner every caller
trains through (``runner``, ``reporting``, ``oom``), the events a running trial tells (``events``),
the live display (``display``), the study-wide budget (``budget``) and clean stops (``shutdown``)."""
