"""The lineage explorer, `germline ui`: a read-only page over a lake's lineage graph, its
datasets, models, probes and reports, served on 127.0.0.1 (`app.py`), answering from one
in-memory snapshot of the graph (`explorer.py`) and the lake's own files (`details.py`)."""

from germline.pipelines.ui.serving import bind, run_ui

__all__ = ["bind", "run_ui"]
