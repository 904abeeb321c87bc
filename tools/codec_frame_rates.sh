#!/usr/bin/env bash
# The frame-rate comparison of docs/codec.md ("Why 25 Hz"): vaak-16k's config at 50, 25 and
# 12.5 Hz, trained from scratch for step counts that give each about the same CPU time, then
# scored at 2 kbps on held-out clips with tools/codec_quality.py (PESQ-WB, STOI, SI-SDR, mel).
# Usage (from the repository root, after `cargo build --release`):
#   tools/codec_frame_rates.sh WORKDIR [STEPS_25HZ]
# Step counts scale with each arm's measured cost per step (50 Hz 1.3x, 12.5 Hz 1.5x that of
# 25 Hz on a 2-core CPU); /usr/bin/time records each arm's CPU seconds in WORKDIR/frNN.log.
set -euo pipefail
work=${1:?usage: tools/codec_frame_rates.sh WORKDIR [STEPS_25HZ]}
steps25=${2:-700}
root=$(pwd)
vaak="$root/target/release/vaak"
py="$root/tools/fixtures/.venv/bin/python"
mkdir -p "$work" && cd "$work"
[ -d corpus ] || "$vaak" data synth --out corpus --langs en,ru,hi,te --hours 2 --seed 1
[ -d heldout ] || "$vaak" data synth --out heldout --langs en,ru,hi,te --utterances 40 --seed 2
base="$root/models/vaak-16k/train_config.yaml"
# arm ratios num_quantizers steps val-codebooks (the last = 2 kbps)
while read -r arm ratios nq steps vcb; do
  sed -e "s/ratios: \[8, 5, 4, 4\]/ratios: [$ratios]/" -e "s/num_quantizers: 8/num_quantizers: $nq/" \
      -e "s/default_codebooks: 8/default_codebooks: $nq/" "$base" > "$arm.yaml"
  rm -rf "$arm"
  /usr/bin/time -v "$vaak" train codec --data corpus/wav --out "$arm" --config "$arm.yaml" \
      --steps "$steps" --val-codebooks "$vcb" --no-progress > "$arm.log" 2>&1
  "$py" "$root/tools/codec_quality.py" --corpus heldout/wav --vaak "$vaak" --codebooks "$vcb" \
      --weights "$arm/export" --json "q_$arm.json"
  grep -E "User time|System time" "$arm.log"
done <<ARMS
fr50 8,5,4,2 4 $((steps25 * 10 / 13)) 1,2,4
fr25 8,5,4,4 8 $steps25 2,4,8
fr12 8,5,4,4,2 16 $((steps25 * 10 / 15)) 4,8,16
ARMS
