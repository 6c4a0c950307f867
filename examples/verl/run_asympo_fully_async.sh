#!/usr/bin/env bash
# ASymPO on verl's fully-async trainer (verl 0.9.x, GPUs, vLLM rollout). Adapt paths and GPU counts.
#   pip install 'asympo[verl]' 'verl[vllm]'      # verl's GPU stack, from verl's install docs
#   MODEL=Qwen/Qwen3-0.6B TRAIN=~/data/gsm8k/train.parquet VAL=~/data/gsm8k/test.parquet \
#       bash examples/verl/run_asympo_fully_async.sh [more hydra overrides]
# The ASymPO settings live in examples/verl/asympo/fully_async.yaml (+asympo=fully_async);
# `bash examples/verl/run_asympo_fully_async.sh --cfg job` prints the composed config without training.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

MODEL=${MODEL:-Qwen/Qwen3-0.6B}
TRAIN=${TRAIN:-$HOME/data/gsm8k/train.parquet}
VAL=${VAL:-$HOME/data/gsm8k/test.parquet}
ROLLOUT_GPUS=${ROLLOUT_GPUS:-4}   # GPUs generating
TRAIN_GPUS=${TRAIN_GPUS:-4}       # GPUs training
LOSS=${LOSS:-asympo}              # asympo | spo

python -m verl.experimental.fully_async_policy.fully_async_main \
    --config-dir "$here" +asympo=fully_async \
    actor_rollout_ref.actor.policy_loss.loss_mode="$LOSS" \
    actor_rollout_ref.model.path="$MODEL" \
    data.train_files="$TRAIN" \
    data.val_files="$VAL" \
    data.max_prompt_length=512 \
    data.max_response_length=1024 \
    data.train_batch_size=0 \
    data.gen_batch_size=1 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.mode=async \
    actor_rollout_ref.hybrid_engine=False \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.use_dynamic_bsz=True \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192 \
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=8192 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    trainer.nnodes=1 \
    trainer.n_gpus_per_node="$TRAIN_GPUS" \
    rollout.nnodes=1 \
    rollout.n_gpus_per_node="$ROLLOUT_GPUS" \
    rollout.total_rollout_steps=51200 \
    async_training.staleness_threshold=0.5 \
    async_training.trigger_parameter_sync_step=4 \
    async_training.require_batches=1 \
    async_training.partial_rollout=True \
    trainer.logger='[console]' \
    trainer.project_name=asympo \
    trainer.experiment_name="fully-async-$LOSS" \
    "$@"
