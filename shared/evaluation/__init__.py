"""The eval side: scoring a checkpoint, the daemon's coordination, best/ export, splits and folds."""
