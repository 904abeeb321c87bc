#!/usr/bin/env bash
# vaak-16k on the GPU machine in one device call: adversarial training from the bundled
# checkpoint for MINUTES, the codec training bench (vaak vs PyTorch) on the GPU, and
# `vaak codec eval` of the result and of the bundled model on held-out audio.
#
# Two halves (see tools/gpu/README.md):
#   bash tools/gpu/codec-run.sh prepare        # HERE: builds and stages everything in .gpu/
#   bash .gpu/codec-run.sh run MINUTES [BATCH] # THERE (the `run` tool, `.gpu` carried)
#
# What comes back under $OUT: export.tgz (config.json + model.safetensors of the trained
# codec), metrics.jsonl, train.log, gpu-mem.txt (nvidia-smi every 2 s), bench-train.json +
# bench-train.txt, eval-{bundled,trained}-{2,8}.json, info.txt, times.txt.
set -u
MODE=${1:?prepare or run}
shift

if [ "$MODE" = prepare ]; then
  # Run from the repository root on the build machine (no GPU needed).
  set -e
  ROOT=$PWD
  G=$ROOT/.gpu
  PY=${VAAK_PYTHON:-tools/fixtures/.venv/bin/python}
  mkdir -p "$G"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || grep -qx '/.gpu/' .gitignore || echo /.gpu/ >> .git/info/exclude
  if [ ! -f "$G/vaak.xz" ]; then
    # ~20 min on 2 busy cores (nvcc on candle-kernels); see /work/shared/gpu/README.md.
    bash ../shared/gpu/build-cuda.sh -p vaak-cli 2>/dev/null || bash /work/shared/gpu/build-cuda.sh -p vaak-cli
    strip -o "$G/vaak" /tmp/vaak-cuda/target/release/vaak
    xz -f -T2 "$G/vaak"
  fi
  VAAK=${VAAK:-target/release/vaak}
  # Training corpus: 25 min of espeak-ng speech in the four languages as FLAC (~30 MB; the
  # carry limit is 64 MiB with the 17 MB binary). Held-out: 40 utterances, another seed.
  if [ ! -d "$G/corpus" ]; then
    "$VAAK" data synth --out /tmp/gpu-synth --langs en,ru,hi,te --hours 0.42 --seed 1
    "$PY" tools/gpu/to_flac.py /tmp/gpu-synth/wav "$G/corpus"
  fi
  if [ ! -d "$G/heldout" ]; then
    "$VAAK" data synth --out /tmp/gpu-heldout --utterances 40 --seed 2
    "$PY" tools/gpu/to_flac.py /tmp/gpu-heldout/wav "$G/heldout"
  fi
  cp tools/gpu/codec-run.sh tools/gpu/codec-adv.yaml "$G/"
  du -sh "$G"
  echo "prepared; on the GPU machine: bash .gpu/codec-run.sh run 6"
  exit 0
fi

[ "$MODE" = run ] || { echo "unknown mode $MODE (prepare or run)"; exit 2; }
MIN=${1:?minutes}
BATCH=${2:-16}
: "${OUT:?OUT must be set (the run tool sets it)}"
T0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - T0 )) s" >> "$OUT/times.txt"; }
SP=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$(ls -d $SP/nvidia/cu13/lib $SP/nvidia/*/lib 2>/dev/null | paste -sd:)
export RUST_BACKTRACE=0
G=$PWD/.gpu
[ -x /tmp/vaak ] || { xz -dc "$G/vaak.xz" > /tmp/vaak && chmod +x /tmp/vaak; }
V=/tmp/vaak
$V info > "$OUT/info.txt" 2>&1
nvidia-smi >> "$OUT/info.txt" 2>&1
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"; sleep 2; done ) > "$OUT/gpu-mem.txt" &
M=$!
stamp start

# 1. Train: adversarial stage on from step 0, initialised from the bundled vaak-16k export
#    (weights + codebooks), stopped by SIGINT after MINUTES (checkpoint + export then).
RUN=/tmp/run
if [ -d $RUN/checkpoints ]; then R=--resume; else R=; fi
timeout -s INT -k 60 $((MIN * 60)) $V train codec --data "$G/corpus" --out $RUN \
  --config "$G/codec-adv.yaml" --init models/vaak-16k --batch "$BATCH" --device cuda:0 \
  --no-progress $R > "$OUT/train.log" 2>&1
echo "exit $?" >> "$OUT/train.log"
stamp trained
cp $RUN/metrics.jsonl "$OUT/" 2>/dev/null
tar -C $RUN -czf "$OUT/export.tgz" export 2>/dev/null
cp -r $RUN/plots "$OUT/plots" 2>/dev/null

# 2. Held-out quality of the trained and the bundled codec at 2 and 8 codebooks (`codec eval`
#    runs on the CPU: 16 cores there). PESQ/STOI: tools/codec_quality.py here, on export.tgz.
for n in 2 8; do
  timeout 120 $V codec eval "$G/heldout" --weights $RUN/export --num-codebooks $n \
    --json "$OUT/eval-trained-$n.json" > "$OUT/eval-trained-$n.txt" 2>&1
  timeout 120 $V codec eval "$G/heldout" --num-codebooks $n \
    --json "$OUT/eval-bundled-$n.json" > "$OUT/eval-bundled-$n.txt" 2>&1
done
stamp evaluated

# 3. The training bench on the GPU: vaak against the PyTorch peer (the machine's torch venv),
#    batch 8 and 32, f32 and bf16, reconstruction only and adversarial (published sizes).
timeout 240 $V bench train --device cuda:0 --batch 8,32 --dtypes f32,bf16 --stages recon,adv \
  --min-time 5 --warmup 3 --python /opt/torch/.venv/bin/python \
  --json "$OUT/bench-train.json" > "$OUT/bench-train.txt" 2>&1
echo "exit $?" >> "$OUT/bench-train.txt"
stamp benched
kill $M
grep -o '"step":[0-9]*\|"steps_per_s":[0-9.]*' "$OUT/metrics.jsonl" | paste - - | tail -3
tail -3 "$OUT/train.log"
cat "$OUT/bench-train.txt" | head -30
cat "$OUT/times.txt"
