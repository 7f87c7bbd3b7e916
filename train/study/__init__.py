"""A reproducible comparison of the pretraining losses: ``softcon study CONFIG`` (``make study``).

Does soft multi-label contrast (SoftCon) beat hard contrast on locations and labels it never trained
on? One study curates a synthetic archive, pretrains the same backbone with an identical budget for
every method and seed, evaluates each on the archive's test split against the Dynamic World labels
(in-domain) and the reference land cover (transfer, :mod:`pipeline.sources.synthetic.reference`),
and writes ``docs/study.md``.

* :mod:`.config`: the study YAML (:class:`StudyConfig`).
* :mod:`.plan`: the (method, seed) units and where their outputs live (how resuming detects work done).
* :mod:`.runner`: curation, pretraining, evaluation per unit (:func:`run_study`).
* :mod:`.similarity`: label vs embedding similarity of test pairs (SoftCon's mechanism).
* :mod:`.aggregate`: mean ± std over seeds with bootstrap intervals.
* :mod:`.report`: docs/study.md and its figures.
"""

from __future__ import annotations

from train.study.config import StudyConfig, load_study_config, pretrain_config_for, study_config_path
from train.study.plan import Unit, plan_units
from train.study.runner import run_study

__all__ = ["StudyConfig", "Unit", "load_study_config", "plan_units", "pretrain_config_for", "run_study",
           "study_config_path"]
