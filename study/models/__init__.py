"""Models out of a study: which trial is best (choose.py), what its stored weights are (checkpoints.py), its model
loaded (load.py), run on new images (predict.py) and exported as a torch.export program (export.py)."""
