"""Python peer of `vaak bench encodec`: transformers' EncodecModel (PyTorch), whole-clip encode.

Two modes:

- `--make-weights DIR [--seed S]`: builds a full-size `EncodecModel(EncodecConfig())` (the
  facebook/encodec_24khz architecture) with seeded random weights, refills every RVQ codebook
  with entries fitted to the residuals of seeded audio (transformers initialises them to zero,
  which would make every code 0), and saves `config.json` + `model.safetensors` in DIR
  (`save_pretrained`, the published layout). vaak loads the same files.
- `--weights DIR --inputs WAV... --json OUT`: median wall and process-CPU seconds of `model.encode` at each
  `--threads` count (`torch.set_num_threads`) and `--bandwidth`, one clip per call
  (`batch 1`) and, with several inputs, all of them as one zero-padded batch with a padding
  mask (`batch N`, transformers' batched encode), under `torch.inference_mode()`. Writes the
  codes of the first clip for an agreement check.

Run by `vaak bench encodec` (embedded in the binary); by hand:
  tools/fixtures/.venv/bin/python crates/vaak-bench/peers/encodec_peer.py --make-weights /tmp/encodec-random
"""

import argparse
import json
import statistics
import time

import soundfile as sf
import torch
import transformers
from transformers import EncodecConfig, EncodecModel


def wall_and_cpu(fn, min_time, min_iters=2):
    """Median wall and process-CPU seconds per call (after one warm-up call), repeating until
    `min_time` seconds and `min_iters` calls have passed; and what the warm-up returned."""
    out = fn()
    wall, cpu = [], []
    start = time.perf_counter()
    while len(wall) < min_iters or time.perf_counter() - start < min_time:
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), out


def seeded_audio(gen, seconds, sr=24000):
    t = torch.arange(int(seconds * sr), dtype=torch.float32) / sr
    f = 150.0 + 800.0 * torch.rand(3, generator=gen)
    a = 0.1 + 0.3 * torch.rand(3, generator=gen)
    x = sum(a[i] * torch.sin(2 * torch.pi * f[i] * t) for i in range(3))
    return (x + 0.05 * torch.randn(t.shape[0], generator=gen))[None, None]


@torch.no_grad()
def refill_codebooks(model, audio, gen):
    emb = model.encoder(audio)
    residual = emb.permute(0, 2, 1).reshape(-1, emb.shape[1])
    for layer in model.quantizer.layers:
        cb = layer.codebook
        k = cb.embed.shape[0]
        embed = residual.mean(0, keepdim=True) + residual.std(0, keepdim=True) * torch.randn(
            k, residual.shape[1], generator=gen
        )
        cb.embed.copy_(embed)
        cb.embed_avg.copy_(embed)
        cb.cluster_size.fill_(1.0)
        residual = residual - embed[torch.cdist(residual[None], embed[None])[0].argmin(-1)]


@torch.no_grad()
def make_weights(out_dir, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = EncodecModel(EncodecConfig()).eval()
    refill_codebooks(model, seeded_audio(gen, 2.0), gen)
    model.save_pretrained(out_dir)
    print(f"encodec_peer: wrote random full-size EnCodec 24 kHz to {out_dir}")


def bench(args):
    model = EncodecModel.from_pretrained(args.weights).eval()
    sr = model.config.sampling_rate
    clips = []
    for path in args.inputs:
        audio, rate = sf.read(path, dtype="float32")
        if rate != sr:
            raise SystemExit(f"{path}: {rate} Hz, expected {sr}")
        clips.append(torch.from_numpy(audio))
    longest = max(c.shape[0] for c in clips)
    batch = torch.zeros(len(clips), 1, longest)
    mask = torch.zeros(len(clips), longest, dtype=torch.long)
    for i, c in enumerate(clips):
        batch[i, 0, : c.shape[0]] = c
        mask[i, : c.shape[0]] = 1
    rows, codes = [], None
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        with torch.inference_mode():

            def one_by_one():
                return [model.encode(c[None, None], bandwidth=args.bandwidth).audio_codes for c in clips]

            secs, cpu, out = wall_and_cpu(one_by_one, args.min_time)
            if codes is None:
                codes = out[0][0, 0].tolist()  # [n_q, frames] of the first clip
            rows.append({"case": "batch 1", "implementation": "transformers EncodecModel (PyTorch)",
                         "threads": threads, "torch_threads": torch.get_num_threads(),
                         "seconds": secs, "cpu_seconds": cpu})
            if len(clips) > 1:

                def batched():
                    return model.encode(batch, padding_mask=mask, bandwidth=args.bandwidth)

                secs, cpu, _ = wall_and_cpu(batched, args.min_time)
                rows.append({"case": f"batch {len(clips)}",
                             "implementation": "transformers EncodecModel (PyTorch)",
                             "threads": threads, "torch_threads": torch.get_num_threads(),
                             "seconds": secs, "cpu_seconds": cpu})
    with open(args.json, "w") as f:
        json.dump(
            {
                "rows": rows,
                "codes": codes,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            },
            f,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--make-weights")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--weights")
    p.add_argument("--inputs", nargs="+")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--bandwidth", type=float, default=6.0)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--json")
    args = p.parse_args()
    if args.make_weights:
        make_weights(args.make_weights, args.seed)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"weights": args.make_weights}, f)
        return
    bench(args)


if __name__ == "__main__":
    main()
