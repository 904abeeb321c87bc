"""Codec quality with the standard speech metrics: PESQ-WB, STOI, SI-SDR and vaak's mel distance.

Two ways to call it (fixture venv: `tools/fixtures/.venv/bin/python`, which has `pesq` and
`pystoi` pinned in tools/fixtures/requirements.txt):

1. Two directories of WAVs, matched by relative path:

       python tools/codec_quality.py --ref clips/ --dec decoded/ --json q.json

2. A codec and a corpus: runs `vaak codec roundtrip` on every clip at each codebook count
   (2, 4 and 8 = 0.5 / 1 / 2 kbps for vaak-16k) and scores the reconstructions:

       python tools/codec_quality.py --corpus heldout/wav --vaak target/release/vaak \
           [--weights models/vaak-16k] [--codebooks 2,4,8] --json q.json

Metrics, per clip, then mean and median over the clips:
- PESQ-WB: ITU-T P.862.2 via the `pesq` package (`pesq(16000, ref, deg, 'wb')`), 16 kHz.
- STOI: `pystoi.stoi(ref, deg, 16000, extended=False)`.
- SI-SDR (dB): both zero-mean, `a = <e,r>/<r,r>`, `10 log10(|a r|^2 / |e - a r|^2)`, as
  `vaak_audio::metrics::si_sdr_db`.
- mel distance: `vaak_audio::metrics::MelDistance` with the settings `vaak codec eval` uses
  (FFT 512 / 1024 / 2048, hop N/4, periodic Hann, centred with zero padding, magnitude, 80 HTK
  mel filters peak 1 from 0 Hz to Nyquist, log10(mel + 1e-5), mean |difference|, mean over the
  resolutions).

Audio is read with soundfile; every clip must be 16 kHz mono (the codec's rate); pairs of
different length are cut to the shorter one (the codec pads the last frame).
Prints a table and writes JSON with --json.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
from pesq import pesq
from pystoi import stoi

SR = 16000


def si_sdr_db(ref, est):
    r = ref.astype(np.float64) - ref.mean()
    e = est.astype(np.float64) - est.mean()
    rr = float(np.dot(r, r))
    if rr == 0.0:
        raise ValueError("si_sdr: reference is constant")
    a = float(np.dot(r, e)) / rr
    t = a * r
    d = e - t
    tt, dd = float(np.dot(t, t)), float(np.dot(d, d))
    if dd == 0.0:
        return float("inf")
    if tt == 0.0:
        return float("-inf")
    return 10.0 * np.log10(tt / dd)


def htk_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def htk_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filters(sr, n_fft, n_mels, f_min=0.0, f_max=None):
    """Triangles in Hz between HTK-mel-spaced corners, peak 1, no area normalisation."""
    f_max = sr / 2.0 if f_max is None else f_max
    bins = n_fft // 2 + 1
    freqs = np.arange(bins) * sr / n_fft
    pts = htk_hz(np.linspace(htk_mel(f_min), htk_mel(f_max), n_mels + 2))
    fb = np.zeros((n_mels, bins))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        up = (freqs - lo) / max(c - lo, 1e-12)
        down = (hi - freqs) / max(hi - c, 1e-12)
        fb[m] = np.maximum(0.0, np.minimum(up, down))
    return fb


class MelDistance:
    def __init__(self, sr=SR, fft_sizes=(512, 1024, 2048), n_mels=80, log_eps=1e-5):
        self.res = []
        for n in fft_sizes:
            w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
            self.res.append((n, w, mel_filters(sr, n, n_mels)))
        self.log_eps = log_eps

    def log_mel(self, x, n, w, fb):
        hop = n // 4
        xp = np.concatenate([np.zeros(n // 2), x.astype(np.float64), np.zeros(n // 2)])
        frames = (len(xp) - n) // hop + 1
        idx = np.arange(n)[None, :] + hop * np.arange(frames)[:, None]
        mag = np.abs(np.fft.rfft(xp[idx] * w, axis=1))
        return np.log10(mag @ fb.T + self.log_eps)

    def distance(self, ref, est):
        tot = 0.0
        for n, w, fb in self.res:
            tot += float(np.mean(np.abs(self.log_mel(ref, n, w, fb) - self.log_mel(est, n, w, fb))))
        return tot / len(self.res)


def read(path):
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SR or x.shape[1] != 1:
        raise ValueError(f"{path}: need {SR} Hz mono, got {sr} Hz x {x.shape[1]} channel(s)")
    return x[:, 0]


def score(ref_path, dec_path, md):
    r, d = read(ref_path), read(dec_path)
    n = min(len(r), len(d))
    if n < SR // 4:
        raise ValueError(f"{ref_path}: under 0.25 s, PESQ needs more")
    r, d = r[:n], d[:n]
    try:
        p = float(pesq(SR, r, d, "wb"))
    except Exception as e:  # pesq refuses e.g. clips with no detected speech
        print(f"note: PESQ failed on {ref_path.name}: {e}", file=sys.stderr)
        p = float("nan")
    return {
        "clip": ref_path.name,
        "seconds": n / SR,
        "pesq_wb": p,
        "stoi": float(stoi(r, d, SR, extended=False)),
        "si_sdr_db": si_sdr_db(r, d),
        "mel_distance": md.distance(r, d),
    }


METRICS = ["pesq_wb", "stoi", "si_sdr_db", "mel_distance"]


def summary(rows):
    out = {"clips": len(rows)}
    for m in METRICS:
        v = [r[m] for r in rows if np.isfinite(r[m])]
        out[m] = {
            "mean": statistics.fmean(v) if v else float("nan"),
            "median": statistics.median(v) if v else float("nan"),
            "scored": len(v),
        }
    return out


def wavs(d):
    return sorted(p for p in pathlib.Path(d).rglob("*.wav"))


def roundtrip_all(args, clips, tmp):
    """`vaak codec roundtrip` of every clip at every codebook count; {n: {clip: decoded}}."""
    out = {}
    for n in args.codebooks:
        d = pathlib.Path(tmp) / f"nq{n}"
        d.mkdir()
        out[n] = {}
        for c in clips:
            dst = d / (c.stem + ".wav")
            cmd = [args.vaak, "codec", "roundtrip", str(c), str(dst), "--num-codebooks", str(n),
                   "--preset", args.preset]
            if args.weights:
                cmd += ["--weights", args.weights]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
            out[n][c] = dst
        print(f"roundtrip: {len(clips)} clips at {n} codebooks", file=sys.stderr)
    return out


def table(results):
    head = ["setting", "clips", "PESQ-WB mean / median", "STOI mean / median",
            "SI-SDR dB mean / median", "mel distance mean / median"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in results:
        fmt = {"pesq_wb": "{:.2f}", "stoi": "{:.3f}", "si_sdr_db": "{:.1f}", "mel_distance": "{:.3f}"}
        cells = [name, str(s["clips"])]
        for m in METRICS:
            f = fmt[m]
            cells.append(f"{f.format(s[m]['mean'])} / {f.format(s[m]['median'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", help="directory of reference WAVs (with --dec)")
    ap.add_argument("--dec", help="directory of decoded WAVs, same relative names as --ref")
    ap.add_argument("--corpus", help="directory of reference WAVs to run through the codec")
    ap.add_argument("--vaak", default="target/release/vaak", help="the vaak binary")
    ap.add_argument("--preset", default="vaak-16k")
    ap.add_argument("--weights", help="codec checkpoint dir (default: the bundled vaak-16k)")
    ap.add_argument("--codebooks", default="2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--frame-rate", type=float, default=25.0, help="codec frame rate (for kbps)")
    ap.add_argument("--bits", type=float, default=10.0, help="bits per code (log2 codebook size)")
    ap.add_argument("--json", help="write the per-clip results and summaries here")
    args = ap.parse_args()
    md = MelDistance()
    results, report = [], {"metrics": METRICS, "settings": []}
    if args.ref and args.dec:
        ref = pathlib.Path(args.ref)
        rows = []
        for r in wavs(ref):
            d = pathlib.Path(args.dec) / r.relative_to(ref)
            if not d.exists():
                raise SystemExit(f"{d}: no decoded file for {r}")
            rows.append(score(r, d, md))
        s = summary(rows)
        results.append(("decoded", s))
        report["settings"].append({"name": "decoded", "summary": s, "clips": rows})
    elif args.corpus:
        clips = wavs(args.corpus)
        if not clips:
            raise SystemExit(f"{args.corpus}: no .wav files")
        with tempfile.TemporaryDirectory() as tmp:
            dec = roundtrip_all(args, clips, tmp)
            for n in args.codebooks:
                rows = [score(c, dec[n][c], md) for c in clips]
                kbps = n * args.bits * args.frame_rate / 1000.0
                name = f"{n} codebooks ({kbps:g} kbps)"
                s = summary(rows)
                results.append((name, s))
                report["settings"].append({"name": name, "codebooks": n, "kbps": kbps,
                                           "summary": s, "clips": rows})
        report["codec"] = {"preset": args.preset, "weights": args.weights or "bundled",
                           "corpus": args.corpus}
    else:
        ap.error("give --ref and --dec, or --corpus")
    print(table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
