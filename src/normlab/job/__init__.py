"""Running a job: the experiment (data, model, Lightning module), the harness that trains it
(callbacks, loggers, Trainer), the optimizer, resuming, checkpoint files and evaluation.
"""
