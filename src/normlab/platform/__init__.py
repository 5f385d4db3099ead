"""Where a job runs: threads and cores, devices and clusters (SLURM, its signals and requeue),
the sweep launcher's bookkeeping, mixed precision the machine supports, provenance and W&B.
"""
