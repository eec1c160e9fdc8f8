"""From runs to answers: pure statistics, verdicts and effects, plots and rendered reports.

`stats` imports neither torch nor MLflow."""
