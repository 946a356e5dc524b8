"""Metrics a task declares: streaming objects with `update(outputs, targets)` and `compute()` (torchmetrics'
protocol, `base`), the small artifacts some compute instead of a number (`artifacts`), and the built-in
families: classification, regression and language modelling."""
