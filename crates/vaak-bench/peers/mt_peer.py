"""Python peer for `vaak bench mt`: transformers' `M2M100ForConditionalGeneration.generate()` on
the same weights and the same source ids as vaak, in the same run.

Two modes (run by `vaak bench mt`, embedded in the binary):
    python mt_peer.py --make-mid DIR --json out.json
        writes a seeded random mid-size M2M-100 (config.json + model.safetensors) to DIR.
    python mt_peer.py --model DIR --cases cases.json --threads N --json out.json
        cases.json: {"cases": [{"name", "sources": [[ids]], "max_length", "forced_bos"}]};
        greedy generation with EOS banned until max_length (fixed output length); writes
        {"cases": {name: {"seconds", "ids"}}, "versions": {...}}.
"""

import argparse
import json

from bench_common import median_time


def make_mid(path):
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(0)
    cfg = M2M100Config(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
                       decoder_ffn_dim=1024, max_position_embeddings=128, dropout=0.0,
                       attention_dropout=0.0)
    M2M100ForConditionalGeneration(cfg).eval().save_pretrained(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-mid")
    ap.add_argument("--model")
    ap.add_argument("--cases")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    import torch
    import transformers

    if args.make_mid:
        make_mid(args.make_mid)
        with open(args.json, "w") as f:
            json.dump({"ok": True}, f)
        return

    torch.set_num_threads(args.threads)
    from transformers import M2M100ForConditionalGeneration

    model = M2M100ForConditionalGeneration.from_pretrained(args.model).eval()
    cfg = model.config
    with open(args.cases) as f:
        cases = json.load(f)["cases"]
    out = {}
    for c in cases:
        srcs = c["sources"]
        s = max(len(r) for r in srcs)
        ids = torch.full((len(srcs), s), cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(srcs), s), dtype=torch.long)
        for i, r in enumerate(srcs):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1

        def run():
            with torch.no_grad():
                return model.generate(input_ids=ids, attention_mask=mask, num_beams=1,
                                      do_sample=False, max_length=c["max_length"],
                                      min_length=c["max_length"],
                                      forced_bos_token_id=c["forced_bos"])

        seconds, res = median_time(run, args.min_time, max_iters=100)
        out[c["name"]] = {"seconds": seconds, "ids": res.tolist()}
    with open(args.json, "w") as f:
        json.dump({"cases": out, "versions": {"torch": torch.__version__,
                                             "transformers": transformers.__version__}}, f)


if __name__ == "__main__":
    main()
