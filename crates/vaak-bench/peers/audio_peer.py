"""Python peer for `vaak bench audio`: the same cases, on the same files, with the reference
libraries (soundfile, torchaudio, librosa, transformers, speechbrain).

Run by `vaak bench audio` (embedded in the binary); by hand:
    python crates/vaak-bench/peers/audio_peer.py --files a.wav b.wav --threads 1 --json out.json
Prints nothing on success; writes {"cases": {case: [{"implementation", "seconds", "threads"}]}}.
A library that is missing is skipped and named under "skipped".
"""

import argparse
import json

import numpy as np
import soundfile as sf

from bench_common import median_time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.8)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cases, skipped = {}, []

    def add(case, impl, fn):
        cases.setdefault(case, []).append(
            {"implementation": impl, "seconds": median_time(fn, args.min_time)[0], "threads": args.threads}
        )

    def read_mono(path):
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        return data.mean(axis=1), sr

    import torchaudio
    import torchaudio.functional as AF

    def decode_torchaudio():
        for f in args.files:
            x, sr = read_mono(f)
            AF.resample(torch.from_numpy(x), sr, 16000)

    add("decode+resample->16k", "soundfile+torchaudio.resample", decode_torchaudio)

    try:
        import librosa

        def decode_librosa():
            for f in args.files:
                x, sr = read_mono(f)
                librosa.resample(x, orig_sr=sr, target_sr=16000, res_type="soxr_hq")

        add("decode+resample->16k", "soundfile+librosa(soxr_hq)", decode_librosa)
    except ImportError:
        skipped.append("librosa")

    clips = []
    for f in args.files:
        x, sr = read_mono(f)
        clips.append(AF.resample(torch.from_numpy(x), sr, 16000).numpy().astype(np.float32))

    try:
        from transformers import WhisperFeatureExtractor

        for n in (80, 128):
            fe = WhisperFeatureExtractor(feature_size=n)
            add(f"whisper log-mel {n} (30 s window)", "transformers WhisperFeatureExtractor",
                lambda fe=fe: [fe(c, sampling_rate=16000, return_tensors="np") for c in clips])
    except ImportError:
        skipped.append("transformers")

    from torchaudio.compliance import kaldi

    tclips = [torch.from_numpy(c).unsqueeze(0) for c in clips]
    add("kaldi fbank 80", "torchaudio.compliance.kaldi.fbank",
        lambda: [kaldi.fbank(c, num_mel_bins=80, dither=0.0) for c in tclips])

    try:
        from speechbrain.lobes.features import Fbank

        fb = Fbank(n_mels=80)
        with torch.no_grad():
            add("speechbrain Fbank 80", "speechbrain Fbank", lambda: [fb(c) for c in tclips])
    except ImportError:
        skipped.append("speechbrain")

    meta = {"torch": torch.__version__, "torchaudio": torchaudio.__version__}
    with open(args.json, "w") as fh:
        json.dump({"cases": cases, "skipped": skipped, "versions": meta}, fh)


if __name__ == "__main__":
    main()
