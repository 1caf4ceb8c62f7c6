"""`hqvae pipeline CONFIG`: tokenizer -> encode -> priors -> sample -> FID -> report, in one run.

    config.py    the config (one image and / or audio track) and the checks before any stage
    stages.py    one function per stage of a track
    resume.py    which stages are finished, and whether a run directory is this pipeline's
    run.py       the whole run: every stage not finished yet, track by track
    summary.py   the headline numbers and the lines printed at the end
"""

from hqvae.pipeline.config import (
    EncodeConfig,
    PipelineConfig,
    SampleConfig,
    ScoreConfig,
    TrackConfig,
    check_classifier_runs,
    check_sample_labels,
    check_trackers,
    load_pipeline_config,
    stage_configs,
)
from hqvae.pipeline.resume import RANDOM_SAMPLE_KEYS, check_run_dir
from hqvae.pipeline.run import run_pipeline, run_track
from hqvae.pipeline.stages import (
    run_classifier,
    run_encode,
    run_prior,
    run_samples,
    run_score,
    run_tokenizer,
)
from hqvae.pipeline.summary import format_summary, headline

__all__ = [
    "RANDOM_SAMPLE_KEYS", "EncodeConfig", "PipelineConfig", "SampleConfig", "ScoreConfig", "TrackConfig",
    "check_classifier_runs", "check_run_dir", "check_sample_labels", "check_trackers", "format_summary", "headline", "load_pipeline_config",
    "run_classifier", "run_encode", "run_pipeline", "run_prior", "run_samples", "run_score",
    "run_tokenizer", "run_track", "stage_configs",
]
