"""Services the tests run for real, on this machine: a Ceph RADOS Gateway (`ceph_rgw`, the S3
endpoint of the storage tests) and a Slurm cluster (`slurm_cluster`, for the sbatch script's
tests). The test fixtures import them as `support.*` (tests/ is on pytest's path); by hand, and
for the data benchmark's `--with-rgw`, they start and stop from the repository root with
`python -m tests.support.ceph_rgw start|stop --dir D` (and likewise `slurm_cluster`)."""
