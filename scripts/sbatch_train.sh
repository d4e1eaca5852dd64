#!/usr/bin/env bash
# One long training run as a SLURM batch job; every argument goes to `python -m illustrious.run`.
#
#   sbatch scripts/sbatch_train.sh trainer=ddp trainer.accelerator=gpu backbone=sdxl backbone.weights=/data/sdxl
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 scripts/sbatch_train.sh trainer=fsdp2 ...
#   sbatch --partition=cpu --gpus-per-node=0 --ntasks-per-node=2 scripts/sbatch_train.sh trainer=ddp trainer.accelerator=cpu
#
# srun starts one task per device (ntasks-per-node = GPUs per node); Lightning's SLURMEnvironment reads the
# ranks and the master address from SLURM, and trainer.devices/num_nodes are set from the allocation here.
# 90 seconds before the time limit SLURM sends USR2 to every task (the signal submitit's hydra/launcher=slurm
# uses too): the run saves its checkpoint at the end of the step, rank 0 runs `scontrol requeue`, and the tasks
# exit with 140 (128 + SIGUSR2); a signal that comes while the model is still loading is acted on after the first
# step. Lightning's own SLURM auto-requeue is off (it would write hpc_ckpt_N.ckpt files
# our loader does not read). The requeued job keeps its id, so it writes to the same RUN_DIR and resumes there
# from the newest complete checkpoint. A preemption (SLURM's SIGTERM, with PreemptMode=REQUEUE) saves the same way;
# rank 0 sees the job's PreemptTime and requeues it (SLURM does not requeue a preempted job that exits within the
# partition's GraceTime), and the tasks exit 143. A plain `scancel` (SIGTERM, no PreemptTime) saves and exits 143 without a requeue.
# Ranks act on the same signal at the same step even when it reaches them at different instants.
#SBATCH --job-name=illustrious
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR2@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

RUN_DIR=${RUN_DIR:-outputs/slurm/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
PYTHON=${PYTHON:-python}
echo "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}: ${SLURM_JOB_NUM_NODES} node(s) x ${SLURM_NTASKS_PER_NODE} task(s) -> ${RUN_DIR}"
srun --kill-on-bad-exit=1 "$PYTHON" -m illustrious.run \
    trainer.num_nodes="${SLURM_JOB_NUM_NODES}" trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    hydra.run.dir="${RUN_DIR}" "$@"
