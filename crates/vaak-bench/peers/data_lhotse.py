"""lhotse's side of `vaak bench data`: the same LibriSpeech-layout corpus through
prepare_librispeech (manifest), a decode pass over every recording (verify), and resampling to
16 kHz + FLAC export (prepare), each stage timed once, with `--jobs` worker processes.
"""

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor


def _decode(d):
    from lhotse import Recording

    return Recording.from_dict(d).load_audio().shape[-1]


def _prepare(job):
    d, out_dir = job
    import soundfile as sf
    from lhotse import Recording

    rec = Recording.from_dict(d).resample(16000)
    audio = rec.load_audio()
    path = os.path.join(out_dir, f"{rec.id}.flac")
    sf.write(path, audio[0], 16000, format="FLAC", subtype="PCM_16")
    return audio.shape[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    import lhotse
    import soundfile
    from lhotse.recipes import prepare_librispeech

    stages = {}
    t = time.perf_counter()
    parts = prepare_librispeech(a.corpus, dataset_parts="auto", num_jobs=a.jobs)
    stages["manifest"] = time.perf_counter() - t
    recs = [r for p in parts.values() for r in p["recordings"]]
    hours = sum(r.duration for r in recs) / 3600.0
    dicts = [r.to_dict() for r in recs]

    t = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        frames = sum(ex.map(_decode, dicts, chunksize=16))
    stages["verify"] = time.perf_counter() - t

    os.makedirs(a.out, exist_ok=True)
    t = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        out_frames = sum(ex.map(_prepare, [(d, a.out) for d in dicts], chunksize=16))
    stages["prepare"] = time.perf_counter() - t

    with open(a.json, "w") as f:
        json.dump(
            {
                "recordings": len(recs),
                "hours": hours,
                "decoded_frames": frames,
                "prepared_frames": out_frames,
                "stages": stages,
                "versions": {"lhotse": lhotse.__version__, "soundfile": soundfile.__version__},
            },
            f,
        )


if __name__ == "__main__":
    main()
