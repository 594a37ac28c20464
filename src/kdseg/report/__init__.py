"""Everything after evaluation: tables (``tables``, ``paper``, ``formats``), paired statistics
(``stats``), ranking (``ranking``), training cost (``cost``), the ``summarize`` stage
(``summary``), figures (``figures``, ``overlays``), the HTML report (``html``) and its MLflow
summary run (``mlflow_summary``). File names of both stages: ``files``."""
