"""Python peer of `vaak bench codec`: transformers' MimiModel (PyTorch), streamed frame by frame.

Two modes:

- `--make-weights DIR [--seed S]`: builds a full-size `MimiModel(MimiConfig())` (the kyutai/mimi
  architecture) with seeded random weights, refills every RVQ codebook with entries fitted to
  the residuals of seeded audio (transformers initialises them to zero, which would make every
  code 0), and saves `config.json` + `model.safetensors` in DIR (`save_pretrained`, the
  published flat layout). vaak and candle-transformers load the same files.
- `--weights DIR --input WAV --json OUT`: per-frame streaming latency at each `--threads`
  count (`torch.set_num_threads`). Encode streams for real (`use_streaming=True`: conv padding
  cache + encoder KV cache). transformers has no streaming decoder (its SEANet decoder's
  transposed convs keep no state), so each step decodes the last `--window` frames of codes
  and keeps the newest frame's samples; the JSON says so.

Run by `vaak bench codec` (embedded in the binary); by hand:
  /work/fxvenv/bin/python crates/vaak-bench/peers/codec_peer.py --make-weights /tmp/mimi-random
"""

import argparse
import json
import time

import numpy as np
import soundfile as sf
import torch
import transformers
from transformers import MimiConfig, MimiModel


def seeded_audio(gen, seconds, sr=24000):
    t = torch.arange(int(seconds * sr), dtype=torch.float32) / sr
    f = 120.0 + 600.0 * torch.rand(4, generator=gen)
    a = 0.05 + 0.2 * torch.rand(4, generator=gen)
    x = sum(a[i] * torch.sin(2 * torch.pi * f[i] * t) for i in range(4))
    x = x * torch.sin(torch.pi * 3.0 * t).abs()
    return (x + 0.02 * torch.randn(t.shape[0], generator=gen))[None, None]


@torch.no_grad()
def refill(rvq, latents, gen):
    x = latents
    if rvq.input_proj is not None:
        x = rvq.input_proj(x)
    residual = x.permute(0, 2, 1).reshape(-1, x.shape[1])
    for layer in rvq.layers:
        cb = layer.codebook
        k = cb.embed_sum.shape[0]
        embed = residual.mean(0, keepdim=True) + residual.std(0, keepdim=True) * torch.randn(
            k, residual.shape[1], generator=gen
        )
        usage = 0.5 + 1.5 * torch.rand(k, generator=gen)
        cb.cluster_usage.copy_(usage)
        cb.embed_sum.copy_(embed * usage[:, None])
        cb.initialized.fill_(1.0)
        cb._embed = None
        dist = torch.cdist(residual[None], cb.embed[None])[0]
        residual = residual - cb.embed[dist.argmin(-1)]


@torch.no_grad()
def make_weights(out_dir, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MimiModel(MimiConfig()).eval()
    latents = model.encoder(seeded_audio(gen, 4.0)).latents
    refill(model.quantizer.semantic_residual_vector_quantizer, latents, gen)
    refill(model.quantizer.acoustic_residual_vector_quantizer, latents, gen)
    model.save_pretrained(out_dir)
    print(f"codec_peer: wrote random full-size Mimi to {out_dir}")


def stats(xs):
    a = np.asarray(xs) * 1e3
    return {
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
    }


@torch.no_grad()
def stream(model, audio, hop, nq, window, n_frames):
    enc, dec, cpu, codes_all, past = [], [], [], [], []
    pkv, pc = None, None
    for i in range(n_frames):
        chunk = audio[:, :, i * hop : (i + 1) * hop]
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = model.encode(
            chunk,
            num_quantizers=nq,
            encoder_past_key_values=pkv,
            padding_cache=pc,
            use_streaming=True,
        )
        t1 = time.perf_counter()
        pkv, pc = out.encoder_past_key_values, out.padding_cache
        codes = out.audio_codes
        if codes.shape[-1] > 0:
            past.append(codes)
            win = torch.cat(past[-window:], dim=-1)
            model.decode(win).audio_values[..., -hop:]
        t2 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        codes_all.extend(codes[0].T.tolist())
    return enc, dec, cpu, codes_all


def bench(args):
    model = MimiModel.from_pretrained(args.weights).eval()
    cfg = model.config
    hop = int(round(cfg.sampling_rate / cfg.frame_rate))
    audio, sr = sf.read(args.input, dtype="float32")
    if sr != cfg.sampling_rate:
        raise SystemExit(f"{args.input}: {sr} Hz, expected {cfg.sampling_rate}")
    audio = torch.from_numpy(audio)[None, None]
    n_frames = audio.shape[-1] // hop
    rows, codes_out = [], None
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        stream(model, audio, hop, args.codebooks, args.window, min(args.warmup, n_frames))
        enc, dec, cpu, codes = stream(model, audio, hop, args.codebooks, args.window, n_frames)
        total = [a + b for a, b in zip(enc, dec)]
        rows.append(
            {
                "implementation": "transformers MimiModel (PyTorch)",
                "threads": threads,
                "torch_threads": torch.get_num_threads(),
                "frames": n_frames,
                "hop": hop,
                "sample_rate": cfg.sampling_rate,
                "encode": stats(enc),
                "decode": stats(dec),
                "total": stats(total),
                "cpu": stats(cpu),
                "rtf": float(np.mean(total)) / (hop / cfg.sampling_rate),
            }
        )
        if codes_out is None:
            codes_out = codes
    result = {
        "rows": rows,
        "codes": codes_out,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "notes": [
            "transformers: encode streams (use_streaming=True, padding cache + KV cache); "
            f"decode has no streaming path, so each step decodes the last {args.window} frames "
            "and keeps the newest frame"
        ],
    }
    with open(args.json, "w") as f:
        json.dump(result, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--make-weights")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--weights")
    p.add_argument("--input")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--codebooks", type=int, default=8)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
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
