"""Peer of `vaak bench vad`: the Python silero-vad reference (pip silero-vad==6.2.3, MIT).

Reads a 16 kHz mono PCM16 WAV, runs silero-vad's model chunk by chunk (512 samples = 32 ms, the
size the model takes at 16 kHz, state carried across chunks as in streaming use) and writes
`{"chunk_samples": 512, "probs": [...], "seconds": ..., "versions": {...}}` to --json.
"""

import argparse
import json
import time
import wave

import numpy as np
import torch
from silero_vad import load_silero_vad

CHUNK = 512
RATE = 16000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wav", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with wave.open(args.wav, "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{args.wav}: need 16 kHz mono PCM16")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    model = load_silero_vad()
    model.reset_states()
    probs = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(audio) - CHUNK + 1, CHUNK):
            probs.append(float(model(audio[i : i + CHUNK], RATE).item()))
    seconds = time.perf_counter() - start
    from importlib.metadata import version

    out = {
        "chunk_samples": CHUNK,
        "probs": probs,
        "seconds": seconds,
        "versions": {"silero-vad": version("silero-vad"), "torch": torch.__version__},
    }
    with open(args.json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
