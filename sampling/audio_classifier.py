"""The audio classifier's former module: its names now live in :mod:`sampling.classifier`,
one classifier for images and spectrograms (issue 23). Kept because model cards written
before that, and code outside this repository, import ``AudioClassifier`` from here."""

from sampling.classifier import (
    RESUMABLE_CHANGES,
    AudioClassifier,
    AugmentConfig,
    ClassifierConfig,
    ClassifierEvalConfig,
    ClassifierModelConfig,
    accuracy_report,
    augment_spectrograms,
    evaluate_classifier,
    format_summary,
    load_classifier_config,
    resolve_data,
    train_classifier,
)

__all__ = [
    "RESUMABLE_CHANGES", "AudioClassifier", "AugmentConfig", "ClassifierConfig", "ClassifierEvalConfig",
    "ClassifierModelConfig", "accuracy_report", "augment_spectrograms", "evaluate_classifier",
    "format_summary", "load_classifier_config", "resolve_data", "train_classifier",
]
