"""Copies every .wav under SRC to SRC-relative .flac files under DST (16-bit FLAC, same rate),
for carrying a corpus to the GPU machine (FLAC is about half the size of 16-bit WAV).

Usage: python tools/gpu/to_flac.py SRC DST   (fixture venv: needs soundfile)
"""

import pathlib
import sys

import soundfile as sf


def main():
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    n = 0
    for w in sorted(src.rglob("*.wav")):
        x, sr = sf.read(str(w), dtype="float32")
        out = dst / w.relative_to(src).with_suffix(".flac")
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), x, sr, subtype="PCM_16", format="FLAC")
        n += 1
    if n == 0:
        raise SystemExit(f"{src}: no .wav files")
    print(f"{n} files -> {dst}")


if __name__ == "__main__":
    main()
