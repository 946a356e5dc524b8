"""Process plumbing both CLIs share: errors, command-line handling, devices, signals, seeds, health."""
