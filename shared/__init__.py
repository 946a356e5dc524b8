"""trainval's library: what train.py, eval.py and launch.py share (the train_dir protocol, checkpoints, config,
evaluation, loggers, metrics, tasks, training). A regular package, not a namespace one: installed, it never
merges with another distribution's `shared`, and `import shared` always finds this folder."""
