"""Python peer for `vaak bench vc`: OpenVoice V2 tone-colour conversion with openvoice-cli 0.0.5
(PyTorch, CPU) on the same converter checkpoints and the same clips as vaak.

Two modes, both run by `vaak bench vc` (embedded in the binary):
    python crates/vaak-bench/peers/vc_peer.py --make-full DIR --json out.json
        writes a seeded random full-size converter (the published V2 config.json sizes) as
        DIR/config.json + DIR/checkpoint.pth ({'model': state_dict}, weight_g/weight_v).
    python crates/vaak-bench/peers/vc_peer.py --converter NAME=DIR ... --clips a.wav b.wav ... \
            --reference ref.wav --counts 1 8 32 --threads N --min-time 0.5 --json out.json
        times `spectrogram_torch` + `SynthesizerTrn.voice_conversion` (tau 0.3) over the first
        `count` clips, one clip per call as ToneColorConverter.convert does; writes
        {"cases": {"<NAME> x<count>": [{"implementation", "seconds", "cpu_seconds", "threads"}]},
        "versions"}.
Needs: pip install --no-deps openvoice-cli==0.0.5.
"""

import argparse
import json
import statistics
import time

import numpy as np
import soundfile as sf
import torch

from bench_common import median_time

FULL_CONFIG = {
    "_version_": "v2",
    "data": {"sampling_rate": 22050, "filter_length": 1024, "hop_length": 256,
             "win_length": 1024, "n_speakers": 0},
    "model": {"zero_g": True, "inter_channels": 192, "hidden_channels": 192,
              "filter_channels": 768, "n_heads": 2, "n_layers": 6, "kernel_size": 3,
              "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
              "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
              "upsample_rates": [8, 8, 2, 2], "upsample_initial_channel": 512,
              "upsample_kernel_sizes": [16, 16, 4, 4], "gin_channels": 256},
}


def make_full(out_dir):
    import os
    from openvoice_cli.api import OpenVoiceBaseClass

    os.makedirs(out_dir, exist_ok=True)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, "w") as fh:
        json.dump(FULL_CONFIG, fh, indent=2)
    torch.manual_seed(0)
    base = OpenVoiceBaseClass(cfg_path, device="cpu")
    torch.save({"model": base.model.state_dict()}, os.path.join(out_dir, "checkpoint.pth"))


def load(dir_):
    import os
    from openvoice_cli.api import OpenVoiceBaseClass

    base = OpenVoiceBaseClass(os.path.join(dir_, "config.json"), device="cpu")
    sd = torch.load(os.path.join(dir_, "checkpoint.pth"), map_location="cpu")["model"]
    base.model.load_state_dict(sd, strict=False)
    base.model.float().eval()
    return base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-full")
    ap.add_argument("--converter", action="append", default=[])
    ap.add_argument("--clips", nargs="*", default=[])
    ap.add_argument("--reference")
    ap.add_argument("--counts", nargs="*", type=int, default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.make_full:
        make_full(args.make_full)
        with open(args.json, "w") as fh:
            json.dump({"made": args.make_full}, fh)
        return

    from openvoice_cli.mel_processing import spectrogram_torch

    clips = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in args.clips]
    ref = torch.from_numpy(sf.read(args.reference, dtype="float32")[0])
    cases = {}
    for spec in args.converter:
        name, dir_ = spec.split("=", 1)
        conv = load(dir_)
        h = conv.hps.data

        def spectrogram(y):
            return spectrogram_torch(y[None], h.filter_length, h.sampling_rate, h.hop_length,
                                     h.win_length, center=False)

        with torch.no_grad():
            tgt_se = conv.model.ref_enc(spectrogram(ref).transpose(1, 2)).unsqueeze(-1)
            src_se = conv.model.ref_enc(spectrogram(clips[0]).transpose(1, 2)).unsqueeze(-1)

            def run(n):
                for y in clips[:n]:
                    spec_ = spectrogram(y)
                    lengths = torch.LongTensor([spec_.size(-1)])
                    conv.model.voice_conversion(spec_, lengths, sid_src=src_se, sid_tgt=tgt_se, tau=0.3)

            for n in args.counts:
                # Large passes take seconds each: one timed pass after the warm-up is enough.
                min_iters = 3 if n == 1 else 1
                cpu = []

                def timed(n=n):
                    c = time.process_time()
                    run(n)
                    cpu.append(time.process_time() - c)

                secs = median_time(timed, args.min_time, min_iters)[0]
                cases[f"{name} x{n}"] = [{
                    "implementation": "PyTorch openvoice-cli",
                    "seconds": secs,
                    # Process CPU seconds per pass (the warm-up call left out).
                    "cpu_seconds": statistics.median(cpu[1:]),
                    "threads": args.threads,
                }]
    meta = {"torch": torch.__version__, "openvoice-cli": "0.0.5"}
    with open(args.json, "w") as fh:
        json.dump({"cases": cases, "versions": meta}, fh)


if __name__ == "__main__":
    main()
