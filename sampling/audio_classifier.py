"""The audio classifier's former module: its names now live in :mod:`sampling.classifier`,
one classifier for images and spectrograms. Kept because model cards written before that,
and code outside this repository, import ``AudioClassifier`` from here."""

from sampling.classifier.augment import augment_spectrograms
from sampling.classifier.config import (
    RESUMABLE_CHANGES,
    AugmentConfig,
    ClassifierConfig,
    ClassifierEvalConfig,
    ClassifierModelConfig,
    load_classifier_config,
)
from sampling.classifier.evaluate import accuracy_report, evaluate_classifier
from sampling.classifier.model import AudioClassifier
from sampling.classifier.train import format_summary, resolve_data, train_classifier

__all__ = [
    "RESUMABLE_CHANGES", "AudioClassifier", "AugmentConfig", "ClassifierConfig", "ClassifierEvalConfig",
    "ClassifierModelConfig", "accuracy_report", "augment_spectrograms", "evaluate_classifier",
    "format_summary", "load_classifier_config", "resolve_data", "train_classifier",
]
