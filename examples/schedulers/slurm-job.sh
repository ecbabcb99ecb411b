#!/bin/bash
# Slurm: a requeued job (preemption, a node failure, `scontrol requeue`) runs this again and resumes the
# run from its journal (docs/lifecycle.md). AGENTBOX_HOME and the workspace are on shared storage, used
# by one node at a time.
#SBATCH --job-name=fix-the-tests
#SBATCH --requeue
#SBATCH --signal=B:TERM@60
#SBATCH --time=02:30:00
export AGENTBOX_HOME=/shared/agentbox
cd /shared/work/repo
exec agentbox run --name "fix-the-tests-$SLURM_JOB_ID" --resume-if-exists --model openai:gpt-4o-mini \
  --max-steps 60 --timeout 2h --task-file /shared/work/TASK.md
