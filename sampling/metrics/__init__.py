"""Scoring generated samples: FID, KID and precision / recall of images (Inception) and of
audio (the project's spectrogram classifier), and class accuracy (README, "FID", "Audio
FID", "Class accuracy").

- ``cache``: the cache folder and its checksummed files, keyed and checked on every read
- ``reference``: what a reference is (parser, dataset, fingerprint, the one cache-key rule)
- ``features``: features through torch-fidelity's loop, reference features cached
- ``distances``: Fréchet distance, KID, precision / recall from features
- ``inception``: the offline FID Inception network
- ``scorer``: the shared scorer and report of every scoring command
- ``image_fid``, ``audio_fid``, ``class_accuracy``: one folder scorer per metric
- ``inputs``: folders of images and audio files as datasets
"""

from engine.torchvision_compat import ensure_torchvision

# every module here imports torch-fidelity, which imports torchvision: the shim goes first
# (engine/torchvision_compat.py), once for the whole package
ensure_torchvision()
