"""The train side: what train.py assembles around its loop (optimizer, data order, feedback, torchrun)."""
